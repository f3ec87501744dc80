"""Alarm life cycle on the gateway: raised by a node -> forwarded -> acknowledged by the platform -> the
acknowledgement delivered to the node -> handled -> closed; cleared by the node at any point; escalated
locally when no platform acknowledgement came in time (docs/rules.md, "Alarm life cycle").

:class:`AlarmTracker` keeps the open alarms in memory (the ingest hot path updates it without I/O) and
marks what changed; the rules service writes the changes to its SQLite file (``save``) within
milliseconds and loads them at start (``load``), so the state survives restarts. Every step is reported
through ``on_step`` (the service turns it into an audit record).

Steps and what drives them:

| step | from | driven by |
| --- | --- | --- |
| raised | - | an ``alarm_raised`` reading (kind 9) with a new (device, alarm id) |
| forwarded | raised | its buffer row is gone: the platform broker PUBACKed the batch that carried it |
| acked | raised, forwarded, escalated | a platform ``ack`` command (``alarm_state`` 1) for it |
| ack_delivered | acked / handled / closed | that command was sent to the node (C_ACK with ``alarm_state``) |
| handled | acked | a platform ``ack`` with ``alarm_state`` 2 |
| closed | any | a platform ``ack`` with ``alarm_state`` 3 |
| cleared | any | an ``alarm_cleared`` reading (kind 10) from the node |
| escalated | raised, forwarded | the ``alarm_unacked`` rule fired (no platform ack within its time) |
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from lifeline.gateway.statedb import Transaction

STAGES = ("raised", "forwarded", "acked", "handled", "closed")
STEPS = ("raised", "forwarded", "acked", "ack_delivered", "handled", "closed", "cleared", "escalated")
RETAIN_MS = 7 * 86_400_000  # finished alarms are kept this long (a late ack still finds its alarm)

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms(
  device BLOB NOT NULL,
  alarm_id INTEGER NOT NULL,
  cause INTEGER NOT NULL,
  value INTEGER,
  stage TEXT NOT NULL,
  raised_ms INTEGER NOT NULL,
  reading_id INTEGER,
  fcnt INTEGER,
  forwarded_ms INTEGER,
  acked_ms INTEGER,
  ack_state INTEGER,
  ack_command TEXT,
  ack_delivered_ms INTEGER,
  ack_down_fcnt INTEGER,
  escalated_ms INTEGER,
  cleared_ms INTEGER,
  updated_ms INTEGER NOT NULL,
  PRIMARY KEY (device, alarm_id)
) WITHOUT ROWID;
"""

_COLS = ("device", "alarm_id", "cause", "value", "stage", "raised_ms", "reading_id", "fcnt", "forwarded_ms",
         "acked_ms", "ack_state", "ack_command", "ack_delivered_ms", "ack_down_fcnt", "escalated_ms", "cleared_ms",
         "updated_ms")


@dataclass(slots=True)
class Alarm:
    """One node alarm (mutable: the tracker's own state, never passed between pipeline stages)."""

    device: bytes
    alarm_id: int
    cause: int
    value: int | None
    stage: str
    raised_ms: int
    reading_id: int | None = None
    fcnt: int | None = None
    forwarded_ms: int | None = None
    acked_ms: int | None = None
    ack_state: int | None = None
    ack_command: str | None = None
    ack_delivered_ms: int | None = None
    ack_down_fcnt: int | None = None
    escalated_ms: int | None = None
    cleared_ms: int | None = None
    updated_ms: int = 0

    @property
    def key(self) -> tuple[bytes, int]:
        return self.device, self.alarm_id

    @property
    def open(self) -> bool:
        """Still needs attention: not cleared by the node and not closed by the platform."""
        return self.cleared_ms is None and self.stage != "closed"

    @property
    def acked(self) -> bool:
        return self.acked_ms is not None

    def row(self) -> tuple[object, ...]:
        return tuple(getattr(self, c) for c in _COLS)


StepHandler = Callable[[Alarm, str, int], None]


class AlarmTracker:
    def __init__(self, on_step: StepHandler | None = None) -> None:
        self._alarms: dict[tuple[bytes, int], Alarm] = {}
        self._dirty: set[tuple[bytes, int]] = set()
        self.on_step = on_step

    def __len__(self) -> int:
        return len(self._alarms)

    def get(self, device: bytes, alarm_id: int) -> Alarm | None:
        return self._alarms.get((device, alarm_id))

    def all(self) -> Iterator[Alarm]:
        return iter(self._alarms.values())

    def open_alarms(self) -> list[Alarm]:
        return [a for a in self._alarms.values() if a.open]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((*STAGES, "cleared"), 0)
        for a in self._alarms.values():
            out["cleared" if a.cleared_ms is not None else a.stage] += 1
        return out

    def _step(self, a: Alarm, step: str, at_ms: int) -> None:
        a.updated_ms = at_ms
        self._dirty.add(a.key)
        if self.on_step is not None:
            self.on_step(a, step, at_ms)

    # ------------------------------------------------------------------ node side (hot path, no I/O)

    def raised(self, device: bytes, alarm_id: int, cause: int, value: int | None, at_ms: int,
               reading_id: int | None = None, fcnt: int | None = None) -> Alarm | None:
        """An ``alarm_raised`` reading. Returns the new alarm, or None for a repeat of a known open one."""
        a = self._alarms.get((device, alarm_id))
        if a is not None and a.open:
            return None
        a = Alarm(device, alarm_id, cause, value, "raised", at_ms, reading_id, fcnt)
        self._alarms[a.key] = a
        self._step(a, "raised", at_ms)
        return a

    def cleared(self, device: bytes, alarm_id: int, cause: int, at_ms: int) -> Alarm | None:
        a = self._alarms.get((device, alarm_id))
        if a is None:
            a = Alarm(device, alarm_id, cause, None, "raised", at_ms)
            self._alarms[a.key] = a
        elif a.cleared_ms is not None:
            return None
        a.cleared_ms = at_ms
        self._step(a, "cleared", at_ms)
        return a

    # ------------------------------------------------------------------ platform side

    def awaiting_forward(self) -> dict[int, Alarm]:
        return {a.reading_id: a for a in self._alarms.values()
                if a.stage == "raised" and a.reading_id is not None and a.forwarded_ms is None}

    def forwarded(self, a: Alarm, at_ms: int) -> None:
        if a.forwarded_ms is not None:
            return
        a.forwarded_ms = at_ms
        if a.stage == "raised":
            a.stage = "forwarded"
        self._step(a, "forwarded", at_ms)

    def platform_ack(self, device: bytes, alarm_id: int, ack_state: int, command_id: str, at_ms: int) -> Alarm:
        """A platform ``ack`` command (1 acknowledged, 2 handled, 3 closed; 0 is treated as 1)."""
        a = self._alarms.get((device, alarm_id))
        if a is None:  # raised through another gateway, or before this gateway kept state
            a = Alarm(device, alarm_id, 0, None, "raised", at_ms)
            self._alarms[a.key] = a
        state = max(1, min(3, ack_state))
        a.ack_command = command_id
        a.ack_state = max(a.ack_state or 0, state)
        a.ack_delivered_ms = None
        a.ack_down_fcnt = None
        if a.acked_ms is None:
            a.acked_ms = at_ms
            if STAGES.index(a.stage) < STAGES.index("acked"):
                a.stage = "acked"
            self._step(a, "acked", at_ms)
        if state >= 2 and STAGES.index(a.stage) < STAGES.index("handled"):
            a.stage = "handled"
            self._step(a, "handled", at_ms)
        if state >= 3 and a.stage != "closed":
            a.stage = "closed"
            self._step(a, "closed", at_ms)
        self._dirty.add(a.key)
        return a

    def awaiting_delivery(self) -> dict[str, Alarm]:
        return {a.ack_command: a for a in self._alarms.values()
                if a.ack_command is not None and a.ack_delivered_ms is None}

    def ack_delivered(self, a: Alarm, down_fcnt: int | None, at_ms: int) -> None:
        if a.ack_delivered_ms is not None:
            return
        a.ack_delivered_ms = at_ms
        a.ack_down_fcnt = down_fcnt
        self._step(a, "ack_delivered", at_ms)

    def escalated(self, device: bytes, alarm_id: int, at_ms: int) -> Alarm | None:
        a = self._alarms.get((device, alarm_id))
        if a is None or a.escalated_ms is not None:
            return None
        a.escalated_ms = at_ms
        self._step(a, "escalated", at_ms)
        return a

    # ------------------------------------------------------------------ persistence (service DB thread)

    def take_dirty(self) -> list[tuple[object, ...]]:
        rows = [self._alarms[k].row() for k in self._dirty if k in self._alarms]
        self._dirty.clear()
        return rows

    def expire(self, now_ms: int) -> list[tuple[bytes, int]]:
        """Forget finished alarms older than RETAIN_MS; returns their keys (to delete on disk)."""
        gone = [k for k, a in self._alarms.items() if not a.open and now_ms - a.updated_ms > RETAIN_MS]
        for k in gone:
            del self._alarms[k]
            self._dirty.discard(k)
        return gone

    def load(self, conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)
        self._alarms.clear()
        for row in conn.execute(f"SELECT {', '.join(_COLS)} FROM alarms"):
            a = Alarm(bytes(row[0]), *row[1:])
            self._alarms[a.key] = a


def save(conn: sqlite3.Connection, rows: Iterable[tuple[object, ...]], gone: Iterable[tuple[bytes, int]] = ()) -> None:
    with Transaction(conn):
        conn.executemany(f"INSERT OR REPLACE INTO alarms({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})",
                         list(rows))
        conn.executemany("DELETE FROM alarms WHERE device=? AND alarm_id=?", list(gone))
