"""Commit stage: one durable SQLite transaction per group of records (group commit).

While a transaction is being fsynced on the DB thread, new records queue up; the next transaction takes
all of them (up to ``group_commit_max``). One transaction stores the readings (buffer.py), the highest
committed uplink counter of each device and any downlink counters allocated for them (replay.py), and
takes the queued commands their receive windows will carry (downlinks.py). Only after COMMIT returns
(synchronous=FULL: the WAL is fsynced) are the readings counted as accepted, the forwarder woken and the
ACK downlinks released. A failing transaction is fatal: the stage raises, the daemon exits non-zero and
systemd restarts it; nothing in that group was acknowledged, and the counters on disk are those of the
last committed group.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from lifeline.gateway import records as rec
from lifeline.gateway.buffer import Buffer, WriteResult
from lifeline.gateway.clock import Clock
from lifeline.gateway.downlinks import CommandQueue
from lifeline.gateway.forwarder import Forwarder, Signed
from lifeline.gateway.health import HEARTBEAT_S, Heartbeat
from lifeline.gateway.log import Log
from lifeline.gateway.pipeline import Barrier, Item, Waiters
from lifeline.gateway.replay import ReplayGuard
from lifeline.gateway.statedb import StateDB, Transaction
from lifeline.gateway.stats import Stats
from lifeline.protocols import frame, schema

_log = Log("commit")


class CommitStage:
    def __init__(self, *, db: StateDB, buffer: Buffer, replay: ReplayGuard, commands: CommandQueue, clock: Clock,
                 stats: Stats, group_max: int, on_commit: Callable[[], None],
                 forwarder: Forwarder | None = None) -> None:
        self.db = db
        self.buffer = buffer
        self.replay = replay
        self.commands = commands
        self.clock = clock
        self.stats = stats
        self.group_max = group_max
        self.on_commit = on_commit
        self.forwarder = forwarder
        self.last_commit_s = 0.0
        self.last_group = 0

    def commit(self, conn: sqlite3.Connection, items: list[Item], now_ms: int) -> tuple[
            WriteResult, list[rec.DownlinkPlan], Signed | None]:
        """One transaction (runs on the DB thread). New live alarms are signed into the outbox inside it
        (``Forwarder.sign_alarms_in``), so an alarm costs one fsync before it can be published."""
        plans: list[rec.DownlinkPlan] = []
        signed: Signed | None = None
        fw = self.forwarder
        before = fw.signer_state() if fw is not None else None
        try:
            with Transaction(conn):
                res = self.buffer.write_group(conn, items, now_ms)
                top: dict[bytes, tuple[int, int]] = {}
                open_commands = self.commands.open_by_device
                reading = rec.Reading
                for it in items:
                    if type(it) is not reading:
                        continue
                    dev = it.device_id
                    prev = top.get(dev)
                    if prev is None or it.fcnt > prev[1]:
                        top[dev] = (it.key_epoch, it.fcnt)
                    ack = bool(it.frame_flags & frame.FLAG_ACK_REQ)
                    if not ack and (not open_commands or open_commands.get(dev, 0) <= 0):
                        continue
                    cmd = self.commands.take(conn, it.device_id, now_ms, ack_only=ack)
                    if not ack and cmd is None:
                        continue
                    down = self.replay.alloc_down(it.device_id, it.key_epoch)
                    if down is None:
                        _log.error("downlink counter exhausted; re-key the device", device=it.device_id)
                        continue
                    plans.append(rec.DownlinkPlan(it, down, cmd))
                self.replay.persist(conn, [(dev, epoch, fcnt) for dev, (epoch, fcnt) in top.items()])
                if fw is not None and res.inserted[schema.P_ALARM]:
                    signed = fw.sign_alarms_in(conn, now_ms)
        except BaseException:
            if fw is not None and before is not None:
                fw.restore_signer(before)
            raise
        return res, plans, signed

    async def run(self, inq: asyncio.Queue[list[Item | Waiters] | Barrier], out: asyncio.Queue[Any],
                  heartbeat: Heartbeat) -> None:
        while True:
            try:
                first = await asyncio.wait_for(inq.get(), HEARTBEAT_S)
            except TimeoutError:
                heartbeat.beat()
                continue
            group: list[Item] = []
            waiters: list[Waiters] = []
            barrier: Barrier | None = None
            nxt: list[Item | Waiters] | Barrier = first
            while True:
                if isinstance(nxt, Barrier):
                    barrier = nxt
                    break
                for it in nxt:
                    if isinstance(it, Waiters):
                        waiters.append(it)
                    else:
                        group.append(it)
                if len(group) >= self.group_max or inq.empty():
                    break
                nxt = inq.get_nowait()
            if group:
                try:
                    await self._commit_group(group, out)
                except BaseException as e:
                    for w in waiters:
                        w.resolve(RuntimeError("commit failed"))
                    raise e
            for w in waiters:
                w.resolve()
            if barrier is not None:
                await out.put(barrier)
            heartbeat.beat()

    async def _commit_group(self, group: list[Item], out: asyncio.Queue[Any]) -> None:
        now = self.clock.now_ms()
        t0 = time.perf_counter()
        res, plans, signed = await self.db.run(lambda c: self.commit(c, group, now))
        if signed is not None and self.forwarder is not None:
            self.forwarder.launch(signed)
        self.last_commit_s = time.perf_counter() - t0
        self.last_group = len(group)
        self.stats.commits.inc()
        for p in (schema.P_ALARM, schema.P_EVENT, schema.P_PERIODIC):
            if res.inserted[p]:
                self.stats.committed.inc(schema.PRIORITY_NAMES[p], n=res.inserted[p])
        if res.late_receptions:
            self.stats.late_receptions.inc(n=res.late_receptions)
        for d in res.drops:
            self.stats.drops.inc(rec.DROP_REASONS[d.reason], schema.PRIORITY_NAMES[d.priority], n=d.count)
            _log.warning("buffer over quota: dropped", priority=schema.PRIORITY_NAMES[d.priority], count=d.count)
        self.on_commit()
        if plans:
            await out.put(plans)
