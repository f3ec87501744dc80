"""Durable buffer: priority order, per-device order, TTL, quota policy, ack-gated deletion, and an outbox
that survives a crash and is republished byte for byte."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.gateway import buffer as buffer_module
from lifeline.gateway import records as rec
from lifeline.gateway.buffer import (
    Buffer,
    Drop,
    add_receptions,
    decode_record,
    encode_reading,
    wire_reception,
    with_flags,
)
from lifeline.gateway.config import BufferConfig
from lifeline.gateway.ingress.base import Reception
from lifeline.gateway.statedb import Transaction, connect
from lifeline.gateway.testing import MemoryPublisher, TestNode, start_harness
from lifeline.protocols import batch, fastpath, schema

P_A, P_E, P_P = schema.P_ALARM, schema.P_EVENT, schema.P_PERIODIC
DAY_MS = 86_400_000


def _reading(buf: Buffer, prio: int, rx_ms: int, dev: int = 1, fcnt: int = 1, pad: int = 0) -> rec.Reading:
    fields: dict[int, int | bytes] = {1: 0} if not pad else {1: 0, 2: bytes(pad)}
    return rec.Reading(id=buf.allocate_id(), device_id=bytes([0] * 7 + [dev]), fcnt=fcnt, node_time=1, kind=1,
                       fields=fields, data_class=2, priority=prio, flags=0, frame_flags=0,
                       receptions=(Reception("lora-udp", "lora0", rx_ms, -90, 50),))


def _open(path: Path, quota_mb: int = 64, ttl_s: tuple[int, int, int] = (3000, 2000, 1000)) -> tuple[
        sqlite3.Connection, Buffer]:
    conn = connect(path)
    buf = Buffer(BufferConfig(quota_mb=quota_mb, ttl_s=ttl_s, group_commit_max=1000, maintenance_s=1))
    buf.open(conn)
    return conn, buf


def _write(conn: sqlite3.Connection, buf: Buffer, items: list[rec.Reading], now: int = 0) -> list[Drop]:
    with Transaction(conn):
        res = buf.write_group(conn, items, now)
    return list(res.drops)


def _pending(conn: sqlite3.Connection, buf: Buffer, prio: int) -> list[batch.BatchRecord]:
    return [decode_record(r.record) for r in buf.select_pending(conn, prio, -(1 << 60), 1 << 60, 1 << 30)]


def test_record_encoding_is_the_wire_record_and_flags_patch_in_place(tmp_path: Path) -> None:
    _, buf = _open(tmp_path / "b.db")
    r = _reading(buf, P_P, 1000)
    blob = encode_reading(r)
    br = decode_record(blob)
    assert batch.encode_record(br) == blob
    patched = with_flags(blob, rec.RF_BACKFILLED)
    assert decode_record(patched).flags == rec.RF_BACKFILLED
    assert batch.encode_record(decode_record(patched)) == patched
    assert with_flags(blob, 0) is blob
    with pytest.raises(ValueError):
        with_flags(b"\x00" * 10, 1)
    more = add_receptions(blob, [Reception("ble", "ble0", 1001, -40, None)])
    assert [x.adapter for x in decode_record(more).receptions] == ["lora0", "ble0"]


def test_priority_then_age_order_and_counts_survive_reopen(tmp_path: Path) -> None:
    conn, buf = _open(tmp_path / "b.db")
    items = [_reading(buf, P_P, 100, dev=1, fcnt=1), _reading(buf, P_E, 200, dev=2, fcnt=1),
             _reading(buf, P_P, 300, dev=1, fcnt=2), _reading(buf, P_A, 400, dev=1, fcnt=3),
             _reading(buf, P_P, 300, dev=2, fcnt=2)]
    _write(conn, buf, items)
    assert buf.pending == [1, 1, 3]
    order = [(r.device_id[-1], r.fcnt) for p in (P_A, P_E, P_P) for r in _pending(conn, buf, p)]
    assert order == [(1, 3), (2, 1), (1, 1), (1, 2), (2, 2)]
    conn.close()
    conn, buf2 = _open(tmp_path / "b.db")
    assert buf2.pending == [1, 1, 3]
    assert buf2.allocate_id() == items[-1].id + 1


def test_ttl_per_class_drops_are_counted_and_reported(tmp_path: Path) -> None:
    conn, buf = _open(tmp_path / "b.db", ttl_s=(300, 200, 100))
    now = 1_000_000
    _write(conn, buf, [_reading(buf, P_A, now - 250_000), _reading(buf, P_A, now - 350_000),
                       _reading(buf, P_E, now - 150_000), _reading(buf, P_E, now - 250_000),
                       _reading(buf, P_P, now - 50_000), _reading(buf, P_P, now - 150_000),
                       _reading(buf, P_P, now - 160_000)])
    with Transaction(conn):
        drops = buf.sweep_ttl(conn, now)
    assert sorted((d.priority, d.count, d.oldest_rx_ms) for d in drops) == [
        (P_A, 1, now - 350_000), (P_E, 1, now - 250_000), (P_P, 2, now - 160_000)]
    assert all(d.reason == rec.DROP_TTL for d in drops)
    assert [r.rx_ms for r in _pending(conn, buf, P_P)] == [now - 50_000]
    events = [r for r in _pending(conn, buf, P_E) if r.record_type == rec.RT_EVENT]
    assert len(events) == 3 and all(e.kind == rec.EV_BUFFER_DROP for e in events)
    assert {e.fields[rec.EVF_PRIORITY]: e.fields[rec.EVF_COUNT] for e in events} == {0: 1, 1: 1, 2: 2}
    # the platform keeps one record per (gateway, device, fcnt): every drop report needs its own fcnt
    assert len({e.fcnt for e in events}) == 3 and all(e.fcnt >= rec.EV_FCNT_BASE for e in events)


def test_quota_drops_oldest_periodic_then_events_then_alarms(tmp_path: Path) -> None:
    conn, buf = _open(tmp_path / "b.db", quota_mb=1)
    t = 0

    def group(prio: int, n: int) -> list[Drop]:
        nonlocal t
        items = []
        for _ in range(n):
            t += 1
            items.append(_reading(buf, prio, t, pad=300))
        drops = _write(conn, buf, items, now=t)
        assert buf.used_bytes(conn) <= buf.quota_bytes
        return drops

    assert group(P_A, 700) == [] and group(P_E, 700) == []
    drops: list[Drop] = []
    for _ in range(10):
        drops += group(P_P, 200)
    assert drops and {d.priority for d in drops} == {P_P}  # periodic go first
    alarms, events = len(_pending(conn, buf, P_A)), len(_pending(conn, buf, P_E))
    assert alarms == 700 and events >= 700
    remaining = [r.rx_ms for r in _pending(conn, buf, P_P)]
    assert remaining == sorted(remaining) and remaining[-1] == t  # the newest survive
    assert len(remaining) < 2000
    # more events: the remaining periodic go, then the oldest events; alarms are untouched
    for _ in range(12):
        drops += group(P_E, 200)
    assert _pending(conn, buf, P_P) == []
    assert len(_pending(conn, buf, P_A)) == 700
    ev = [r.rx_ms for r in _pending(conn, buf, P_E) if r.record_type == rec.RT_READING]
    assert ev[-1] == t and ev[0] > 1400  # the first events (rx 701..1400) were dropped
    # only alarms left to give: the oldest alarms go last of all
    for _ in range(10):
        drops += group(P_A, 200)
    al = [r.rx_ms for r in _pending(conn, buf, P_A)]
    assert al[-1] == t and al[0] > 1
    reasons = {(d.reason, d.priority) for d in drops}
    assert reasons == {(rec.DROP_QUOTA, P_P), (rec.DROP_QUOTA, P_E), (rec.DROP_QUOTA, P_A)}
    assert buf.pending[P_A] == len(al)


async def test_rows_are_deleted_only_after_puback(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("5000000000000001"))
    pub = MemoryPublisher()
    h = await start_harness(tmp_path, [n], publisher=pub)
    db = h.config.gateway.buffer_db
    try:
        pub.online = False
        for _ in range(5):
            await h.hear(n.smoke(0))
        h.clock.advance(1000)
        await h.gw.forward_all()
        assert pub.published == [] and h.gw.buffer.pending[P_P] == 5  # nothing signed while offline
        pub.online = True
        pub.hold = True  # broker got it, PUBACK not yet
        h.clock.advance(1000)
        assert await h.gw.forwarder.step() == 0
        await h.gw.flush()
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT count(*) FROM readings WHERE batch IS NOT NULL").fetchone()[0] == 5
            assert c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 1
        pub.release()
        await h.gw.forwarder.wait_inflight()
        with sqlite3.connect(db) as c:
            assert c.execute("SELECT count(*) FROM readings").fetchone()[0] == 0
            assert c.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        [b] = h.batches()
        assert b.lane == 1 and all(r.flags & rec.RF_BACKFILLED for r in b.records)  # buffered during the outage
    finally:
        await h.stop()


class RecordingPublisher(MemoryPublisher):
    """Remembers every attempt, acknowledged or not."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        self.attempts.append((topic, payload))
        await super().publish(topic, payload)


async def test_outbox_republished_with_same_bytes_after_crash(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("5000000000000002"))
    pub = RecordingPublisher()
    pub.hold = True
    h = await start_harness(tmp_path, [n], publisher=pub)
    for _ in range(3):
        await h.hear(n.smoke(0))
    await h.hear(n.smoke(2))
    assert await h.gw.forwarder.step() == 0  # the alarm batch: signed, committed, published, no PUBACK
    h.clock.advance(1000)
    assert await h.gw.forwarder.step() == 0  # the periodic batch
    await h.gw.flush()
    first_attempts = list(pub.attempts)
    assert len(first_attempts) == 2
    await h.crash()  # kill -9 before any PUBACK

    pub2 = RecordingPublisher()
    h2 = await start_harness(tmp_path, [n], publisher=pub2, provision_nodes=False, clock=h.clock)
    try:
        assert h2.gw.buffer.outbox_count == 2
        await h2.gw.forward_all()
        assert pub2.attempts[:2] == first_attempts  # same topics, same bytes, same seqs
        await h2.hear(n.smoke(0))
        h2.clock.advance(1000)
        await h2.gw.forward_all()
        batches = h2.batches()
        assert [b.seq for b in batches] == [0, 1, 2]
        chain = batch.ChainTracker()
        for b in batches:
            assert chain.add_batch(b).ok
        assert chain.intact
        assert batches[2].prev_hash == hashlib.sha256(pub2.attempts[1][1]).digest()
        with sqlite3.connect(h2.config.gateway.buffer_db) as c:
            assert c.execute("SELECT count(*) FROM readings").fetchone()[0] == 0
        assert h2.gw.stats.republished.total() == 2
    finally:
        await h2.stop()


async def test_failed_publish_is_retried_from_the_outbox(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("5000000000000003"))
    pub = RecordingPublisher()
    h = await start_harness(tmp_path, [n], publisher=pub,
                            sections={"forwarder": {"retry_initial_ms": 1000, "retry_max_ms": 4000}})
    try:
        await h.hear(n.smoke(2))
        pub.hold = True
        assert await h.gw.forwarder.step() == 0
        await asyncio.sleep(0)
        pub.online = False  # connection lost before the PUBACK
        pub.release()
        await h.gw.forwarder.wait_inflight()
        assert pub.published == [] and h.gw.forwarder.retry_pending == 1
        pub.online = True
        delay = await h.gw.forwarder.step()
        assert delay == pytest.approx(1.0)  # backoff before the retry
        h.clock.advance(1000)
        await h.gw.forward_all()
        assert [p for _, p in pub.published] == [pub.attempts[0][1]]
        assert h.gw.stats.publish_failures.total() == 1
        [b] = h.batches()
        assert b.seq == 0
    finally:
        await h.stop()


def test_buffer_refuses_another_gateways_chain(tmp_path: Path) -> None:
    conn, buf = _open(tmp_path / "b.db")
    conn.execute("INSERT INTO chain(id, gateway_id, next_seq, prev_hash) VALUES (0, 'gw-a', 5, ?)", (bytes(32),))
    assert buf.load_chain(conn, "gw-a") == (5, bytes(32))
    from lifeline.gateway.buffer import BufferError

    with pytest.raises(BufferError, match="gw-a"):
        buf.load_chain(conn, "gw-b")


_RX_VALUES = st.none() | st.integers(-(2**31), 2**31 - 1) | st.sampled_from([-24, -25, 23, 24, 255, 256, -257, 65536])
_U64 = 2**64 - 1


@settings(max_examples=600, deadline=None)
@given(dev=st.binary(min_size=8, max_size=8), fcnt=st.integers(0, 2**32 - 1), node_time=st.integers(0, 2**32 - 1),
       kind=st.integers(0, 255), data_class=st.integers(0, 3), prio=st.integers(0, 2), flags=st.integers(0, 7),
       fields=st.dictionaries(st.integers(0, 70_000), st.integers(-(2**64), _U64) | st.binary(max_size=30), max_size=6),
       rxs=st.lists(st.tuples(st.sampled_from(["lora-udp", "ble", "x" * 30]), st.sampled_from(["lora0", "n"]),
                              st.integers(0, _U64), _RX_VALUES, _RX_VALUES), min_size=1, max_size=3),
       n_extra=st.integers(0, 2))
def test_fast_reading_encoder_gives_the_reference_bytes(dev: bytes, fcnt: int, node_time: int, kind: int,
                                                        data_class: int, prio: int, flags: int,
                                                        fields: dict[int, int | bytes],
                                                        rxs: list[tuple[str, str, int, int | None, int | None]],
                                                        n_extra: int) -> None:
    """encode_reading's template path and the generic batch.encode_record give the same bytes, whether the
    fast path takes the record or hands it on (big keys, many receptions)."""
    receptions = tuple(Reception(*x) for x in rxs)
    r = rec.Reading(id=1, device_id=dev, fcnt=fcnt, node_time=node_time, kind=kind, fields=fields,
                    data_class=data_class, priority=prio, flags=flags, frame_flags=0, receptions=receptions[:1])
    extra = receptions[1:1 + n_extra]
    ref = batch.encode_record(batch.BatchRecord(
        dev, fcnt, node_time, r.rx_ms, kind, fields, data_class, tuple(wire_reception(x) for x in r.receptions + extra),
        flags, rec.RT_READING, prio))
    assert encode_reading(r, extra) == ref
    fast = buffer_module._encode_reading_fast(r, extra)
    assert fast is None or fast == ref


@settings(max_examples=300, deadline=None)
@given(level=st.integers(0, 20_000), rate=st.integers(-20_000, 20_000), batt=st.integers(0, 4500),
       fcnt=st.integers(1, 2**32 - 1), n_extra=st.integers(0, 2))
def test_reading_from_a_decoded_frame_encodes_to_the_reference_bytes(level: int, rate: int, batt: int, fcnt: int,
                                                                     n_extra: int) -> None:
    """A reading whose fields came from the frame fast path (a WireMap: the node's own CBOR of the map is
    reused, not re-encoded) gives exactly the generic encoder's record bytes."""
    node = TestNode(bytes.fromhex("4c4c000000000007"), kind="water_level")
    fields: dict[int, int | bytes] = {1: level, 2: rate, 15: batt}
    decoded = fastpath.decode(node.uplink(schema.K_WATER_LEVEL, fields, fcnt=fcnt), node.keys)
    assert type(decoded.fields) is fastpath.WireMap
    rxs = tuple(Reception("lora-udp", f"gw{i}", 1_763_783_000_000 + i, -90 - i, 50 - i) for i in range(3))
    r = rec.Reading(id=1, device_id=node.device_id, fcnt=fcnt, node_time=100_000, kind=schema.K_WATER_LEVEL,
                    fields=decoded.fields, data_class=1, priority=2, flags=0, frame_flags=0, receptions=rxs[:1])
    extra = rxs[1:1 + n_extra]
    ref = batch.encode_record(batch.BatchRecord(
        node.device_id, fcnt, 100_000, r.rx_ms, schema.K_WATER_LEVEL, fields, 1,
        tuple(wire_reception(x) for x in r.receptions + extra), 0, rec.RT_READING, 2))
    assert buffer_module._encode_reading_fast(r, extra) == ref
    assert decode_record(ref).fields == fields


def test_fast_reading_encoder_takes_the_plain_shape_and_hands_on_the_rest() -> None:
    rx = Reception("lora-udp", "lora0", 1_763_783_000_000, -90, 50)
    plain = rec.Reading(id=1, device_id=bytes(8), fcnt=7, node_time=200_000_000, kind=3, fields={1: 300, 2: 12},
                        data_class=1, priority=2, flags=0, frame_flags=0, receptions=(rx,))
    assert buffer_module._encode_reading_fast(plain, ()) is not None
    odd = [plain._replace(fields={1: True}), plain._replace(fields={70_000: 1}),
           plain._replace(device_id=bytes(7)), plain._replace(flags=8),
           plain._replace(receptions=(dataclasses.replace(rx, rssi=2**31),))]
    for r in odd:
        assert buffer_module._encode_reading_fast(r, ()) is None
    with pytest.raises(batch.BatchError):  # the generic path names what is wrong
        encode_reading(odd[0])
