"""The city platform as the drills see it: its own Mosquitto (persistence on, so a restart keeps queued
batches) and the reference sink (``lifeline.tools.platform_sink.PlatformSink``) with a persistent,
non-shared subscription (protocol.md 7.4: the set-up that loses nothing across broker restarts).

Queries read the sink's SQLite file through a second, read-only connection (WAL), including the time each
record was stored, which the latency KPIs need.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeline.protocols import batch, schema
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.platform_sink import PlatformSink

RT_READING = 0
RT_EVENT = 1
FLAG_BACKFILLED = "backfilled"
FLAG_QUEUED = "queued"


@dataclass(frozen=True, slots=True)
class Row:
    """One record the platform stored."""

    id: int  # storage order
    device: bytes
    fcnt: int
    record_type: int
    kind: int  # report kind, or the event code for gateway events
    node_time: int
    rx_ms: int
    stored_ms: int
    lane: int
    seq: int
    priority: int
    flags: tuple[str, ...]
    fields: Mapping[str, Any]

    @property
    def is_alarm(self) -> bool:
        return self.record_type == RT_READING and self.kind == schema.K_ALARM_RAISED

    def field(self, name: str) -> Any:
        """A field's value as the sink rendered it (plain value, or the 'value' of a physical quantity)."""
        v = self.fields.get(name)
        return v.get("value", v.get("raw")) if isinstance(v, dict) else v


class Platform:
    def __init__(self, workdir: Path, gateway_id: str) -> None:
        self.workdir = Path(workdir)
        self.gateway_id = gateway_id
        self.broker = MosquittoBroker(workdir=self.workdir / "platform-broker", persistence=True)
        self.db_path = self.workdir / "platform.db"
        self.sink: PlatformSink | None = None

    def start_broker(self) -> None:
        self.broker.start()

    def start_sink(self, gateway_public_key: bytes) -> PlatformSink:
        self.sink = PlatformSink(self.broker.host, self.broker.port, db=self.db_path,
                                 trust={self.gateway_id: gateway_public_key}, client_id="hil-platform-sink",
                                 share_group=None, session_expiry_s=3600).start()
        return self.sink

    def close(self) -> None:
        if self.sink is not None:
            self.sink.stop()
        self.broker.close()

    @property
    def address(self) -> tuple[str, int]:
        return self.broker.host, self.broker.port

    # ------------------------------------------------------------------------------ queries
    def _conn(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)

    def rows(self, device: bytes | None = None, *, record_type: int | None = RT_READING) -> list[Row]:
        sql = ("SELECT id, device, fcnt, record_type, kind, node_time, rx_ms, stored_ms, lane, seq, priority, "
               "record_json FROM records")
        cond: list[str] = []
        args: list[Any] = []
        if device is not None:
            cond.append("device = ?")
            args.append(device)
        if record_type is not None:
            cond.append("record_type = ?")
            args.append(record_type)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        if not self.db_path.exists():
            return []
        conn = self._conn()
        try:
            raw = conn.execute(sql + " ORDER BY id", args).fetchall()
        finally:
            conn.close()
        out = []
        for r in raw:
            rec = json.loads(r[11])
            out.append(Row(int(r[0]), bytes(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]),
                           int(r[8]), int(r[9]), int(r[10]), tuple(rec.get("flags", ())), rec.get("fields", {})))
        return out

    def batch_records(self) -> list[Any]:
        """Every record of every batch the platform received (``protocols.batch.BatchRecord``), verified again
        with the gateway's key: what the gateway delivered, independent of the sink's record dedupe."""
        assert self.sink is not None
        key = self.sink.trust[self.gateway_id]
        if not self.db_path.exists():
            return []
        conn = self._conn()
        try:
            blobs = [bytes(r[0]) for r in conn.execute("SELECT data FROM batches ORDER BY seq")]
        finally:
            conn.close()
        out: list[Any] = []
        for data in blobs:
            out.extend(batch.verify(data, key).records)
        return out

    def keys(self, device: bytes | None = None) -> list[tuple[bytes, int]]:
        return [(r.device, r.fcnt) for r in self.rows(device)]

    def events(self, code: int | None = None) -> list[Row]:
        return [r for r in self.rows(record_type=RT_EVENT) if code is None or r.kind == code]

    def alarms(self, device: bytes | None = None) -> list[Row]:
        return [r for r in self.rows(device) if r.is_alarm]

    def count(self) -> int:
        return self.sink.record_count() if self.sink is not None else 0

    def chain_intact(self) -> bool:
        assert self.sink is not None
        reports = self.sink.chain_report()
        return all(r.intact for r in reports)

    def chain_report(self) -> list[dict[str, Any]]:
        assert self.sink is not None
        return [r.to_json() for r in self.sink.chain_report()]

    def rejected(self) -> int:
        assert self.sink is not None
        return int(self.sink.counters["rejected"])

    # ------------------------------------------------------------------------------ waiting
    def wait(self, pred: Callable[[Platform], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"platform: timed out after {timeout_s:g} s waiting for {what} "
                                     f"(stored {self.count()} records)")
            time.sleep(0.05)

    def wait_keys(self, keys: set[tuple[bytes, int]], timeout_s: float, what: str = "") -> None:
        def have(p: Platform) -> bool:
            return keys <= set(p.keys())

        try:
            self.wait(have, timeout_s, what or f"{len(keys)} readings")
        except AssertionError as e:
            missing = sorted((d.hex(), f) for d, f in keys - set(self.keys()))
            raise AssertionError(f"{e}; missing {len(missing)}: {missing[:8]}") from None

    def presence(self) -> str | None:
        return self.sink.presence.get(self.gateway_id) if self.sink is not None else None

    # ------------------------------------------------------------------------------ commands
    def command(self, device: bytes, command: str, fields: Mapping[str, int]) -> str:
        assert self.sink is not None
        return self.sink.send_command(self.gateway_id, {"device": device.hex(), "command": command,
                                                        "fields": dict(fields)})

    def ack_alarm(self, device: bytes, alarm_id: int) -> str:
        assert self.sink is not None
        return self.sink.ack_alarm(self.gateway_id, device, alarm_id)

    def result(self, command_id: str) -> dict[str, Any] | None:
        assert self.sink is not None
        return self.sink.results.get(command_id)

    def wait_result(self, command_id: str, status: str, timeout_s: float) -> dict[str, Any]:
        self.wait(lambda p: (p.result(command_id) or {}).get("status") == status, timeout_s,
                  f"command {command_id} {status} (last: {self.result(command_id)})")
        r = self.result(command_id)
        assert r is not None
        return r
