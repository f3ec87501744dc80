"""The annotated gateway configuration: every key of gateway/config.py with its default and a comment.

The defaults are not written here: they are read from the validator itself (:func:`config.parse` of a
minimal file), so this file only adds the words. ``lifeline gateway init`` writes :func:`render` as the
starter config, the Debian package ships it as /etc/lifeline/gateway.toml, and docs/operations.md holds
:func:`reference` between ``<!-- gateway-config:begin/end -->`` (``python -m
lifeline.gateway.config_template`` refreshes it). gateway/tests/test_config_template.py fails when a key
of the config dataclasses is missing here, when the output does not validate, or when the doc drifts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeline.gateway.config import PRIORITY_KEYS, GatewayConfig, IngressSpec, UplinkEndpoint, parse

EXAMPLE_ID = "gw-0001"
DEFAULT_TOKEN_FILE = Path("/etc/lifeline/status.token")  # where init and the package put it
DEFAULT_KEK_FILE = Path("/etc/lifeline/registry.kek")  # where init puts the registry key-encryption key
COLUMN = 36  # where the comments start
DOC_BEGIN, DOC_END = "<!-- gateway-config:begin -->\n", "<!-- gateway-config:end -->"


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    comment: str
    example: Any = None  # shown (commented out) for optional keys without a default
    relative: bool = False  # a path shown relative to gateway.state_dir, as the default is written
    optional: bool = False  # in an array table example: stays commented out


@dataclass(frozen=True, slots=True)
class Section:
    name: str  # dotted TOML table name
    comment: str
    keys: tuple[Key, ...]
    array: bool = False  # [[name]]: none by default; shown as an example


SECTIONS: tuple[Section, ...] = (
    Section("gateway", "who this gateway is and where it keeps its state", (
        Key("id", "REQUIRED: [A-Za-z0-9._-]{1,64}; MQTT topic level and batch kid", example=EXAMPLE_ID),
        Key("key_file", "batch signing key (PEM, 0600, owned by the daemon user): Ed25519 or SM2, per suite"),
        Key("suite", "batch signature suite: intl (Ed25519) | sm (SM2 with SM3); the key must match"),
        Key("node_suites", "node frame suites accepted (each device has one, from the registry): "
            "intl (HMAC-SHA256/AES) | sm (HMAC-SM3/SM4); others are rejected suite_not_allowed"),
        Key("certificate_file", "gateway certificate chain from the city CA (PEM, leaf first), sent in each "
            "batch (x5chain); `lifeline gateway csr` makes the request", example="/etc/lifeline/gateway.crt"),
        Key("state_dir", "created 0700; relative database paths are under it"),
        Key("registry_db", "device registry (0600)", relative=True),
        Key("buffer_db", "durable buffer, counters, outbox, command queue (0600)", relative=True),
        Key("trusted_technicians", "verify provisioning record signatures (JSON name -> public key hex)",
            example="/etc/lifeline/technicians.json"),
        Key("log_level", "debug | info | warning | error"),
    )),
    Section("buffer", "durable buffer policy", (
        Key("quota_mb", "pages in use of buffer_db; over it: drop periodic, then events, then alarms"),
        Key("group_commit_max", "records per transaction at most"),
        Key("maintenance_s", "TTL sweep, command expiry, registry reload every this many seconds"),
    )),
    Section("buffer.ttl_s", "pending records older than this are dropped (counted, reported)", (
        Key("alarm", "seconds"),
        Key("event", "seconds"),
        Key("periodic", "seconds"),
    )),
    Section("dedupe", "several radios hearing one transmission", (
        Key("window_ms", "same (device, fcnt) within this of the first reception = another reception"),
        Key("collect_ms", "non-alarm readings wait this long for their other receptions (<= window_ms)"),
    )),
    Section("forwarder", "signed batches to the platform", (
        Key("batch_max", "records per live batch"),
        Key("batch_ms", "longest wait to fill a live batch (after collect_ms)"),
        Key("backlog_batch_max", "records per backlog batch"),
        Key("backfill_after_s", "older than this when batched: backlog lane, flagged backfilled"),
        Key("max_inflight", "batches awaiting PUBACK at once (one kept for the live lane)"),
        Key("retry_initial_ms", "backoff after a failed publish, doubling ..."),
        Key("retry_max_ms", "... up to this"),
    )),
    Section("uplink", "MQTT connection to the city platform", (
        Key("keepalive_s", "MQTT keepalive"),
        Key("connect_timeout_s", "give up a connection attempt after this"),
        Key("publish_timeout_s", "no PUBACK within this = failed, the batch stays in the outbox"),
        Key("backoff_initial_s", "first reconnect wait after a lost connection (jittered), doubling ..."),
        Key("backoff_max_s", "... up to this"),
        Key("failback_s", "on a lower-priority endpoint, probe the preferred ones this often"),
        Key("protocol", "MQTT version: 5, or 3.1.1 for brokers without MQTT 5 (NATS MQTT listener)"),
    )),
    Section("uplink.endpoints", "one table per broker; none: the gateway only buffers (commissioning)", (
        Key("name", "[A-Za-z0-9_-]{1,32}", example="primary"),
        Key("host", "REQUIRED: broker host name", example="mqtt.city.example"),
        Key("port", "8883 is MQTT over TLS"),
        Key("tls_ca", "CA bundle; TLS when tls_ca or tls_cert is set", example="/etc/lifeline/ca.pem"),
        Key("tls_cert", "client certificate (CN = gateway id); goes with tls_key",
            example="/etc/lifeline/gw.pem"),
        Key("tls_key", "client certificate key (0600)", example="/etc/lifeline/gw-tls.key"),
        Key("client_id", "default lifeline-<id>-<name>", example=f"lifeline-{EXAMPLE_ID}-primary", optional=True),
        Key("priority", "lower is preferred; the others are failover targets"),
        Key("username", "optional", example="gateway", optional=True),
        Key("password_file", "optional; the password, one line (0600)", example="/etc/lifeline/mqtt.pass",
            optional=True),
    ), array=True),
    Section("downlinks", "ACKs and platform commands to nodes", (
        Key("window_ms", "deadline for an answer after the uplink that opened the window"),
        Key("command_ttl_s", "a queued platform command expires after this (\"expired\" result)"),
        Key("max_per_device", "queued commands per device (\"rejected: queue_full\" beyond)"),
    )),
    Section("metrics", "Prometheus text at http://LISTEN:PORT/metrics (no authentication)", (
        Key("listen", "keep it on loopback (or a management interface)"),
        Key("port", "0 = any free port, written to <state_dir>/metrics.addr"),
    )),
    Section("status_page", "read-only HTML status for a technician's phone, behind a bearer token", (
        Key("listen", "127.0.0.1 = this machine only; a LAN address to reach it from a phone"),
        Key("port", "0 = any free port, written to <state_dir>/status.addr"),
        Key("token_file", "the token (one line, 0600, owned by the daemon user); unset = no status page",
            example="/etc/lifeline/status.token"),
    )),
    Section("rules", "local rules engine: alarms and actions while the platform is unreachable (docs/rules.md)", (
        Key("files", "rule files; relative paths are next to this config file"),
        Key("state_db", "alarm life cycle, mode, active firings (0600)", relative=True),
    )),
    Section("keys", "where key material lives (docs/keys.md)", (
        Key("kek_file", "registry key-encryption key (0600, `gateway kekgen`); unset: plaintext root keys",
            example="/etc/lifeline/registry.kek"),
    )),
    Section("keys.pkcs11", "a PKCS#11 token (HSM, TPM, cipher machine) holding keys that never leave it", (
        Key("module", "the vendor's PKCS#11 library", example="/usr/lib/softhsm/libsofthsm2.so"),
        Key("token_label", "token label", example="lifeline"),
        Key("pin_file", "user PIN, one line (0600, never logged)", example="/etc/lifeline/token.pin"),
        Key("signing_key_label", "Ed25519 batch signing key in the token (instead of gateway.key_file)",
            example="gateway-signing"),
        # no example: it excludes keys.kek_file, and every example line must validate uncommented
        Key("kek_label", "AES-256 registry key-encryption key in the token (instead of keys.kek_file)"),
    )),
    Section("pipeline", "internal queues (rarely changed)", (
        Key("queue_batches", "bounded queues between stages, in batches"),
        Key("batch_max", "frames per ingest batch"),
        Key("key_cache", "derived device keys kept in memory (LRU)"),
    )),
    Section("ingress", "one table per radio adapter", (
        Key("type", "REQUIRED: lora-serial | lora-udp | ble | nbiot-mqtt", example="lora-udp"),
        Key("name", "REQUIRED: [A-Za-z0-9_-]{1,32}, unique; appears in receptions and metrics", example="lora0"),
    ), array=True),
)
# adapter options for the [[ingress]] example: docs/radios.md (LoRa), docs/ble.md, protocol.md 7.3 (NB-IoT)
INGRESS_OPTIONS_EXAMPLE: Mapping[str, tuple[Any, str]] = {"port": (1700, "lora-udp: UDP port for the packet forwarder")}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        out = v.replace("\\", "\\\\").replace('"', '\\"')
        out = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", out)
        return f'"{out}"'
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _line(text: str, comment: str, commented: bool = False) -> str:
    text = ("# " if commented else "") + text
    return f"{text.ljust(COLUMN - 1)} # {comment}" if comment else text


def _example_config() -> GatewayConfig:
    """Defaults of every key, read from the validator (array tables with their required keys only)."""
    return parse(f'[gateway]\nid = "{EXAMPLE_ID}"\n'
                 '[[uplink.endpoints]]\nname = "primary"\nhost = "mqtt.city.example"\n'
                 '[[ingress]]\ntype = "lora-udp"\nname = "lora0"\n', "<defaults>")


def defaults() -> dict[str, dict[str, Any]]:
    """section name -> key -> default value as the validator produces it (None: no default)."""
    cfg = _example_config()
    ep: UplinkEndpoint = cfg.uplink.endpoints[0]
    ing: IngressSpec = cfg.ingress[0]
    objects: dict[str, Any] = {
        "gateway": cfg.gateway, "buffer": cfg.buffer, "dedupe": cfg.dedupe, "forwarder": cfg.forwarder,
        "uplink": cfg.uplink, "uplink.endpoints": ep, "downlinks": cfg.downlinks, "metrics": cfg.metrics,
        "status_page": cfg.status_page, "rules": cfg.rules, "pipeline": cfg.pipeline, "ingress": ing,
        "keys": cfg.keys, "keys.pkcs11": cfg.keys.pkcs11,
    }
    out: dict[str, dict[str, Any]] = {}
    for sec in SECTIONS:
        if sec.name == "buffer.ttl_s":
            out[sec.name] = dict(zip(PRIORITY_KEYS, cfg.buffer.ttl_s, strict=True))
            continue
        obj = objects[sec.name]
        out[sec.name] = {k.name: getattr(obj, k.name, None) for k in sec.keys}
        for k in sec.keys:  # as the default is written: relative to state_dir
            if k.relative:
                out[sec.name][k.name] = out[sec.name][k.name].relative_to(cfg.gateway.state_dir)
    return out


def _shown(key: Key, value: Any, state_dir: Path) -> Any:
    if key.relative and isinstance(value, Path) and value.is_relative_to(state_dir):
        return str(value.relative_to(state_dir))
    return value


def render(values: Mapping[str, Mapping[str, Any]] | None = None, *, header: Sequence[str] = (),
           examples: bool = False) -> str:
    """The annotated TOML. ``values`` overrides defaults per section (``{"gateway": {"id": ...}}``); a key
    whose value is None is written commented out with its example. Array tables ([[uplink.endpoints]],
    [[ingress]]) are commented-out examples unless ``examples`` (then they are written as real tables)."""
    given = {k: dict(v) for k, v in (values or {}).items()}
    base = defaults()
    base["gateway"]["id"] = None  # required: only what the caller gives
    state_dir = Path(given.get("gateway", {}).get("state_dir") or base["gateway"]["state_dir"])
    default_state_dir = base["gateway"]["state_dir"]
    lines = [f"# {h}" if h else "#" for h in header]
    for sec in SECTIONS:
        section_values = {**base[sec.name], **given.get(sec.name, {})}
        live = examples or not sec.array
        if lines:
            lines.append("")
        head = f"[[{sec.name}]]" if sec.array else f"[{sec.name}]"
        lines.append(_line(head, sec.comment, commented=not live))
        for key in sec.keys:
            value = section_values.get(key.name)
            default = base[sec.name].get(key.name)
            if sec.array and key.example is not None and key.name not in given.get(sec.name, {}):
                value = key.example
            commented = not live or value is None or (sec.array and key.optional)
            if value is None:
                value = key.example
                if value is None:
                    continue
            comment = key.comment
            shown_default = _shown(key, default, default_state_dir)
            if default is not None and not sec.array and _shown(key, value, state_dir) != shown_default:
                comment += f" (default {_toml_value(shown_default)})"
            shown = _shown(key, value, state_dir)
            lines.append(_line(f"{key.name} = {_toml_value(shown)}", comment, commented=commented))
        if sec.name == "ingress":
            lines.append(_line("[ingress.options]", "adapter options: docs/radios.md, docs/ble.md, protocol.md 7.3",
                               commented=not live))
            for k, (v, comment) in INGRESS_OPTIONS_EXAMPLE.items():
                lines.append(_line(f"{k} = {_toml_value(v)}", comment, commented=not live))
    return "\n".join(lines) + "\n"


HEADER = (
    "Lifeline gateway configuration. Every key is listed with its default; unknown keys are errors.",
    "Check it with: lifeline gateway check-config FILE    Reference: docs/operations.md (Configuration)",
    "Generated from the schema in gateway/config.py (lifeline.gateway.config_template).",
)


def starter(gateway_id: str | None, *, key_file: Path | None = None, state_dir: Path | None = None,
            token_file: Path | None = None, kek_file: Path | None = None) -> str:
    """What ``lifeline gateway init`` writes (and the package ships, with no id: it must be set)."""
    gw: dict[str, Any] = {"id": gateway_id}
    if key_file is not None:
        gw["key_file"] = key_file
    if state_dir is not None:
        gw["state_dir"] = state_dir
    values: dict[str, dict[str, Any]] = {"gateway": gw}
    if token_file is not None:
        values["status_page"] = {"token_file": token_file}
    if kek_file is not None:
        values["keys"] = {"kek_file": kek_file}
    return render(values, header=HEADER)


def reference() -> str:
    """The docs/operations.md block: every key, array tables filled with examples."""
    return render({"gateway": {"id": EXAMPLE_ID}, "status_page": {"token_file": DEFAULT_TOKEN_FILE},
                   "keys": {"kek_file": DEFAULT_KEK_FILE}}, examples=True)


def doc_block(text: str) -> str | None:
    _, found, rest = text.partition(DOC_BEGIN)
    if not found:
        return None
    body, found, _ = rest.partition(DOC_END)
    return body if found else None


def update_doc(text: str) -> str:
    if doc_block(text) is None:
        raise ValueError(f"no {DOC_BEGIN.strip()} ... {DOC_END} block")
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    return head + DOC_BEGIN + "```toml\n" + reference() + "```\n" + DOC_END + tail


def main() -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
    doc.write_text(update_doc(doc.read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
