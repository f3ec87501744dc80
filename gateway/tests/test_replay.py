"""Replay protection: counters persisted in the reading's own transaction, exact across restart/crash."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lifeline.gateway.replay import ReplayGuard
from lifeline.gateway.statedb import Transaction, connect
from lifeline.gateway.testing import TestNode, start_harness
from lifeline.protocols import frame

DEV = b"\x07" * 8


def test_guard_semantics() -> None:
    g = ReplayGuard()
    assert g.last_up(DEV, 0) == -1
    assert g.accept(DEV, 0, 0)
    assert not g.accept(DEV, 0, 0)
    assert g.accept(DEV, 0, 1_000_000)  # any jump forward
    assert not g.accept(DEV, 0, 999_999)
    assert g.alloc_down(DEV, 0) == 1 and g.alloc_down(DEV, 0) == 2
    # a re-keyed device (new epoch) counts afresh, both directions
    assert g.accept(DEV, 1, 3) and g.last_down(DEV, 1) == 0


def test_persist_writes_only_committed_values(tmp_path: Path) -> None:
    conn = connect(tmp_path / "s.db")
    g = ReplayGuard()
    g.load(conn)
    assert g.accept(DEV, 0, 5) and g.accept(DEV, 0, 6)
    d = g.alloc_down(DEV, 0)
    with Transaction(conn):
        g.persist(conn, [(DEV, 0, 5)])  # only fcnt 5's reading is in this transaction
    assert conn.execute("SELECT epoch, up, down FROM counters").fetchall() == [(0, 5, d)]
    with Transaction(conn):
        g.persist(conn, [(DEV, 0, 4)])  # never moves backwards
    assert conn.execute("SELECT up FROM counters").fetchone()[0] == 5
    # a transaction that rolls back leaves nothing behind
    try:
        with Transaction(conn):
            g.persist(conn, [(DEV, 0, 6)])
            raise RuntimeError("disk full")
    except RuntimeError:
        pass
    g2 = ReplayGuard()
    g2.load(conn)
    assert g2.last_up(DEV, 0) == 5 and g2.last_down(DEV, 0) == 1
    assert g2.accept(DEV, 0, 6)  # fcnt 6 was never committed, so it is still acceptable


async def test_counters_survive_restart(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("6000000000000001"))
    h = await start_harness(tmp_path, [n])
    await h.hear(n.smoke(0, fcnt=10))
    await h.hear(n.smoke(2, fcnt=11, flags=frame.FLAG_ACK_REQ))
    [ack] = h.adapter.downlinks
    assert n.decode_downlink(ack.payload).header.fcnt == 1
    await h.stop()

    h2 = await start_harness(tmp_path, [n], provision_nodes=False, clock=h.clock)
    try:
        await h2.hear(n.smoke(0, fcnt=11))  # replayed after the restart
        await h2.hear(n.smoke(0, fcnt=3))
        assert h2.rejects() == {"replay": 2}
        await h2.hear(n.smoke(1, fcnt=500, flags=frame.FLAG_ACK_REQ))  # a jump forward is fine
        assert h2.gw.stats.accepted.total() == 1
        [ack2] = h2.adapter.downlinks
        assert n.decode_downlink(ack2.payload).header.fcnt == 2  # downlink counter continued, never reused
    finally:
        await h2.stop()


async def test_crash_loses_neither_an_advance_nor_admits_twice(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("6000000000000002"))
    h = await start_harness(tmp_path, [n])
    await h.hear(n.smoke(0, fcnt=1))  # committed
    # fcnt 2 is accepted in memory but the process dies before its group commits
    accepted = h.gw.replay.accept(n.device_id, 0, 2)
    assert accepted
    await h.crash()
    with sqlite3.connect(h.config.gateway.buffer_db) as c:
        assert c.execute("SELECT up FROM counters WHERE device=?", (n.device_id,)).fetchone()[0] == 1

    h2 = await start_harness(tmp_path, [n], provision_nodes=False, clock=h.clock)
    try:
        await h2.hear(n.smoke(0, fcnt=1))
        await h2.hear(n.smoke(0, fcnt=2))  # never committed before the crash: the node's retry is accepted
        assert h2.rejects() == {"replay": 1}
        assert h2.gw.stats.accepted.total() == 1
    finally:
        await h2.stop()
