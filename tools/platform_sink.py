"""The reference city-platform sink: receives signed batches over MQTT, verifies, dedupes, stores.

- Subscribes ``$share/<group>/lifeline/v1/+/up/+`` (MQTT 5 shared subscription): several sinks on one
  broker split the batches between them; pointed at one SQLite file (WAL) they also share the dedupe.
- Every batch is verified with ``lifeline.protocols.batch.verify`` against the trusted key of the
  gateway named in the topic (Ed25519 or SM2, by the batch's protected alg), or, for a gateway without a
  pinned key, against the certificate chain it carries (x5chain), checked to the ``--ca`` trust anchor and
  ``--crl`` (``lifeline.protocols.gwcert``); the topic's gateway and lane must match the signed payload.
  Rejects are stored with their reason and counted, never raised.
- Records are stored once per (device, fcnt) (gateway events once per (gateway, event seq)); a batch
  redelivered by MQTT is recognised by (gateway, seq, digest).
- The hash chain is checked as batches arrive against their stored neighbours (broken links at once)
  and in full by :meth:`PlatformSink.chain_report` (gaps, broken links, equivocations; computed from the
  database, so it covers every sink sharing it).
- A batch is acknowledged to the broker (manual PUBACK) only after its transaction committed.
- Commands to gateways: :meth:`PlatformSink.send_command`, :meth:`PlatformSink.ack_alarm`; results on
  ``lifeline/v1/<gw>/down/result`` and presence on ``lifeline/v1/<gw>/state`` are kept in memory.

``lifeline platform-sink --broker HOST:PORT --db FILE --trust GW=PUBKEYFILE [--ca CA.pem [--crl CRL]]`` runs it
with a live count (or JSON lines with ``--json``). Tests use :class:`PlatformSink` in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lifeline.gateway.mqtt_async import TlsFiles
from lifeline.protocols import batch, gwcert, keys
from lifeline.protocols.sm2 import SM2PublicKey
from lifeline.tools.platform import trust as gateway_trust
from lifeline.tools.platform.cli import COMMANDS as PLATFORM_COMMANDS
from lifeline.tools.platform.source import Delivery, Source, SourceError
from lifeline.tools.platform.sqlite_store import chain_report, open_db
from lifeline.tools.platform.store import (
    ChainReport,
    Store,
    StoredRecord,
    StoreError,
    StoreUnavailable,
    open_store,
)
from lifeline.tools.platform.trust import TrustedKey

__all__ = ["ChainReport", "PlatformSink", "SinkError", "SinkEvent", "SinkTimeout", "StoredRecord", "chain_report",
           "load_trust", "open_db", "topic_parts"]

log = logging.getLogger(__name__)

SHARE_GROUP = "lifeline-sinks"
UP_FILTER = "lifeline/v1/+/up/+"
STATE_FILTER = "lifeline/v1/+/state"
RESULT_FILTER = "lifeline/v1/+/down/result"
LANES = {"live": batch.LANE_LIVE, "backlog": batch.LANE_BACKLOG}

# reject reasons added by the sink to batch.REASONS
R_BAD_TOPIC = "bad_topic"
R_UNTRUSTED = "untrusted_gateway"
R_TOPIC_MISMATCH = "topic_mismatch"
R_LANE_MISMATCH = "lane_mismatch"
R_STORE_REFUSED = "store_refused"  # verified, but the store refused its content (not a transient failure)

class SinkError(Exception):
    """The sink could not start (broker unreachable, bad key file) or a wait passed its deadline."""


class SinkTimeout(SinkError):
    pass


@dataclass(frozen=True, slots=True)
class SinkEvent:
    """What the sink did with one message (for live output): kind is batch / reject / broken_link /
    presence / result."""

    kind: str
    data: Mapping[str, Any]


def load_trust(pairs: Mapping[str, Path] | Sequence[tuple[str, Path, int | None, int | None]],
               ) -> dict[str, list[TrustedKey]]:
    """Gateway id -> trusted keys (Ed25519 or SM2) from files holding raw bytes (32 Ed25519, 65 SM2 04||x||y),
    hex, or a PEM; entries are ``{gw: path}`` or ``(gw, path, not_before_ms, not_after_ms)`` (several per
    gateway: a rotation's overlap)."""
    entries = [(gw, p, None, None) for gw, p in pairs.items()] if isinstance(pairs, Mapping) else list(pairs)
    out: dict[str, list[TrustedKey]] = {}
    for gw, path, not_before, not_after in entries:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise SinkError(f"trust {gw}: cannot read {path}: {e.strerror or e}") from None
        try:
            raw = len(data) == 32 or (len(data) == 65 and data[0] == 4)  # hex text never starts with 0x04
            key = keys.load_verify_key(data if raw else data.decode("ascii", "replace"))
        except (keys.KeyFileError, ValueError) as e:
            raise SinkError(f"trust {gw}: {path}: {e}") from None
        out.setdefault(gw, []).append(TrustedKey(key, not_before, not_after))
    return out


def load_ca(ca_file: Path, crl_file: Path | None = None) -> gwcert.CaTrust:
    """The trust anchor (and CRL) for gateways that carry their certificate chain. The CRL file is watched:
    a replaced one is used within 10 s (a bad one is not, and the previous stays in force)."""
    try:
        return gwcert.CaTrust.from_paths(Path(ca_file), Path(crl_file) if crl_file is not None else None)
    except OSError as e:
        raise SinkError(f"cannot read {e.filename}: {e.strerror or e}") from None
    except gwcert.CertError as e:
        raise SinkError(str(e)) from None


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def topic_parts(topic: str) -> tuple[str, str] | None:
    """(gateway id, lane name) of ``lifeline/v1/<gw>/up/<lane>``."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "lifeline" or parts[1] != "v1" or parts[3] != "up":
        return None
    return parts[2], parts[4]


class PlatformSink:
    """One sink instance: an MQTT 5 client (paho thread) and a SQLite database (possibly shared)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: Path | None = None,
        store: Store | str | None = None,
        trust: Mapping[str, keys.PublicKey | bytes | TrustedKey | Sequence[TrustedKey]],
        tls: TlsFiles | None = None,
        client_id: str | None = None,
        share_group: str | None = SHARE_GROUP,
        session_expiry_s: int = 0,
        username: str | None = None,
        password: str | None = None,
        on_event: Callable[[SinkEvent], None] | None = None,
        keepalive_s: int = 30,
        store_retry_s: float = 20.0,
        ca: gwcert.CaTrust | None = None,
        clock: Callable[[], int] | None = None,
        source: Source | None = None,
    ) -> None:
        self.host = host
        self.source = source  # None: the paho MQTT client below; else e.g. a NATS JetStream consumer
        self.ca = ca  # gateways without a pinned key are verified by their x5chain against this CA
        self._ca_resolver = ca.resolver() if ca is not None else None
        if ca is not None and clock is not None:
            ca.use_clock(lambda: clock() / 1000)  # certificate validity on the sink's clock
        self.port = port
        if (db is None) == (store is None):
            raise SinkError("give the sink one store: db=PATH (SQLite) or store=URL/Store")
        # several keys per gateway with validity windows (a key rotation's overlap, tools/platform/trust.py)
        self.trusted_keys = gateway_trust.normalise(
            {gw: [TrustedKey(t.key if isinstance(t.key, Ed25519PublicKey | SM2PublicKey)
                             else keys.load_verify_key(t.key), t.not_before_ms, t.not_after_ms)
                  for t in gateway_trust.normalise({gw: v})[gw]]
             for gw, v in trust.items()})
        self.trust: dict[str, Any] = {gw: ks[0].key for gw, ks in self.trusted_keys.items()}  # the first key
        self.clock = clock or _now_ms
        self.client_id = client_id or f"lifeline-sink-{uuid.uuid4().hex[:12]}"
        self.share_group = share_group
        self.on_event = on_event
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._own_store = not (store is not None and not isinstance(store, str))
        try:
            self.store: Store = (open_store(store) if isinstance(store, str) else store if store is not None
                                 else open_store(f"sqlite:{db}"))
        except StoreError as e:
            raise SinkError(f"store: {e}") from None
        self.counters: Counter[str] = Counter()
        self.presence: dict[str, str] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.trackers: dict[str, batch.ChainTracker] = {}
        self._subscribed = threading.Event()
        self._connect_error: str | None = None
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        self._client.manual_ack_set(True)
        self._client.max_inflight_messages_set(100)
        self._client.reconnect_delay_set(0.1, 5)  # type: ignore[arg-type]
        if tls is not None:
            self._client.tls_set_context(tls.context())
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._started = False
        self._stopping = threading.Event()
        self.store_retry_s = store_retry_s

    # ------------------------------------------------------------------------- lifecycle

    @property
    def up_subscription(self) -> str:
        return f"$share/{self.share_group}/{UP_FILTER}" if self.share_group else UP_FILTER

    def start(self, timeout_s: float = 10.0) -> PlatformSink:
        """Connect and subscribe (bounded wait). Raises SinkError. Idempotent."""
        if self._started:
            return self
        if self.source is not None:
            try:
                self.source.start(self._on_delivery, timeout_s, on_other=self._on_other)
            except SourceError as e:
                raise SinkError(str(e)) from None
            self._started = True
            return self
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._session_expiry_s:
            props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_timeout = timeout_s
        try:
            self._client.connect(self.host, self.port, keepalive=self._keepalive_s,
                                 clean_start=self._session_expiry_s == 0, properties=props)
        except (OSError, ValueError) as e:
            raise SinkError(f"cannot connect to {self.host}:{self.port}: {e}") from None
        self._client.loop_start()
        self._started = True
        if not self._subscribed.wait(timeout_s):
            why = self._connect_error or "no SUBACK"
            self.stop()
            raise SinkError(f"{self.host}:{self.port}: {why} within {timeout_s}s")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._started and self.source is not None:
            self.source.stop()
            self._started = False
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False
        if self._own_store:
            with self._lock:
                self.store.close()

    def __enter__(self) -> PlatformSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------- callbacks

    def _on_connect(self, c: mqtt.Client, u: object, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._connect_error = f"CONNACK {rc}"
            return
        self.counters["connects"] += 1
        c.subscribe([(self.up_subscription, 1), (STATE_FILTER, 1), (RESULT_FILTER, 1)])

    def _on_subscribe(self, c: mqtt.Client, u: object, mid: int, rcs: list[Any], props: Any) -> None:
        if any(rc.is_failure for rc in rcs):
            self._connect_error = "SUBACK refused: " + ", ".join(str(rc) for rc in rcs)
            return
        self._subscribed.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        try:
            if topic.endswith("/state"):
                self._on_state(topic, bytes(msg.payload))
            elif topic.endswith("/down/result"):
                self._on_result(topic, bytes(msg.payload))
            else:
                self._on_batch(topic, bytes(msg.payload))
        except StoreUnavailable as e:  # the store refused: leave the message unacknowledged (redelivered)
            log.error("sink store error on %s: %s", topic, e)
            self.counters["db_errors"] += 1
            return
        except Exception:  # never let a bug kill the network thread
            log.exception("sink failed on %s", topic)
            self.counters["errors"] += 1
        if msg.qos > 0:
            c.ack(msg.mid, msg.qos)

    def _on_delivery(self, d: Delivery) -> bool:
        """A batch from a Source: True = committed or rejected for good (acknowledge it), False = the store
        could not take it (the engine delivers it again, to this or another sink)."""
        if d.redelivered:
            self.counters["deliveries_repeated"] += 1  # the engine's count; the store says if it was new
        try:
            self._on_batch(d.topic, d.payload)
        except StoreUnavailable as e:
            log.error("sink store error on %s: %s", d.topic, e)
            self.counters["db_errors"] += 1
            return False
        except Exception:  # as on MQTT: a bug must not stall the queue on one message
            log.exception("sink failed on %s", d.topic)
            self.counters["errors"] += 1
        return True

    def _on_other(self, topic: str, payload: bytes) -> None:
        """Presence and command results from a Source (not batches; nothing to acknowledge)."""
        try:
            if topic.endswith("/state"):
                self._on_state(topic, payload)
            elif topic.endswith("/down/result"):
                self._on_result(topic, payload)
        except Exception:
            log.exception("sink failed on %s", topic)
            self.counters["errors"] += 1

    def _emit(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(SinkEvent(kind, data))
            except Exception:
                log.exception("sink event handler failed")

    def _on_state(self, topic: str, payload: bytes) -> None:
        gw = topic.split("/")[2]
        state = payload.decode("utf-8", "replace")
        with self._cond:
            self.presence[gw] = state
            self._cond.notify_all()
        self._emit("presence", gateway=gw, state=state)

    def _on_result(self, topic: str, payload: bytes) -> None:
        try:
            result = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self.counters["bad_results"] += 1
            return
        if not isinstance(result, dict) or not isinstance(result.get("id"), str):
            self.counters["bad_results"] += 1
            return
        result["gateway"] = topic.split("/")[2]
        with self._cond:
            self.results[result["id"]] = result
            self._cond.notify_all()
        self._emit("result", **result)

    def _reject(self, topic: str, payload: bytes, reason: str, detail: str = "") -> None:
        with self._cond:
            self.store.record_reject(topic, reason, detail, len(payload), self.client_id, _now_ms())
            self.counters["rejected"] += 1
            self.counters[f"rejected.{reason}"] += 1
            self._emit("reject", topic=topic, reason=reason, detail=detail)
            self._cond.notify_all()

    def _on_batch(self, topic: str, payload: bytes) -> None:
        self.counters["batches_received"] += 1
        parts = topic_parts(topic)
        if parts is None or parts[1] not in LANES:
            self._reject(topic, payload, R_BAD_TOPIC)
            return
        gw, lane_name = parts
        trusted = self.trusted_keys.get(gw)
        if trusted is None and self._ca_resolver is not None:  # no pinned key: the batch's x5chain and the CA
            trusted = (gateway_trust.TrustedKey(self._ca_resolver),)
        if trusted is None:
            self._reject(topic, payload, R_UNTRUSTED, gw)
            return
        try:
            b = gateway_trust.verify(trusted, payload, self.clock())
        except (batch.BatchError, gateway_trust.NoValidKey) as e:
            self._reject(topic, payload, e.reason, e.detail)
            return
        if b.gateway_id != gw:
            self._reject(topic, payload, R_TOPIC_MISMATCH, f"signed by {gw}'s key for {b.gateway_id}")
            return
        if b.lane != LANES[lane_name]:
            self._reject(topic, payload, R_LANE_MISMATCH, f"lane {b.lane} on {lane_name}")
            return
        try:
            self._store(b, payload)
        except StoreUnavailable:
            raise
        except StoreError as e:
            self._reject(topic, payload, R_STORE_REFUSED, str(e))

    def _store(self, b: batch.Batch, data: bytes) -> None:
        delay, deadline = 0.05, time.monotonic() + self.store_retry_s
        while True:  # a store that is restarting or failing over: hold this message and retry in place
            try:
                self._store_once(b, data)
                return
            except StoreUnavailable as e:
                self.counters["store_retries"] += 1
                if time.monotonic() + delay > deadline or self._stopping.is_set():
                    raise
                log.warning("store unavailable (%s); retrying batch %s/%d in %.2fs", e, b.gateway_id, b.seq, delay)
                if self._stopping.wait(delay):
                    raise
                delay = min(delay * 2, 1.0)

    def _store_once(self, b: batch.Batch, data: bytes) -> None:
        # under the sink's lock: a waiter sees the stored rows, the counters and the events together
        with self._cond:
            out = self.store.store_batch(b, data, self.client_id, _now_ms())  # committed when it returns
            tracker = self.trackers.setdefault(b.gateway_id, batch.ChainTracker())
            verdict = tracker.add_batch(b).verdict
            if out.redelivered:
                self.counters["batches_redelivered"] += 1
            else:
                self.counters["batches_stored"] += 1
                self.counters["records_stored"] += out.new_records
                self.counters["records_duplicate"] += out.duplicate_records
            self.counters["broken_links"] += len(out.broken_links)
            self._emit("batch", gateway=b.gateway_id, seq=b.seq, lane=batch.LANE_NAMES[b.lane],
                       records=len(b.records), new=out.new_records, redelivered=out.redelivered, verdict=verdict)
            for link in out.broken_links:
                self._emit("broken_link", gateway=b.gateway_id, link=list(link))
            self._cond.notify_all()

    # ---------------------------------------------------------------------------- queries

    def record_count(self) -> int:
        """Records stored in the store (by every sink sharing it)."""
        return self.store.record_count()

    def batch_count(self) -> int:
        return self.store.batch_count()

    def record_keys(self) -> list[tuple[bytes, int]]:
        """(device, fcnt) of every stored reading, in storage order (cheap: no JSON decoding)."""
        return self.store.record_keys()

    def records(self, device: bytes | None = None) -> list[StoredRecord]:
        """Stored records in storage order (optionally of one device)."""
        return self.store.records(device)

    def rejects(self) -> list[tuple[str, str, str]]:
        """(topic, reason, detail) of every rejected message in the store."""
        return self.store.rejects()

    def chain_report(self, gateway: str | None = None) -> list[ChainReport]:
        return self.store.chain_report(gateway)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            try:
                records: int | None = self.record_count()
                batches: int | None = self.batch_count()
            except StoreUnavailable:  # a live count must not fail while the database restarts
                records = batches = None
            out: dict[str, Any] = {
                "sink": self.client_id, "records": records, "batches": batches, "counters": dict(self.counters),
                "presence": dict(self.presence),
                "source": dict(self.source.counters()) if self.source is not None else {}}
        if self.ca is not None:
            nu = self.ca.crl_next_update
            out["ca"] = {"revoked": len(self.ca.revoked), "crl_reloads": self.ca.crl_reloads,
                         "crl_reload_errors": self.ca.crl_reload_errors, "crl_error": self.ca.crl_error,
                         "crl_next_update": nu.isoformat().replace("+00:00", "Z") if nu is not None else None}
        return out

    # ------------------------------------------------------------------------------ waits

    def wait_for(self, predicate: Callable[[PlatformSink], bool], timeout_s: float, what: str = "") -> None:
        """Block until ``predicate(self)`` holds (re-checked on every stored message and every 0.2 s)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SinkTimeout(f"timed out after {timeout_s}s waiting for {what or 'condition'}: "
                                      f"{self.snapshot()}")
                self._cond.wait(min(left, 0.2))  # other sinks may write the shared database

    def wait_records(self, n: int, timeout_s: float) -> None:
        self.wait_for(lambda s: s.record_count() >= n, timeout_s, f"{n} records")

    async def wait_for_async(self, predicate: Callable[[PlatformSink], bool], timeout_s: float,
                             what: str = "") -> None:
        """The same from asyncio code (polls without blocking the event loop)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if predicate(self):
                    return
            if time.monotonic() > deadline:
                raise SinkTimeout(f"timed out after {timeout_s}s waiting for {what or 'condition'}: "
                                  f"{self.snapshot()}")
            await asyncio.sleep(0.02)

    async def wait_records_async(self, n: int, timeout_s: float) -> None:
        await self.wait_for_async(lambda s: s.record_count() >= n, timeout_s, f"{n} records")

    def wait_result(self, command_id: str, timeout_s: float) -> dict[str, Any]:
        self.wait_for(lambda s: command_id in s.results, timeout_s, f"result of {command_id}")
        return self.results[command_id]

    # --------------------------------------------------------------------------- commands

    def send_command(self, gateway_id: str, command: Mapping[str, Any] | str, timeout_s: float = 10.0) -> str:
        """Publish a platform command (QoS 1) to ``lifeline/v1/<gw>/down``; returns its id."""
        body: dict[str, Any] = json.loads(command) if isinstance(command, str) else dict(command)
        if not isinstance(body, dict):
            raise SinkError("a command is a JSON object")
        body.setdefault("id", str(uuid.uuid4()))
        if self.source is not None:
            try:
                self.source.publish(f"lifeline/v1/{gateway_id}/down",
                                    json.dumps(body, separators=(",", ":")).encode(), timeout_s)
            except SourceError as e:
                raise SinkError(f"command not sent: {e}") from None
            return str(body["id"])
        info = self._client.publish(f"lifeline/v1/{gateway_id}/down",
                                    json.dumps(body, separators=(",", ":")).encode(), qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SinkError(f"command not sent: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise SinkError(f"command not acknowledged by the broker within {timeout_s}s")
        return str(body["id"])

    def ack_alarm(self, gateway_id: str, device: bytes | str, alarm_id: int, timeout_s: float = 10.0) -> str:
        """Acknowledge an alarm: the gateway sends the node an ``ack`` command for ``alarm_id``."""
        dev = device.hex() if isinstance(device, bytes) else device
        return self.send_command(gateway_id, {"device": dev, "command": "ack",
                                              "fields": {"alarm_id": int(alarm_id), "alarm_state": 1}}, timeout_s)


# ------------------------------------------------------------------------------------------------ CLI


def _parse_broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--broker")
    return host, int(port)


def _parse_trust(values: tuple[str, ...]) -> list[tuple[str, Path, int | None, int | None]]:
    """``GW=FILE[,from=TIME][,until=TIME]`` (ISO 8601 times, UTC); a gateway may appear more than once."""
    out: list[tuple[str, Path, int | None, int | None]] = []
    for v in values:
        gw, sep, rest = v.partition("=")
        path, *opts = rest.split(",")
        if not sep or not gw or not path:
            raise click.BadParameter(f"{v!r} is not GATEWAY_ID=PUBKEYFILE[,from=TIME][,until=TIME]",
                                     param_hint="--trust")
        window: dict[str, int] = {}
        for o in opts:
            name, eq, when = o.partition("=")
            if not eq or name not in ("from", "until") or name in window:
                raise click.BadParameter(f"{o!r}: expected from=TIME or until=TIME once each", param_hint="--trust")
            try:
                window[name] = gateway_trust.parse_time(when)
            except ValueError:
                raise click.BadParameter(f"{when!r} is not an ISO 8601 time", param_hint="--trust") from None
        out.append((gw, Path(path), window.get("from"), window.get("until")))
    return out


def _echo_json(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


@click.group("platform-sink", invoke_without_command=True)
@click.pass_context
@click.option("--broker", "broker", metavar="HOST:PORT", help="MQTT broker of the platform (= --source mqtt://HOST:PORT).")
@click.option("--source", "source_url", metavar="URL",
              help="Where batches come from: mqtt://HOST:PORT (MQTT 5 shared subscription) or "
                   "nats://HOST:PORT[,HOST:PORT…][?durable=&replicas=&max_age=&ack_wait=] (JetStream durable "
                   "pull consumer shared by every sink; docs/platform.md).")
@click.option("--store", "store_url", metavar="URL",
              help="Where batches are stored: sqlite:PATH or postgresql://USER@HOST:PORT/DB "
                   "(created/upgraded if needed; several sinks may share it).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
              help="SQLite database: the same as --store sqlite:PATH.")
@click.option("--trust", "trust", multiple=True, metavar="GATEWAY_ID=PUBKEYFILE[,from=TIME][,until=TIME]",
              help="Trusted gateway key (hex, raw or PEM; Ed25519 or SM2 public key), optionally valid only "
                   "from/until an ISO 8601 time (UTC). Repeatable, also for one gateway: a key rotation's overlap.")
@click.option("--ca", "ca_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Trust anchor: the city CA certificate(s) (PEM). Gateways without --trust are verified by the "
                   "certificate chain in their batches (x5chain).")
@click.option("--crl", "crl_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA's CRL (PEM or DER): batches of revoked gateways are refused. Needs --ca.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA of the broker (MQTT or NATS).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Client certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Client key.")
@click.option("--client-id", default=None, help="MQTT client id (default: random, one per sink).")
@click.option("--share-group", default=SHARE_GROUP, show_default=True,
              help="Shared-subscription group; sinks in one group split the batches.")
@click.option("--session-expiry", type=click.IntRange(0), default=0, show_default=True,
              help="MQTT 5 session expiry (s): the broker keeps batches for a restarting sink this long.")
@click.option("--count", "stop_after", type=click.IntRange(1), default=None,
              help="Exit 0 once the database holds this many records.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True), default=None,
              help="Exit 1 if --count is not reached within this many seconds.")
@click.option("--send", "commands", multiple=True, metavar="GATEWAY_ID=JSON",
              help="Publish a platform command after connecting. Repeatable.")
@click.option("--ack-alarm", "acks", multiple=True, metavar="GATEWAY_ID:DEVICE:ALARM_ID",
              help="Acknowledge an alarm after connecting. Repeatable.")
@click.option("--report", is_flag=True, help="Print the chain report of the store and exit (no broker needed).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of the live count.")
def platform_sink_cmd(
    ctx: click.Context, broker: str | None, source_url: str | None, store_url: str | None, db_path: Path | None,
    trust: tuple[str, ...],
    ca_file: Path | None, crl_file: Path | None, tls_ca: Path | None,
    tls_cert: Path | None, tls_key: Path | None, client_id: str | None, share_group: str, session_expiry: int,
    stop_after: int | None, timeout_s: float | None, commands: tuple[str, ...], acks: tuple[str, ...], report: bool,
    as_json: bool,
) -> None:
    """Reference city-platform sink: verify, dedupe and store signed gateway batches.

    Exit codes: 0 ok, 1 --count not reached within --timeout, a broken link or equivocation in a chain
    (or with --report any gap), 2 usage error, 3 broker/key/database error.
    Store maintenance: ``migrate``, ``devices import``, ``retention`` (see their --help).
    """
    if ctx.invoked_subcommand is not None:
        return
    if (store_url is None) == (db_path is None):
        raise click.UsageError("give exactly one of --store URL and --db FILE")
    url = store_url if store_url is not None else f"sqlite:{db_path}"
    if report:
        _report(url, as_json)
        return
    if broker is not None and source_url is not None:
        raise click.UsageError("give one of --broker and --source")
    nats_url = None
    if source_url is not None and source_url.startswith("mqtt://"):
        broker = source_url[len("mqtt://"):].rstrip("/")
    elif source_url is not None and source_url.startswith("nats://"):
        nats_url = source_url
    elif source_url is not None:
        raise click.BadParameter(f"{source_url!r}: use mqtt://HOST:PORT or nats://HOST:PORT[,…]",
                                 param_hint="--source")
    if broker is None and nats_url is None:
        raise click.UsageError("--source (or --broker) is required (unless --report)")
    if not trust and ca_file is None:
        raise click.UsageError("at least one --trust GATEWAY_ID=PUBKEYFILE, or --ca FILE, is required")
    if crl_file is not None and ca_file is None:
        raise click.UsageError("--crl needs --ca")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    host, port = _parse_broker(broker) if broker is not None else ("", 0)
    source: Source | None = None
    if nats_url is not None:
        from lifeline.tools.platform.nats_source import NatsSource

        try:
            source = NatsSource(nats_url, name=client_id or "lifeline-sink",
                                tls=TlsFiles(tls_ca, tls_cert, tls_key).context() if (tls_ca or tls_cert) else None)
        except SourceError as e:
            raise click.BadParameter(str(e), param_hint="--source") from None
    parsed_commands = []
    for c in commands:
        gw, sep, body = c.partition("=")
        if not sep or not gw:
            raise click.BadParameter(f"{c!r} is not GATEWAY_ID=JSON", param_hint="--send")
        try:
            parsed_commands.append((gw, json.loads(body)))
        except ValueError:
            raise click.BadParameter(f"{body!r} is not JSON", param_hint="--send") from None
    parsed_acks = []
    for a in acks:
        fields = a.split(":")
        if len(fields) != 3 or not fields[2].isdigit():
            raise click.BadParameter(f"{a!r} is not GATEWAY_ID:DEVICE:ALARM_ID", param_hint="--ack-alarm")
        parsed_acks.append((fields[0], fields[1], int(fields[2])))
    try:
        keys_by_gw = load_trust(_parse_trust(trust))
        ca = load_ca(ca_file, crl_file) if ca_file is not None else None
    except SinkError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    tls = TlsFiles(tls_ca, tls_cert, tls_key) if (tls_ca or tls_cert) else None

    on_event = (lambda ev: _echo_json({"event": ev.kind, **ev.data})) if as_json else None
    try:
        sink = PlatformSink(host, port, store=url, trust=keys_by_gw, ca=ca, tls=tls, client_id=client_id,
                            share_group=share_group or None, session_expiry_s=session_expiry, on_event=on_event,
                            source=source)
    except SinkError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    try:
        sink.start(30.0 if source is not None else 10.0)
    except SinkError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    _say(as_json, {"event": "ready", "sink": sink.client_id,
                   "source": source.url if source is not None else f"mqtt://{host}:{port}", "store": sink.store.url})
    code = 0
    try:
        for gw, body in parsed_commands:
            cid = sink.send_command(gw, body)
            _say(as_json, {"event": "command_sent", "gateway": gw, "id": cid})
        for gw, dev, alarm in parsed_acks:
            cid = sink.ack_alarm(gw, dev, alarm)
            _say(as_json, {"event": "ack_sent", "gateway": gw, "device": dev, "alarm_id": alarm, "id": cid})
        code = _run(sink, as_json, stop_after, timeout_s)
    except KeyboardInterrupt:
        code = 0
    finally:
        final = sink.snapshot()
        try:
            reports = sink.chain_report()
        except StoreUnavailable as e:
            click.echo(f"warning: no chain report: {e}", err=True)
            reports = []
        sink.stop()
    _say(as_json, {"event": "summary", **final, "chains": [r.to_json() for r in reports]})
    if any(r.broken_links or r.equivocations for r in reports):
        code = 1
    sys.exit(code)


def _say(as_json: bool, obj: Mapping[str, Any]) -> None:
    if as_json:
        _echo_json(obj)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in obj.items()), err=True)


def _run(sink: PlatformSink, as_json: bool, stop_after: int | None, timeout_s: float | None) -> int:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def finished() -> bool:
        try:
            return stop_after is not None and sink.record_count() >= stop_after
        except StoreUnavailable:  # the database is restarting: the sink holds its batches meanwhile
            return False

    def expired() -> bool:
        return deadline is not None and time.monotonic() > deadline

    if as_json or not sys.stdout.isatty():
        last = ""
        while not finished():
            if expired():
                return 1
            with contextlib.suppress(SinkTimeout):
                sink.wait_for(lambda s: finished(), 1.0)
            if not as_json:  # a plain count line whenever it changed (logs, pipes)
                c = sink.counters
                snap = sink.snapshot()
                line = (f"records={snap['records']} batches={snap['batches']} "
                        f"rejected={c.get('rejected', 0)} broken_links={c.get('broken_links', 0)}")
                if line != last:
                    click.echo(line)
                    last = line
        return 0
    from rich.live import Live
    from rich.table import Table

    def table() -> Table:
        snap = sink.snapshot()
        t = Table(title=f"lifeline platform sink {sink.client_id} on {sink.host}:{sink.port}")
        t.add_column("what")
        t.add_column("value", justify="right")
        c = snap["counters"]
        for label, value in (("records stored (db)", snap["records"]), ("batches (db)", snap["batches"]),
                             ("batches here", c.get("batches_stored", 0)),
                             ("redelivered", c.get("batches_redelivered", 0)),
                             ("duplicate records", c.get("records_duplicate", 0)),
                             ("rejected", c.get("rejected", 0)), ("broken links", c.get("broken_links", 0))):
            t.add_row(label, str(value))
        for gw, state in sorted(snap["presence"].items()):
            t.add_row(f"gateway {gw}", state)
        return t

    with Live(table(), refresh_per_second=4, console=None, transient=False) as live:
        while not finished():
            if expired():
                return 1
            with contextlib.suppress(SinkTimeout):
                sink.wait_for(lambda s: finished(), 0.25)
            live.update(table())
    return 0


def _report(url: str, as_json: bool) -> None:
    try:
        store = open_store(url, create=False)
    except StoreError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    try:
        reports = store.chain_report()
        records = store.record_count()
        rejects = store.reject_counts()
    except StoreError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    finally:
        store.close()
    out = {"records": records, "rejects": rejects, "chains": [r.to_json() for r in reports]}
    if as_json:
        _echo_json(out)
    else:
        click.echo(f"records: {records}")
        for reason, n in sorted(rejects.items()):
            click.echo(f"rejected {reason}: {n}")
        for r in reports:
            state = "intact" if r.intact else "PROBLEM"
            click.echo(f"{r.gateway}: {r.batches} batches, highest seq {r.highest}, {state}"
                       f"{f', gaps {list(r.gaps)}' if r.gaps else ''}"
                       f"{f', broken links {list(r.broken_links)}' if r.broken_links else ''}"
                       f"{f', equivocations {list(r.equivocations)}' if r.equivocations else ''}")
    sys.exit(0 if all(r.intact for r in reports) else 1)


for _cmd in PLATFORM_COMMANDS:
    platform_sink_cmd.add_command(_cmd)
