"""The embedded store: one SQLite file (WAL), shareable by several sink processes on one machine.

Readings are unique on (device, fcnt, record_type) with scope '' (so the same reading carried by two
gateways is stored once); gateway events on (gateway, fcnt = event seq). A batch is unique on (gateway,
seq, digest): a redelivery is recognised and changes nothing. Each batch's links to its stored neighbours
are checked inside the storing transaction (``BEGIN IMMEDIATE`` serialises writers, so two sinks cannot
miss each other's neighbour); the full chain report is computed from the batches table.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from lifeline.protocols import batch
from lifeline.tools.platform.store import ChainReport, StoredRecord, StoreError, StoreOutcome, StoreUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, digest BLOB NOT NULL, prev_hash BLOB NOT NULL,
    lane INTEGER NOT NULL, created_ms INTEGER NOT NULL, count INTEGER NOT NULL, new_records INTEGER NOT NULL,
    received_ms INTEGER NOT NULL, sink TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (gateway, seq, digest)
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,            -- '' for readings (dedupe across gateways), the gateway for events
    device BLOB NOT NULL, fcnt INTEGER NOT NULL, record_type INTEGER NOT NULL,
    kind INTEGER NOT NULL, node_time INTEGER NOT NULL, rx_ms INTEGER NOT NULL,
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, lane INTEGER NOT NULL, flags INTEGER NOT NULL,
    priority INTEGER NOT NULL, data_class INTEGER NOT NULL, record_json TEXT NOT NULL,
    stored_ms INTEGER NOT NULL, sink TEXT NOT NULL,
    UNIQUE (scope, device, fcnt, record_type)
);
CREATE INDEX IF NOT EXISTS records_by_device ON records (device, fcnt);
CREATE TABLE IF NOT EXISTS rejects (
    id INTEGER PRIMARY KEY, received_ms INTEGER NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
    detail TEXT NOT NULL, size INTEGER NOT NULL, sink TEXT NOT NULL
);
"""


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # an acknowledgement follows the commit: it must be durable
    db.execute("PRAGMA busy_timeout=30000")
    db.executescript(SCHEMA)
    return db


def chain_report(db: sqlite3.Connection, gateway: str | None = None,
                 lock: threading.RLock | threading.Lock | None = None) -> list[ChainReport]:
    """Gaps, broken links and equivocations per gateway, from every batch in the database."""
    with lock if lock is not None else contextlib.nullcontext():
        gateways = [gateway] if gateway else [r[0] for r in db.execute("SELECT DISTINCT gateway FROM batches")]
        out = []
        for gw in sorted(gateways):
            rows = db.execute("SELECT seq, prev_hash, digest FROM batches WHERE gateway=? ORDER BY seq, received_ms",
                              (gw,)).fetchall()
            tracker = batch.ChainTracker(window=max(2, len(rows) + 1))
            for seq, prev, digest in rows:
                tracker.add(int(seq), bytes(prev), bytes(digest))
            out.append(ChainReport(gw, len(rows), tracker.highest, tracker.gaps, tracker.broken_links,
                                   tracker.equivocations))
    return out


def record_json(r: batch.BatchRecord) -> str:
    return json.dumps(batch.record_to_json(r), separators=(",", ":"))


class SqliteStore:
    """A :class:`~lifeline.tools.platform.store.Store` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._db = open_db(self.path)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"database {self.path}: {e}") from None

    @property
    def url(self) -> str:
        return f"sqlite:{self.path}"

    def store_batch(self, b: batch.Batch, raw: bytes, sink_id: str, now_ms: int) -> StoreOutcome:
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreUnavailable(f"{self.path}: {e}") from e
            try:
                cur = db.execute(
                    "INSERT OR IGNORE INTO batches (gateway, seq, digest, prev_hash, lane, created_ms, count, "
                    "new_records, received_ms, sink, data) VALUES (?,?,?,?,?,?,?,0,?,?,?)",
                    (b.gateway_id, b.seq, b.digest, b.prev_hash, b.lane, b.created_ms, len(b.records), now_ms,
                     sink_id, raw),
                )
                redelivered = cur.rowcount == 0
                new = 0
                broken: list[tuple[int, int]] = []
                if not redelivered:
                    for r in b.records:
                        scope = b.gateway_id if r.record_type == batch.RECORD_EVENT else ""
                        cur = db.execute(
                            "INSERT OR IGNORE INTO records (scope, device, fcnt, record_type, kind, node_time, "
                            "rx_ms, gateway, seq, lane, flags, priority, data_class, record_json, stored_ms, "
                            "sink) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            (scope, r.device_id, r.fcnt, r.record_type, r.kind, r.node_time, r.rx_ms,
                             b.gateway_id, b.seq, b.lane, r.flags, r.priority, r.data_class, record_json(r),
                             now_ms, sink_id),
                        )
                        new += cur.rowcount
                    db.execute("UPDATE batches SET new_records=? WHERE gateway=? AND seq=? AND digest=?",
                               (new, b.gateway_id, b.seq, b.digest))
                    broken = self._check_links(b)
                db.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StoreUnavailable(f"{self.path}: {e}") from e
                if isinstance(e, OverflowError):  # a value wider than SQLite's 64-bit INTEGER
                    raise StoreError(f"{b.gateway_id} seq {b.seq}: {e}") from e
                raise
        dup = 0 if redelivered else len(b.records) - new
        return StoreOutcome(redelivered, new, dup, tuple(broken))

    def _check_links(self, b: batch.Batch) -> list[tuple[int, int]]:
        """Links to the stored neighbours (any sink sharing the database stored them)."""
        broken: list[tuple[int, int]] = []
        if b.seq == 0 and b.prev_hash != batch.ZERO_HASH:
            broken.append((-1, 0))
        rows = self._db.execute(
            "SELECT seq, digest, prev_hash FROM batches WHERE gateway=? AND seq IN (?, ?)",
            (b.gateway_id, b.seq - 1, b.seq + 1),
        ).fetchall()
        for seq, digest, prev in rows:
            if seq == b.seq - 1 and digest != b.prev_hash:
                broken.append((seq, b.seq))
            if seq == b.seq + 1 and prev != b.digest:
                broken.append((b.seq, seq))
        return broken

    def record_reject(self, topic: str, reason: str, detail: str, size: int, sink_id: str, now_ms: int) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO rejects (received_ms, topic, reason, detail, size, sink) VALUES (?,?,?,?,?,?)",
                    (now_ms, topic[:200], reason, detail[:500], size, sink_id),
                )
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.path}: {e}") from e

    # ---------------------------------------------------------------------------------- queries

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return list(self._db.execute(sql, args).fetchall())
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.path}: {e}") from e

    def record_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM records")[0][0])

    def batch_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM batches")[0][0])

    def record_keys(self) -> list[tuple[bytes, int]]:
        return [(bytes(d), int(f)) for d, f in self._query(
            "SELECT device, fcnt FROM records WHERE record_type=0 ORDER BY id")]

    def records(self, device: bytes | None = None) -> list[StoredRecord]:
        sql = ("SELECT device, fcnt, record_type, kind, node_time, rx_ms, gateway, seq, lane, flags, priority, "
               "record_json FROM records")
        args: tuple[Any, ...] = ()
        if device is not None:
            sql += " WHERE device=?"
            args = (device,)
        return [StoredRecord(device=bytes(row[0]), fcnt=row[1], record_type=row[2], kind=row[3], node_time=row[4],
                             rx_ms=row[5], gateway=row[6], seq=row[7], lane=row[8], flags=row[9], priority=row[10],
                             fields=json.loads(row[11])["fields"])
                for row in self._query(sql + " ORDER BY id", args)]

    def rejects(self) -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[2]) for r in self._query("SELECT topic, reason, detail FROM rejects ORDER BY id")]

    def reject_counts(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self._query("SELECT reason, COUNT(*) FROM rejects GROUP BY reason")}

    def records_by_sink(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self._query("SELECT sink, COUNT(*) FROM records GROUP BY sink")}

    def chain_report(self, gateway: str | None = None) -> list[ChainReport]:
        try:
            return chain_report(self._db, gateway, lock=self._lock)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"{self.path}: {e}") from e

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
