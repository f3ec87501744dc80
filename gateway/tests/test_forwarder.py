"""Forwarder lanes and batching, driven step by step with a manual clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.gateway import records as rec
from lifeline.gateway.testing import MemoryPublisher, TestNode, start_harness
from lifeline.protocols import schema


def _nodes(n: int) -> list[TestNode]:
    return [TestNode(bytes.fromhex("80000000000000%02x" % i)) for i in range(n)]


async def test_alarms_first_then_live_batches_by_size_or_time(tmp_path: Path) -> None:
    nodes = _nodes(4)
    h = await start_harness(tmp_path, nodes, sections={"forwarder": {"batch_max": 3, "batch_ms": 50},
                                                       "dedupe": {"collect_ms": 100}})
    fw = h.gw.forwarder
    try:
        for n in nodes[:2]:
            await h.hear(n.smoke(0))
        await h.hear(nodes[3].smoke(2))  # an alarm, heard last
        assert await fw.step() == 0
        await fw.wait_inflight()
        [b0] = h.batches()
        assert [r.priority for r in b0.records] == [schema.P_ALARM] and b0.lane == 0
        # two periodic readings: eligible after collect_ms, sent batch_ms later (fewer than batch_max)
        assert await fw.step() == pytest.approx(0.15)
        h.clock.advance(100)
        assert await fw.step() == pytest.approx(0.05)
        h.clock.advance(50)
        assert await fw.step() == 0
        await fw.wait_inflight()
        assert [len(b.records) for b in h.batches()] == [1, 2]
        # three eligible at once: a full batch goes without the batch_ms wait
        for n in nodes[:3]:
            await h.hear(n.smoke(0))
        h.clock.advance(100)
        assert await fw.step() == 0
        await fw.wait_inflight()
        assert [len(b.records) for b in h.batches()] == [1, 2, 3]
        assert all(t.endswith("/up/live") for t, _ in h.pub.published)
        assert await fw.step() is None  # nothing pending: wait for a commit to wake it
    finally:
        await h.stop()


async def test_old_records_drain_on_the_backlog_lane_flagged_backfilled(tmp_path: Path) -> None:
    nodes = _nodes(2)
    h = await start_harness(tmp_path, nodes, sections={"forwarder": {"backfill_after_s": 30,
                                                                     "backlog_batch_max": 100}})
    try:
        for _ in range(5):
            await h.hear(nodes[0].smoke(0))
        h.clock.advance(31_000)
        await h.hear(nodes[1].smoke(0))
        await h.hear(nodes[1].smoke(2))
        h.clock.advance(1000)
        await h.gw.forward_all()
        lanes = [(b.lane, [(r.device_id[-1], r.fcnt, r.flags) for r in b.records]) for b in h.batches()]
        assert lanes[0] == (0, [(1, 2, 0)])  # the alarm, live
        assert (0, [(1, 1, 0)]) in lanes  # fresh periodic, live
        assert (1, [(0, i, rec.RF_BACKFILLED) for i in range(1, 6)]) in lanes  # per-device order kept
        topics = sorted(t.rsplit("/", 1)[1] for t, _ in h.pub.published)
        assert topics == ["backlog", "live", "live"]
    finally:
        await h.stop()


async def test_records_buffered_during_an_outage_go_to_backlog(tmp_path: Path) -> None:
    n = _nodes(1)[0]
    pub = MemoryPublisher()
    h = await start_harness(tmp_path, [n], publisher=pub)
    fw = h.gw.forwarder
    try:
        pub.online = False
        await h.hear(n.smoke(0))
        await h.hear(n.smoke(2))
        h.clock.advance(1000)
        assert await fw.step() == pytest.approx(0.2)  # polls while the uplink is down
        pub.online = True
        h.clock.advance(5000)
        assert await fw.step() == 0  # notices the uplink is back: what is buffered now is backlog
        await h.hear(n.smoke(0))
        h.clock.advance(1000)
        await h.gw.forward_all()
        got = [(b.lane, [(r.fcnt, r.flags) for r in b.records]) for b in h.batches()]
        assert got[0] == (1, [(2, rec.RF_BACKFILLED)])  # the alarm from the outage still goes first
        assert (1, [(1, rec.RF_BACKFILLED)]) in got
        assert (0, [(3, 0)]) in got
    finally:
        await h.stop()


async def test_the_outage_ends_when_the_uplink_connected_not_when_the_loop_noticed(tmp_path: Path) -> None:
    """A reading committed after the reconnect but before the forwarder's next poll is live, not backlog."""
    n = _nodes(1)[0]
    pub = MemoryPublisher()
    h = await start_harness(tmp_path, [n], publisher=pub)
    fw = h.gw.forwarder
    try:
        pub.online = False
        await h.hear(n.smoke(0))  # during the outage
        h.clock.advance(1000)
        assert await fw.step() == pytest.approx(0.2)
        pub.online = True
        pub.connected_since_ms = h.clock.now_ms()  # type: ignore[attr-defined]
        h.clock.advance(150)
        await h.hear(n.smoke(0))  # after the reconnect, before the forwarder polls again
        h.clock.advance(5000)
        await h.gw.forward_all()
        got = sorted((r.fcnt, b.lane, r.flags) for b in h.batches() for r in b.records)
        assert got == [(1, 1, rec.RF_BACKFILLED), (2, 0, 0)]
    finally:
        await h.stop()


async def test_backlog_never_takes_the_last_inflight_slot(tmp_path: Path) -> None:
    nodes = _nodes(1)
    pub = MemoryPublisher()
    h = await start_harness(tmp_path, nodes, publisher=pub,
                            sections={"forwarder": {"max_inflight": 2, "backlog_batch_max": 1}})
    fw = h.gw.forwarder
    try:
        for _ in range(3):
            await h.hear(nodes[0].smoke(0))
        h.clock.advance(60_000)  # all three are old now
        pub.hold = True
        assert await fw.step() == 0
        assert fw.inflight == 1
        assert await fw.step() is None  # a second backlog batch would use the slot kept for live data
        await h.hear(nodes[0].smoke(2))
        assert await fw.step() == 0  # the alarm takes it
        assert fw.inflight == 2
        pub.release()
        await fw.wait_inflight()
        await h.gw.forward_all()
        by_seq = sorted(h.batches(), key=lambda b: b.seq)
        assert [b.seq for b in by_seq] == [0, 1, 2, 3]
        assert [b.lane for b in by_seq] == [1, 0, 1, 1]
    finally:
        await h.stop()


async def test_new_alarm_is_signed_in_its_own_commit(tmp_path: Path) -> None:
    """Alarm fast path: one transaction stores the alarm and puts its signed batch in the outbox."""
    import sqlite3

    nodes = _nodes(2)
    pub = MemoryPublisher()
    h = await start_harness(tmp_path, nodes, publisher=pub, fast_alarms=True)
    fw = h.gw.forwarder
    try:
        await h.hear(nodes[0].smoke(0))
        assert fw.inflight == 0  # periodic readings go the normal way
        pub.hold = True
        await h.hear(nodes[1].smoke(2))
        assert fw.inflight == 1  # launched by the commit stage, no forwarder step
        assert h.gw.stats.commits.total() == 2
        with sqlite3.connect(h.config.gateway.buffer_db) as c:
            assert c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
            assert c.execute("SELECT count(*) FROM readings WHERE batch IS NULL").fetchone()[0] == 1
        pub.release()
        await fw.wait_inflight()
        [b] = h.batches()
        assert b.lane == 0 and [(r.device_id, r.priority) for r in b.records] == [(nodes[1].device_id, 0)]
        # while the uplink is down, alarms wait for the forwarder (and go first when it is back)
        pub.online = False
        assert await fw.step() == pytest.approx(0.2)
        await h.hear(nodes[1].smoke(2))
        assert fw.inflight == 0
        pub.online = True
        h.clock.advance(1000)
        await h.gw.forward_all()
        assert [b.records[0].priority for b in h.batches()] == [0, 0, 2]
        chain = [b.seq for b in h.batches()]
        assert chain == [0, 1, 2]
    finally:
        await h.stop()
