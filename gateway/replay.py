"""Replay protection: per-device frame counters, persisted with the readings they admit.

The uplink counter a device may use next is "greater than the last accepted one" (any jump forward is
fine; equal or lower is a replay). ``accept`` advances the in-memory value when a reading is accepted;
the commit stage persists the highest *committed* counter of each device in the same SQLite transaction
that stores the readings (``persist``), so after a crash the stored counter is exactly that of the last
committed reading: a counter is never accepted twice and an advance is never lost.

The downlink counter is allocated inside the commit transaction that owes the downlink (``alloc_down``
then ``persist``), so it is on disk before the frame is sent and never reused.

Counters belong to a key epoch (the registry bumps it on a re-key): a new key starts counting afresh.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters(
  device BLOB PRIMARY KEY,
  epoch INTEGER NOT NULL,
  up INTEGER NOT NULL,
  down INTEGER NOT NULL
) WITHOUT ROWID;
"""
U32 = 0xFFFFFFFF


class _State:
    __slots__ = ("down", "epoch", "up")

    def __init__(self, epoch: int, up: int, down: int) -> None:
        self.epoch = epoch
        self.up = up
        self.down = down


class ReplayGuard:
    def __init__(self) -> None:
        self._state: dict[bytes, _State] = {}

    def load(self, conn: sqlite3.Connection) -> int:
        conn.executescript(SCHEMA)
        self._state.clear()
        for dev, epoch, up, down in conn.execute("SELECT device, epoch, up, down FROM counters"):
            self._state[bytes(dev)] = _State(epoch, up, down)
        return len(self._state)

    def _get(self, device: bytes, epoch: int) -> _State:
        s = self._state.get(device)
        if s is None or s.epoch != epoch:
            s = self._state[device] = _State(epoch, -1, 0)
        return s

    def last_up(self, device: bytes, epoch: int) -> int:
        """Last accepted uplink counter (-1: none yet)."""
        s = self._state.get(device)
        return s.up if s is not None and s.epoch == epoch else -1

    def last_down(self, device: bytes, epoch: int) -> int:
        s = self._state.get(device)
        return s.down if s is not None and s.epoch == epoch else 0

    def accept(self, device: bytes, epoch: int, fcnt: int) -> bool:
        """True and advance if ``fcnt`` is above the last accepted counter; False for a replay."""
        s = self._get(device, epoch)
        if fcnt <= s.up:
            return False
        s.up = fcnt
        return True

    def alloc_down(self, device: bytes, epoch: int) -> int | None:
        """Next downlink counter (from 1); None when the 32-bit space is used up (re-key the device)."""
        s = self._get(device, epoch)
        if s.down >= U32:
            return None
        s.down += 1
        return s.down

    def persist(self, conn: sqlite3.Connection, committed: Iterable[tuple[bytes, int, int]]) -> None:
        """Inside the commit transaction: store (device, epoch, highest committed uplink fcnt) together
        with the in-memory downlink counter of each device."""
        rows = []
        for device, epoch, up in committed:
            s = self._state.get(device)
            down = s.down if s is not None and s.epoch == epoch else 0
            rows.append((device, epoch, up, down))
        conn.executemany(
            "INSERT INTO counters(device, epoch, up, down) VALUES (?,?,?,?) ON CONFLICT(device) DO UPDATE SET "
            "up = CASE WHEN counters.epoch = excluded.epoch THEN max(counters.up, excluded.up) ELSE excluded.up END, "
            "down = CASE WHEN counters.epoch = excluded.epoch THEN max(counters.down, excluded.down) "
            "ELSE excluded.down END, epoch = excluded.epoch",
            rows,
        )

    def __len__(self) -> int:
        return len(self._state)
