"""Dedupe: one reading per (device, fcnt), every reception attached, alarms never held back."""

from __future__ import annotations

from pathlib import Path

from lifeline.gateway import records as rec
from lifeline.gateway.dedupe import Deduper
from lifeline.gateway.testing import MemoryAdapter, TestNode, start_harness
from lifeline.protocols import frame, schema


def _node(i: int = 1, kind: str = "smoke") -> TestNode:
    return TestNode(bytes.fromhex("40000000000000%02x" % i), kind)


def test_deduper_window_and_bound() -> None:
    d = Deduper(window_ms=2000, per_device=2)
    dev = b"\x01" * 8
    d.remember(dev, 5, 1000, b"x", 11)
    assert d.match(dev, 5, 1000) is not None
    assert d.match(dev, 5, 3000) is not None  # exactly at the window edge
    assert d.match(dev, 5, 3001) is None
    assert d.match(dev, 6, 1500) is None
    d.remember(dev, 6, 1100, b"y", 12)
    d.remember(dev, 7, 1200, b"z", 13)
    assert d.match(dev, 5, 1300) is None  # only the last two frames per device are remembered
    m = d.match(dev, 7, 1300)
    assert m is not None and m.reading_id == 13
    assert len(d) == 1


async def test_copies_on_several_radios_become_one_record(tmp_path: Path) -> None:
    n = _node()
    lora, ble = MemoryAdapter("lora0", "lora-udp"), MemoryAdapter("ble0", "ble")
    h = await start_harness(tmp_path, [n], adapters=[lora, ble])
    try:
        data = n.smoke(0)
        await h.hear(data, lora, rssi=-101)
        h.clock.advance(40)
        await h.hear(data, ble, rssi=-60)  # committed separately, attached to the stored row
        h.clock.advance(60)
        await h.hear(data, lora, rssi=-99)  # heard again (e.g. a second forwarder)
        await h.gw.forward_all()
        assert h.pub.published == []  # periodic readings wait collect_ms for their other receptions
        h.clock.advance(200)
        await h.gw.forward_all()
        [r] = h.records()
        assert (r.fcnt, r.record_type) == (1, rec.RT_READING)
        assert [(x.radio, x.adapter, x.rssi) for x in r.receptions] == [
            ("lora-udp", "lora0", -101), ("ble", "ble0", -60), ("lora-udp", "lora0", -99)]
        assert r.rx_ms == r.receptions[0].rx_ms
        assert h.gw.stats.duplicates.total() == 2 and h.rejects() == {}
    finally:
        await h.stop()


async def test_copy_in_the_same_group_is_merged_before_commit(tmp_path: Path) -> None:
    n = _node()
    lora, ble = MemoryAdapter("lora0", "lora-udp"), MemoryAdapter("ble0", "ble")
    h = await start_harness(tmp_path, [n], adapters=[lora, ble])
    try:
        data = n.smoke(0)
        await h.hear(data, lora, flush=False)
        await h.hear(data, ble, flush=True)
        h.clock.advance(1000)
        await h.gw.forward_all()
        [r] = h.records()
        assert [x.adapter for x in r.receptions] == ["lora0", "ble0"]
    finally:
        await h.stop()


async def test_alarm_goes_at_once_and_late_copies_follow_as_reception_events(tmp_path: Path) -> None:
    n = _node()
    lora, ble = MemoryAdapter("lora0", "lora-udp"), MemoryAdapter("ble0", "ble")
    h = await start_harness(tmp_path, [n], adapters=[lora, ble])
    try:
        alarm = n.uplink(schema.K_ALARM_RAISED, {1: 7, 2: 0}, flags=frame.FLAG_ACK_REQ)
        await h.hear(alarm, lora)
        assert await h.gw.forward_all() == 1  # no clock advance: alarms are not held for collection
        [first] = h.batches()
        assert first.lane == 0 and first.records[0].priority == schema.P_ALARM
        h.clock.advance(30)
        await h.hear(alarm, ble, rssi=-70)
        await h.gw.forward_all()
        [_, second] = h.batches()
        [ev] = second.records
        assert ev.record_type == rec.RT_EVENT and ev.kind == rec.EV_RECEPTIONS
        assert (ev.device_id, ev.fcnt) == (n.device_id, 1)
        assert [(x.adapter, x.rssi) for x in ev.receptions] == [("ble0", -70)]
        assert ev.priority == schema.P_ALARM
        assert len(lora.downlinks) == 1 and ble.downlinks == []  # one ACK, via the radio that heard it first
        assert h.gw.stats.late_receptions.total() == 1
    finally:
        await h.stop()


async def test_after_the_window_the_same_counter_is_a_replay(tmp_path: Path) -> None:
    n = _node()
    h = await start_harness(tmp_path, [n], sections={"dedupe": {"window_ms": 500, "collect_ms": 100}})
    try:
        data = n.smoke(0)
        await h.hear(data)
        h.clock.advance(500)
        await h.hear(data)
        assert h.gw.stats.duplicates.total() == 1
        h.clock.advance(1)
        await h.hear(data)
        assert h.rejects() == {"replay": 1}
    finally:
        await h.stop()


async def test_same_counter_other_content_is_counter_reuse(tmp_path: Path) -> None:
    n = _node()
    h = await start_harness(tmp_path, [n])
    try:
        await h.hear(n.smoke(0, fcnt=5))
        await h.hear(n.smoke(1, fcnt=5))  # genuine MIC, different body, same counter
        forged = bytearray(n.smoke(1, fcnt=5))
        forged[-1] ^= 0xFF
        await h.hear(bytes(forged))
        assert h.rejects() == {"counter_reuse": 1, "bad_mic": 1}
    finally:
        await h.stop()


async def test_receptions_per_reading_are_bounded(tmp_path: Path) -> None:
    n = _node()
    h = await start_harness(tmp_path, [n])
    try:
        data = n.smoke(0)
        for _ in range(20):
            await h.hear(data, flush=False)
        await h.gw.flush()
        assert h.gw.stats.duplicates.total() == 15
        assert h.rejects() == {"too_many_receptions": 4}
        h.clock.advance(1000)
        await h.gw.forward_all()
        [r] = h.records()
        assert len(r.receptions) == 16
    finally:
        await h.stop()


def test_deduper_remembers_the_last_per_device_frames_of_each_device() -> None:
    for per_device in (1, 2, 3):
        d = Deduper(window_ms=10_000, per_device=per_device)
        a, b = b"\x01" * 8, b"\x02" * 8
        for i in range(5):
            d.remember(a, i, 1000 + i, bytes((i,)), 100 + i, priority=i % 3)
        d.remember(b, 0, 1000, b"b", 200)
        assert [i for i in range(5) if d.match(a, i, 2000) is not None] == list(range(5 - per_device, 5))
        m = d.match(a, 4, 2000)
        assert m is not None and (m.fcnt, m.rx_ms, m.payload, m.reading_id, m.priority, m.count) == (
            4, 1004, b"\x04", 104, 1, 1)
        mb = d.match(b, 0, 2000)
        assert mb is not None and mb.reading_id == 200 and len(d) == 2
        d.forget(a)
        assert d.match(a, 4, 2000) is None and len(d) == 1


def test_deduper_same_counter_remembered_twice_matches_the_first_copy() -> None:
    d = Deduper(window_ms=1000, per_device=2)
    dev = b"\x03" * 8
    d.remember(dev, 1, 1000, b"first", 1)
    d.remember(dev, 1, 1500, b"again", 2)  # a re-key confirm re-sent after a lost ACK is accepted again
    m = d.match(dev, 1, 1600)
    assert m is not None and (m.reading_id, m.payload) == (1, b"first")
    assert d.match(dev, 1, 2001) is None  # the first copy's window is over
    assert d.match(dev, 1, 999) is m  # heard "before" the first copy (clock step): still a duplicate
