"""Through the pipeline's real entry point (adapter -> FrameSink.submit): what is accepted, what is
rejected with which reason, and that nothing crashes it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lifeline.gateway import records as rec
from lifeline.gateway.priority import classify
from lifeline.gateway.registry import Registry
from lifeline.gateway.rules import RuleOutcome
from lifeline.gateway.testing import MemoryAdapter, TestNode, start_harness
from lifeline.protocols import frame, schema

A = TestNode(bytes.fromhex("1000000000000001"), "smoke")
B = TestNode(bytes.fromhex("1000000000000002"), "manhole_tilt")
STRANGER = TestNode(bytes.fromhex("2000000000000099"), "smoke")


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    for n in (A, B, STRANGER):
        n.fcnt = 0


async def test_accepts_verified_frames_and_signs_them(tmp_path: Path) -> None:
    h = await start_harness(tmp_path, [A, B])
    try:
        await h.hear(A.smoke(0))
        await h.hear(B.uplink(schema.K_TILT, {1: 12, 2: 0, 15: 3300}, flags=frame.FLAG_QUEUED))
        h.clock.advance(1000)
        await h.gw.forward_all()
        recs = sorted(h.records(), key=lambda r: r.device_id)
        assert [(r.device_id, r.fcnt, r.kind) for r in recs] == [(A.device_id, 1, 1), (B.device_id, 1, 2)]
        assert recs[0].fields == {1: 0, 5: 215, 15: 3000}  # decrypted (smoke is sensitive -> ENC)
        assert recs[0].data_class == schema.SENSITIVE
        assert recs[1].flags == rec.RF_QUEUED
        assert recs[0].receptions[0].radio == "lora-udp" and recs[0].receptions[0].rssi == -80
        assert h.rejects() == {}
    finally:
        await h.stop()


async def test_rejections_have_reasons_and_never_crash(tmp_path: Path) -> None:
    h = await start_harness(tmp_path, [A, B])
    try:
        good = A.smoke(0)
        await h.hear(good)
        forged = good[:-1] + bytes((good[-1] ^ 1,))
        await h.hear(A.uplink(schema.K_SMOKE, {1: 0}, fcnt=50)[:-8] + bytes(8))  # MIC zeroed
        await h.hear(forged)
        await h.hear(good)  # same bytes again, inside the dedupe window -> a duplicate reception, not a reject
        h.clock.advance(5000)
        await h.hear(good)  # outside the window -> replay
        await h.hear(A.smoke(0, fcnt=1))  # fresh bytes, old counter -> replay
        await h.hear(STRANGER.smoke(0))
        await h.hear(b"")
        await h.hear(b"\x00" * 300)
        await h.hear(b"\x21" + good[1:])  # version 2
        other_key = TestNode(A.device_id, "smoke", root_key=bytes(32))
        await h.hear(other_key.smoke(0, fcnt=99))
        down = frame.encode(A.keys, A.device_id, 77, 0, schema.C_TIME_SYNC, {1: 5}, frame.FLAG_DOWN)
        await h.hear(down)  # a downlink frame played back at the gateway
        r = h.rejects()
        assert r == {"bad_mic": 3, "replay": 2, "unknown_device": 1, "too_long": 1, "truncated": 1,
                     "bad_version": 1, "bad_direction": 1}, r
        assert h.gw.stats.duplicates.total() == 1
        assert h.gw.stats.accepted.total() == 1
        metrics = h.gw.metrics.render()
        assert 'lifeline_gateway_rejects_total{reason="bad_mic",radio="lora-udp"} 3' in metrics
    finally:
        await h.stop()


async def test_revoked_device_rejected_after_registry_reload(tmp_path: Path) -> None:
    h = await start_harness(tmp_path, [A, B])
    try:
        await h.hear(A.smoke(0))
        with Registry(h.config.gateway.registry_db) as reg:
            assert reg.revoke(A.device_id, now_ms=h.clock.now_ms())
        await h.gw.maintain()  # the periodic pass notices the registry generation changed
        await h.hear(A.smoke(0))
        await h.hear(B.uplink(schema.K_TILT, {1: 1, 2: 0}))
        assert h.rejects() == {"revoked_device": 1}
        # a new device imported while running is accepted after the next pass
        with Registry(h.config.gateway.registry_db) as reg:
            reg.import_lines([json.dumps(STRANGER.record())], now_ms=h.clock.now_ms())
        await h.gw.maintain()
        await h.hear(STRANGER.smoke(0))
        assert h.gw.stats.accepted.total() == 3
    finally:
        await h.stop()


async def test_fuzzed_garbage_is_counted_not_fatal(tmp_path: Path) -> None:
    h = await start_harness(tmp_path, [A])
    rng = random.Random(7)
    seeds = [A.smoke(0), A.uplink(schema.K_ALARM_RAISED, {1: 4, 2: 0})]
    try:
        n = 0
        for i in range(3000):
            if i % 3 == 0:
                data = rng.randbytes(rng.randrange(0, 80))
            else:
                buf = bytearray(rng.choice(seeds))
                for _ in range(rng.randrange(1, 4)):
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
                data = bytes(buf)
            await h.adapter.hear(data, h.clock.now_ms())
            n += 1
        await h.gw.flush()
        assert not h.gw.failed.is_set()
        counted = h.gw.stats.accepted.total() + h.gw.stats.rejects.total() + h.gw.stats.duplicates.total()
        assert counted == n
        assert "internal_error" not in h.rejects()
        # still healthy afterwards
        await h.hear(A.smoke(0, fcnt=10_000))
        assert h.gw.stats.accepted.total() >= 1
    finally:
        await h.stop()


async def test_priority_mapping_and_rules_hook(tmp_path: Path) -> None:
    assert classify(schema.K_SMOKE, {1: 2}) == schema.P_ALARM
    assert classify(schema.K_SMOKE, {1: 1}) == schema.P_EVENT
    assert classify(schema.K_SMOKE, {1: 0, 4: 2}) == schema.P_EVENT
    assert classify(schema.K_SMOKE, {1: 0}) == schema.P_PERIODIC
    assert classify(schema.K_TILT, {1: 0, 2: 1}) == schema.P_ALARM
    assert classify(schema.K_WATER_METER, {1: 5, 3: 1}) == schema.P_EVENT  # leak
    assert classify(schema.K_GAS_METER, {1: 5, 3: 4}) == schema.P_EVENT  # tamper
    assert classify(schema.K_GAS_METER, {1: 5, 3: 2}) == schema.P_PERIODIC  # reverse flow only
    assert classify(schema.K_FAULT, {1: 1}) == schema.P_EVENT
    assert classify(schema.K_ALARM_RAISED, {1: 1, 2: 0}) == schema.P_ALARM

    seen: list[rec.Reading] = []

    class Rules:
        def evaluate(self, reading: rec.Reading) -> RuleOutcome | None:
            seen.append(reading)
            if reading.kind == schema.K_WATER_LEVEL:
                level = reading.fields[1]
                assert isinstance(level, int)
                if level > 15000:
                    raise RuntimeError("buggy rule")
                ev = rec.GatewayEvent(rec.EV_RULES_FIRST, reading.device_id, reading.rx_ms, schema.P_ALARM,
                                      fields={1: reading.fields[1]})
                bad = rec.GatewayEvent(rec.EV_RULES_FIRST, reading.device_id, reading.rx_ms, schema.P_ALARM,
                                       fields={1: "not a wire value"})  # type: ignore[dict-item]
                return RuleOutcome(priority=schema.P_ALARM, events=(ev, bad))
            return RuleOutcome(priority=schema.P_PERIODIC)  # never lowers

    lvl = TestNode(bytes.fromhex("3000000000000001"), "water_level")
    h = await start_harness(tmp_path, [A, lvl], rules=Rules())
    try:
        await h.hear(lvl.uplink(schema.K_WATER_LEVEL, {1: 1200}))
        await h.hear(lvl.uplink(schema.K_WATER_LEVEL, {1: 16000}))  # rule raises: reading kept
        await h.hear(A.smoke(2))
        await h.hear(A.smoke(0, flags=frame.FLAG_TEST))  # TEST frames never reach rules
        h.clock.advance(1000)
        await h.gw.forward_all()
        assert len(seen) == 3
        recs = h.records()
        by = {(r.device_id, r.fcnt, r.record_type): r for r in recs}
        assert by[(lvl.device_id, 1, 0)].priority == schema.P_ALARM
        assert by[(lvl.device_id, 2, 0)].priority == schema.P_PERIODIC
        assert by[(A.device_id, 1, 0)].priority == schema.P_ALARM
        assert by[(A.device_id, 2, 0)].flags == rec.RF_TEST
        [event] = [r for r in recs if r.record_type == rec.RT_EVENT]
        assert event.kind == rec.EV_RULES_FIRST and event.fields == {1: 1200}
        assert h.gw.stats.rules_errors.total() == 2  # the raising rule and the unencodable event
    finally:
        await h.stop()


async def test_backpressure_bounded_queue(tmp_path: Path) -> None:
    """A full pipeline makes the adapter wait (submit blocks) instead of dropping."""
    h = await start_harness(tmp_path, [A], sections={"pipeline": {"queue_batches": 1, "batch_max": 4}})
    try:
        assert h.gw.pipeline.queue.maxsize == 4
        ad2 = MemoryAdapter("mem1")
        await ad2.start(h.gw.pipeline)
        for i in range(50):
            await ad2.hear(A.smoke(0, fcnt=100 + i), h.clock.now_ms())
            assert h.gw.pipeline.queue.qsize() <= 4
        await h.gw.flush()
        assert h.gw.stats.accepted.total() == 50
    finally:
        await h.stop()


async def test_bursts_count_as_frames_in_the_bounded_queue(tmp_path: Path) -> None:
    """submit_many hands frames over as one burst; the queue still counts (and bounds) frames, a full queue
    makes the next burst wait, and every frame of every burst is processed in order."""
    import asyncio

    from lifeline.gateway.ingress.base import RawFrame, Reception

    h = await start_harness(tmp_path, [A], sections={"pipeline": {"queue_batches": 1, "batch_max": 4}})
    try:
        q = h.gw.pipeline.queue
        rx = Reception("lora-udp", "udp0", h.clock.now_ms())
        bursts = [[RawFrame(A.smoke(0, fcnt=1000 + 3 * b + i), rx) for i in range(3)] for b in range(3)]
        h.gw._tasks["ingest"].cancel()  # hold the consumer: see the queue fill up
        await asyncio.gather(h.gw._tasks["ingest"], return_exceptions=True)
        await h.gw.pipeline.submit_many(bursts[0])
        await h.gw.pipeline.submit_many(bursts[1])  # 3 < 4: admitted whole, overshooting by less than a burst
        assert q.qsize() == 6 and q.full()
        third = asyncio.create_task(h.gw.pipeline.submit_many(bursts[2]))
        await asyncio.sleep(0)
        assert not third.done()  # back-pressure: waits for room
        await h.gw.pipeline.submit_many([])  # nothing to queue: returns at once, even when full
        first = q.get_nowait()
        assert first == bursts[0] and q.qsize() == 3
        await asyncio.wait_for(third, 5)
        assert q.qsize() == 6
        taken = [first, q.get_nowait(), q.get_nowait()]
        frames = [f for burst in taken if isinstance(burst, list) for f in burst]
        items = h.gw.pipeline.process(frames)
        assert [r.fcnt for r in items if isinstance(r, rec.Reading)] == list(range(1000, 1009))
        assert q.qsize() == 0 and q.empty()
    finally:
        await h.stop()


async def test_submit_durable_returns_after_commit(tmp_path: Path) -> None:
    """For adapters whose transport acknowledges (NB-IoT PUBACK): the outcome is final when it returns."""
    import sqlite3

    from lifeline.gateway.ingress.base import RawFrame, Reception

    h = await start_harness(tmp_path, [A])
    try:
        rx = Reception("nbiot", "nb0", h.clock.now_ms())
        data = A.smoke(0)
        assert await h.gw.pipeline.submit_durable(RawFrame(data, rx)) == "accepted"
        with sqlite3.connect(h.config.gateway.buffer_db) as c:  # another connection sees it: committed
            assert c.execute("SELECT count(*) FROM readings").fetchone()[0] == 1
            assert c.execute("SELECT up FROM counters").fetchone()[0] == 1
        assert await h.gw.pipeline.submit_durable(RawFrame(data, rx)) == "duplicate"
        assert await h.gw.pipeline.submit_durable(RawFrame(b"\x00", rx)) == "truncated"
        assert await h.gw.pipeline.submit_durable(RawFrame(STRANGER.smoke(0), rx)) == "unknown_device"
    finally:
        await h.stop()
