"""The gateway's one TOML file, validated completely at start into frozen dataclasses.

Every problem is a :class:`ConfigError` naming the file, the dotted key and the reason (and the line for
TOML syntax errors). Unknown keys are errors: a misspelt option must not silently fall back to a default.
The reference with every key and default is docs/operations.md ("Gateway configuration").
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

DEFAULT_PATH = Path("/etc/lifeline/gateway.toml")
PRIORITY_KEYS = ("alarm", "event", "periodic")  # index = schema.P_ALARM / P_EVENT / P_PERIODIC
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_REQUIRED: Any = object()


class ConfigError(Exception):
    """An invalid configuration. ``str()`` reads ``FILE: KEY: REASON`` (``FILE:LINE: ...`` for syntax)."""

    def __init__(self, file: str, key: str, reason: str, line: int | None = None) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class GatewaySection:
    id: str
    key_file: Path
    state_dir: Path
    registry_db: Path
    buffer_db: Path
    trusted_technicians: Path | None
    log_level: str
    suite: str = "intl"  # batch signature suite: "intl" (Ed25519) or "sm" (SM2-SM3)
    # node frame suites this gateway accepts (docs/protocol.md section 2); each device still has exactly one,
    # from the registry, and a frame in another suite is wrong_suite
    node_suites: tuple[str, ...] = ("intl", "sm")
    certificate_file: Path | None = None  # PEM chain from the city CA: leaf first; sent as x5chain


@dataclass(frozen=True, slots=True)
class BufferConfig:
    quota_mb: int
    ttl_s: tuple[int, int, int]  # per priority: alarm, event, periodic
    group_commit_max: int  # readings per transaction at most
    maintenance_s: int  # TTL / quota sweep interval


@dataclass(frozen=True, slots=True)
class DedupeConfig:
    window_ms: int  # a (device, fcnt) seen again within this is a duplicate reception, not a replay
    collect_ms: int  # a non-alarm reading is held back this long so its other receptions are attached


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    batch_max: int  # records per live batch
    batch_ms: int  # longest wait to fill a live batch
    backlog_batch_max: int  # records per backlog batch
    backfill_after_s: int  # older than this when batched -> backlog lane, flagged backfilled
    retry_initial_ms: int
    retry_max_ms: int
    max_inflight: int  # batches awaiting PUBACK at once (one slot is kept for the live lane)


@dataclass(frozen=True, slots=True)
class UplinkEndpoint:
    name: str
    host: str
    port: int
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    client_id: str
    priority: int  # lower is preferred
    username: str | None
    password_file: Path | None


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    endpoints: tuple[UplinkEndpoint, ...]
    keepalive_s: int
    connect_timeout_s: int
    publish_timeout_s: int
    backoff_initial_s: int = 1  # first reconnect wait after a lost connection (jittered), doubling ...
    backoff_max_s: int = 30  # ... up to this
    failback_s: int = 60  # while on a lower-priority endpoint, probe the preferred ones this often
    protocol: str = "5"  # MQTT version spoken to every endpoint: "5" or "3.1.1" (NATS's MQTT listener)


@dataclass(frozen=True, slots=True)
class DownlinkConfig:
    window_ms: int  # deadline for an answer after the uplink that opened the window
    command_ttl_s: int  # a queued platform command expires after this
    max_per_device: int


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str
    port: int  # 0 = pick a free port (written to <state_dir>/metrics.addr)


@dataclass(frozen=True, slots=True)
class StatusPageConfig:
    listen: str
    port: int  # 0 = pick a free port (written to <state_dir>/status.addr)
    token_file: Path | None  # bearer token (file 0600); None = no status page


@dataclass(frozen=True, slots=True)
class RulesConfig:
    files: tuple[Path, ...]  # rule files (docs/rules.md); relative paths are next to the config file
    state_db: Path  # alarm life cycle, mode, active firings (0600)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    queue_batches: int  # bounded queues between stages, in batches
    batch_max: int  # frames per internal batch
    key_cache: int  # derived device keys kept in memory (LRU)


@dataclass(frozen=True, slots=True)
class Pkcs11Config:
    """A PKCS#11 token (HSM, TPM, cipher machine; SoftHSM2 in tests) holding gateway keys (docs/keys.md)."""

    module: Path  # the vendor's PKCS#11 library (.so)
    token_label: str
    pin_file: Path  # the user PIN, one line (0600); never logged
    signing_key_label: str | None  # batch signing key in the token (replaces gateway.key_file)
    kek_label: str | None  # registry key-encryption key: an AES-256 key in the token (replaces keys.kek_file)


@dataclass(frozen=True, slots=True)
class KeysConfig:
    kek_file: Path | None  # registry key-encryption key file (0600); None and no token KEK = plaintext registry
    pkcs11: Pkcs11Config | None = None


@dataclass(frozen=True, slots=True)
class IngressSpec:
    type: str
    name: str
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: str  # file the config came from
    gateway: GatewaySection
    buffer: BufferConfig
    dedupe: DedupeConfig
    forwarder: ForwarderConfig
    uplink: UplinkConfig
    downlinks: DownlinkConfig
    metrics: MetricsConfig
    pipeline: PipelineConfig
    ingress: tuple[IngressSpec, ...]
    status_page: StatusPageConfig = StatusPageConfig("127.0.0.1", 9110, None)
    rules: RulesConfig = RulesConfig((), Path("/var/lib/lifeline/rules.db"))
    keys: KeysConfig = KeysConfig(None)


class _Table:
    """Typed, path-aware reads from one TOML table; ``done()`` rejects whatever was not read."""

    def __init__(self, file: str, path: str, data: Mapping[str, Any]) -> None:
        self.file = file
        self.path = path
        self.data = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, reason: str) -> NoReturn:
        raise ConfigError(self.file, self.key(name), reason)

    def _get(self, name: str, default: Any) -> Any:
        self.seen.add(name)
        if name in self.data:
            return self.data[name]
        if default is _REQUIRED:
            self.fail(name, "required key missing")
        return default

    def text(self, name: str, default: Any = _REQUIRED, pattern: re.Pattern[str] | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
        v = self._get(name, default)
        if v is default and default is not _REQUIRED:
            return v
        if not isinstance(v, str):
            self.fail(name, f"expected a string, got {type(v).__name__}")
        if pattern is not None and not pattern.match(v):
            self.fail(name, f"{v!r} does not match {pattern.pattern}")
        if choices is not None and v not in choices:
            self.fail(name, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def integer(self, name: str, default: Any = _REQUIRED, lo: int | None = None, hi: int | None = None) -> int:
        v = self._get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(name, f"expected an integer, got {type(v).__name__}")
        if lo is not None and v < lo:
            self.fail(name, f"{v} is below the minimum {lo}")
        if hi is not None and v > hi:
            self.fail(name, f"{v} is above the maximum {hi}")
        return v

    def pathname(self, name: str, default: Any = _REQUIRED, base: Path | None = None) -> Any:
        v = self.text(name, default)
        if v is None:
            return None
        if v == "":
            self.fail(name, "empty path")
        p = Path(v)
        if not p.is_absolute() and base is not None:
            p = base / p
        return p

    def table(self, name: str) -> _Table:
        v = self._get(name, {})
        if not isinstance(v, dict):
            self.fail(name, f"expected a table, got {type(v).__name__}")
        return _Table(self.file, self.key(name), v)

    def tables(self, name: str) -> list[_Table]:
        v = self._get(name, [])
        if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
            self.fail(name, "expected an array of tables ([[...]])")
        return [_Table(self.file, f"{self.key(name)}[{i}]", t) for i, t in enumerate(v)]

    def choice_list(self, name: str, default: tuple[str, ...], choices: tuple[str, ...]) -> tuple[str, ...]:
        """A non-empty array of distinct strings, each one of ``choices``."""
        v = self._get(name, default)
        if v is default:
            return tuple(default)
        if not isinstance(v, list) or not v:
            self.fail(name, f"expected a non-empty array of strings from {', '.join(choices)}")
        for x in v:
            if not isinstance(x, str) or x not in choices:
                self.fail(name, f"{x!r} is not one of {', '.join(choices)}")
        if len(set(v)) != len(v):
            self.fail(name, "lists a value twice")
        return tuple(str(x) for x in v)

    def raw_table(self, name: str) -> Mapping[str, Any]:
        v = self._get(name, {})
        if not isinstance(v, dict):
            self.fail(name, f"expected a table, got {type(v).__name__}")
        frozen: Mapping[str, Any] = _freeze(v)
        return frozen

    def done(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.fail(name, "unknown key")


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _known_adapter_types() -> tuple[str, ...]:
    from lifeline.gateway.ingress.registry import ADAPTERS

    return tuple(sorted(ADAPTERS))


def parse(text: str, file: str = "<string>") -> GatewayConfig:
    """Validate TOML text. Raises :class:`ConfigError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        line = int(found.group(1)) if found else None
        raise ConfigError(file, "", f"TOML syntax error: {e}", line=line) from None
    top = _Table(file, "", data)

    g = top.table("gateway")
    state_dir = g.pathname("state_dir", "/var/lib/lifeline")
    gw = GatewaySection(
        id=g.text("id", pattern=_GATEWAY_ID),
        key_file=g.pathname("key_file", "/etc/lifeline/gateway.key"),
        state_dir=state_dir,
        registry_db=g.pathname("registry_db", "registry.db", base=state_dir),
        buffer_db=g.pathname("buffer_db", "buffer.db", base=state_dir),
        trusted_technicians=g.pathname("trusted_technicians", None),
        log_level=g.text("log_level", "info", choices=("debug", "info", "warning", "error")),
        suite=g.text("suite", "intl", choices=("intl", "sm")),
        node_suites=g.choice_list("node_suites", ("intl", "sm"), choices=("intl", "sm")),
        certificate_file=g.pathname("certificate_file", None),
    )
    g.done()

    b = top.table("buffer")
    ttl = b.table("ttl_s")
    day = 86400
    ttl_s = (ttl.integer("alarm", 30 * day, lo=60), ttl.integer("event", 14 * day, lo=60),
             ttl.integer("periodic", 7 * day, lo=60))
    ttl.done()
    buf = BufferConfig(
        quota_mb=b.integer("quota_mb", 256, lo=1, hi=1 << 20),
        ttl_s=ttl_s,
        group_commit_max=b.integer("group_commit_max", 8192, lo=1, hi=1 << 20),
        maintenance_s=b.integer("maintenance_s", 5, lo=1, hi=3600),
    )
    b.done()

    d = top.table("dedupe")
    dd = DedupeConfig(window_ms=d.integer("window_ms", 2000, lo=0, hi=600_000),
                      collect_ms=d.integer("collect_ms", 200, lo=0, hi=10_000))
    d.done()
    if dd.collect_ms > dd.window_ms:
        raise ConfigError(file, "dedupe.collect_ms", "must not exceed dedupe.window_ms")

    f = top.table("forwarder")
    fw = ForwarderConfig(
        batch_max=f.integer("batch_max", 512, lo=1, hi=100_000),
        batch_ms=f.integer("batch_ms", 20, lo=0, hi=60_000),
        backlog_batch_max=f.integer("backlog_batch_max", 4096, lo=1, hi=100_000),
        backfill_after_s=f.integer("backfill_after_s", 30, lo=1, hi=30 * day),
        retry_initial_ms=f.integer("retry_initial_ms", 500, lo=1, hi=600_000),
        retry_max_ms=f.integer("retry_max_ms", 30_000, lo=1, hi=3_600_000),
        max_inflight=f.integer("max_inflight", 4, lo=1, hi=256),
    )
    f.done()

    u = top.table("uplink")
    endpoints: list[UplinkEndpoint] = []
    for t in u.tables("endpoints"):
        name = t.text("name", pattern=_NAME)
        ep = UplinkEndpoint(
            name=name,
            host=t.text("host"),
            port=t.integer("port", 8883, lo=1, hi=65535),
            tls_ca=t.pathname("tls_ca", None),
            tls_cert=t.pathname("tls_cert", None),
            tls_key=t.pathname("tls_key", None),
            client_id=t.text("client_id", f"lifeline-{gw.id}-{name}"),
            priority=t.integer("priority", 0, lo=0, hi=100),
            username=t.text("username", None),
            password_file=t.pathname("password_file", None),
        )
        if (ep.tls_cert is None) != (ep.tls_key is None):
            t.fail("tls_key" if ep.tls_key is None else "tls_cert", "tls_cert and tls_key go together")
        t.done()
        if any(e.name == name for e in endpoints):
            t.fail("name", f"duplicate endpoint name {name!r}")
        endpoints.append(ep)
    up = UplinkConfig(
        endpoints=tuple(sorted(endpoints, key=lambda e: e.priority)),
        keepalive_s=u.integer("keepalive_s", 30, lo=5, hi=3600),
        connect_timeout_s=u.integer("connect_timeout_s", 10, lo=1, hi=600),
        publish_timeout_s=u.integer("publish_timeout_s", 10, lo=1, hi=600),
        backoff_initial_s=u.integer("backoff_initial_s", 1, lo=1, hi=600),
        backoff_max_s=u.integer("backoff_max_s", 30, lo=1, hi=3600),
        failback_s=u.integer("failback_s", 60, lo=5, hi=86400),
        protocol=u.text("protocol", "5", choices=("5", "3.1.1")),
    )
    if up.backoff_max_s < up.backoff_initial_s:
        u.fail("backoff_max_s", f"must be >= backoff_initial_s ({up.backoff_initial_s})")
    u.done()

    dl = top.table("downlinks")
    down = DownlinkConfig(
        window_ms=dl.integer("window_ms", 2000, lo=10, hi=60_000),
        command_ttl_s=dl.integer("command_ttl_s", day, lo=1, hi=90 * day),
        max_per_device=dl.integer("max_per_device", 16, lo=1, hi=1024),
    )
    dl.done()

    m = top.table("metrics")
    met = MetricsConfig(listen=m.text("listen", "127.0.0.1"), port=m.integer("port", 9108, lo=0, hi=65535))
    m.done()

    p = top.table("pipeline")
    pipe = PipelineConfig(
        queue_batches=p.integer("queue_batches", 64, lo=1, hi=100_000),
        batch_max=p.integer("batch_max", 1024, lo=1, hi=100_000),
        key_cache=p.integer("key_cache", 16384, lo=16, hi=10_000_000),
    )
    p.done()

    sp = top.table("status_page")
    status_page = StatusPageConfig(listen=sp.text("listen", "127.0.0.1"), port=sp.integer("port", 9110, lo=0, hi=65535),
                                   token_file=sp.pathname("token_file", None))
    sp.done()

    r = top.table("rules")
    files = r._get("files", [])
    if not isinstance(files, list) or not all(isinstance(x, str) and x for x in files):
        r.fail("files", "expected a list of rule file paths")
    rules = RulesConfig(files=tuple(Path(file).parent / x if not Path(x).is_absolute() else Path(x) for x in files),
                        state_db=r.pathname("state_db", "rules.db", base=state_dir))
    r.done()

    keys_cfg = _keys(top.table("keys"))

    known = _known_adapter_types()
    specs: list[IngressSpec] = []
    for t in top.tables("ingress"):
        spec = IngressSpec(type=t.text("type", choices=known), name=t.text("name", pattern=_NAME),
                           options=t.raw_table("options"))
        t.done()
        if any(s.name == spec.name for s in specs):
            t.fail("name", f"duplicate adapter name {spec.name!r}")
        specs.append(spec)

    top.done()
    return GatewayConfig(source=file, gateway=gw, buffer=buf, dedupe=dd, forwarder=fw, uplink=up,
                         downlinks=down, metrics=met, pipeline=pipe, ingress=tuple(specs),
                         status_page=status_page, rules=rules, keys=keys_cfg)


_LABEL = re.compile(r"^[\x20-\x7e]{1,64}$")


def _keys(k: _Table) -> KeysConfig:
    kek_file = k.pathname("kek_file", None)
    t = k.table("pkcs11")
    token: Pkcs11Config | None = None
    if t.data:
        token = Pkcs11Config(module=t.pathname("module"), token_label=t.text("token_label", pattern=_LABEL),
                             pin_file=t.pathname("pin_file"),
                             signing_key_label=t.text("signing_key_label", None, pattern=_LABEL),
                             kek_label=t.text("kek_label", None, pattern=_LABEL))
        if token.signing_key_label is None and token.kek_label is None:
            t.fail("signing_key_label", "the token is configured but holds neither signing_key_label nor kek_label")
        if token.kek_label is not None and kek_file is not None:
            t.fail("kek_label", "keys.kek_file and keys.pkcs11.kek_label both name a key-encryption key; keep one")
    t.done()
    k.done()
    return KeysConfig(kek_file=kek_file, pkcs11=token)


def load(path: str | Path = DEFAULT_PATH) -> GatewayConfig:
    """Read and validate a config file. Raises :class:`ConfigError` (also for an unreadable file)."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(file, "", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "", "not UTF-8 text") from None
    return parse(text, file)
