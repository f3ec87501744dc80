"""The rules service's own SQLite file (``[rules] state_db``, default ``<state_dir>/rules.db``, mode 0600).

Tables: ``meta`` (operating mode, audit sequence high-water mark), ``mode_requests`` (written by
``lifeline gateway mode SET``, applied by the daemon within a tick), ``rule_state`` (active firings, so a
restart neither re-fires them nor forgets to clear them), ``last_seen`` (per device, for the silent-device
trigger), ``alarms`` (the alarm life cycle, ``gateway/alarms.py``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lifeline.gateway import alarms
from lifeline.gateway.rules_engine.engine import ActiveState
from lifeline.gateway.rules_engine.model import MODES
from lifeline.gateway.statedb import Transaction, connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mode_requests(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  mode TEXT NOT NULL,
  source TEXT NOT NULL,
  at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rule_state(
  rule TEXT NOT NULL,
  key BLOB NOT NULL,
  device BLOB NOT NULL,
  since_ms INTEGER NOT NULL,
  value INTEGER,
  alarm_id INTEGER,
  PRIMARY KEY (rule, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_seen(device BLOB PRIMARY KEY, at_ms INTEGER NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    mode: str
    mode_request_id: int  # highest request already applied
    audit_next: int  # first audit seq this run may use
    active: tuple[ActiveState, ...]
    last_seen: dict[bytes, int]


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, items: dict[str, str]) -> None:
    with Transaction(conn):
        conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(items.items()))


def open_state(conn: sqlite3.Connection, tracker: alarms.AlarmTracker) -> Snapshot:
    conn.executescript(SCHEMA)
    tracker.load(conn)
    mode = _meta(conn, "mode") or "daily"
    if mode not in MODES:
        mode = "daily"
    req = int(_meta(conn, "mode_request_id") or 0)
    audit_next = int(_meta(conn, "audit_reserved") or 0)
    active = tuple(ActiveState(r[0], bytes(r[1]), bytes(r[2]), r[3], r[4], r[5])
                   for r in conn.execute("SELECT rule, key, device, since_ms, value, alarm_id FROM rule_state"))
    seen = {bytes(d): t for d, t in conn.execute("SELECT device, at_ms FROM last_seen")}
    return Snapshot(mode, req, audit_next, active, seen)


def save_active(conn: sqlite3.Connection, states: Iterable[ActiveState]) -> None:
    with Transaction(conn):
        conn.execute("DELETE FROM rule_state")
        conn.executemany("INSERT INTO rule_state(rule, key, device, since_ms, value, alarm_id) VALUES (?,?,?,?,?,?)",
                         [(s.rule, s.key, s.device, s.since_ms, s.value, s.alarm_id) for s in states])


def save_seen(conn: sqlite3.Connection, seen: dict[bytes, int]) -> None:
    with Transaction(conn, durable=False):
        conn.executemany("INSERT OR REPLACE INTO last_seen(device, at_ms) VALUES (?, ?)", list(seen.items()))


def pending_mode_requests(conn: sqlite3.Connection, after_id: int) -> list[tuple[int, str, str]]:
    return [(int(r[0]), str(r[1]), str(r[2])) for r in conn.execute(
        "SELECT id, mode, source FROM mode_requests WHERE id > ? ORDER BY id", (after_id,))]


# ------------------------------------------------------------------ used by `lifeline gateway mode`


def request_mode(path: Path, mode: str, source: str = "local") -> int:
    """Queue a mode change for the daemon (it applies it within a second). Returns the request id."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
        with Transaction(conn):
            cur = conn.execute("INSERT INTO mode_requests(mode, source, at_ms) VALUES (?,?,?)",
                               (mode, source, time.time_ns() // 1_000_000))
            return int(cur.lastrowid or 0)
    finally:
        conn.close()


def read_mode(path: Path) -> dict[str, object]:
    """The mode as the daemon last applied it and any request it has not applied yet (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        try:
            mode = _meta(conn, "mode") or "daily"
            applied = int(_meta(conn, "mode_request_id") or 0)
            pending = [r[0] for r in conn.execute("SELECT mode FROM mode_requests WHERE id > ? ORDER BY id",
                                                   (applied,))]
        except sqlite3.OperationalError:  # tables not created yet
            mode, pending = "daily", []
    finally:
        conn.close()
    return {"mode": mode, "pending": pending[-1] if pending else None}
