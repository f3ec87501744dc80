"""Signed uplink batches: round trips, every rejection reason, fuzzing, chain tracking, JSON rendering."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.protocols import batch, keys, schema
from lifeline.protocols.batch import BatchError, BatchRecord, BatchSigner, ChainTracker, WireReception

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUB = KEY.public_key()
DEV = bytes.fromhex("70b3d57ed0000001")


def smoke(fcnt: int = 7, **kw: Any) -> BatchRecord:
    base: dict[str, Any] = dict(
        device_id=DEV,
        fcnt=fcnt,
        node_time=100_000,
        rx_ms=1_700_000_000_123,
        kind=schema.K_SMOKE,
        fields={1: 2, 5: 215, 15: 3000},
        data_class=schema.SENSITIVE,
        receptions=(WireReception("lora-serial", "lora0", 1_700_000_000_123, -97, 75),),
        priority=schema.P_ALARM,
    )
    base.update(kw)
    return BatchRecord(**base)


def reason(data: bytes, key: Any = PUB) -> str:
    with pytest.raises(BatchError) as info:
        batch.verify(data, key)
    assert info.value.reason in batch.REASONS
    return info.value.reason


def envelope(protected: dict[int, Any] | bytes, payload: bytes, unprotected: dict[int, Any] | None = None,
             tag: int | None = 18, key: Ed25519PrivateKey = KEY) -> bytes:
    """A COSE_Sign1 built field by field, correctly signed over whatever protected header it is given."""
    prot = protected if isinstance(protected, bytes) else cbor2.dumps(protected)
    sig = key.sign(cbor2.dumps(["Signature1", prot, b"", payload]))
    body = [prot, unprotected or {}, payload, sig]
    return cbor2.dumps(body if tag is None else cbor2.CBORTag(tag, body))


GOOD_HDR = {1: -8, 3: batch.CONTENT_TYPE, 4: b"gw-01"}


def good_payload(over: dict[int, Any] | None = None) -> dict[int, Any]:
    m: dict[int, Any] = {1: 1, 2: "gw-01", 3: 0, 4: bytes(32), 5: 5, 6: 0, 7: []}
    m.update(over or {})
    return m


# ------------------------------------------------------------------------------------------ round trips

gateway_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
i32 = st.integers(-(1 << 31), (1 << 31) - 1)
receptions = st.builds(
    WireReception,
    radio=st.sampled_from(["lora-serial", "lora-udp", "ble", "nbiot"]),
    adapter=st.text(max_size=12),
    rx_ms=st.integers(0, 1 << 48),
    rssi=st.none() | i32,
    snr_x10=st.none() | i32,
)
records = st.builds(
    BatchRecord,
    device_id=st.binary(min_size=8, max_size=8),
    fcnt=st.integers(0, 0xFFFFFFFF),
    node_time=st.integers(0, 0xFFFFFFFF),
    rx_ms=st.integers(0, 1 << 48),
    kind=st.integers(0, 200),
    fields=st.dictionaries(
        st.integers(0, 40), st.integers(-(1 << 64), (1 << 64) - 1) | st.binary(max_size=24), max_size=8
    ),
    data_class=st.integers(0, 3),
    receptions=st.lists(receptions, max_size=3).map(tuple),
    flags=st.integers(0, 7),
    record_type=st.integers(0, 1),
    priority=st.integers(0, 2),
)


@settings(max_examples=150, deadline=None)
@given(gateway_ids, st.lists(st.lists(records, max_size=5), min_size=1, max_size=4),
       st.integers(0, 1 << 40), st.integers(0, 1))
def test_round_trip_and_chain(gw: str, batches: list[list[BatchRecord]], created: int, lane: int) -> None:
    signer = BatchSigner(KEY, gw)
    tracker = ChainTracker()
    prev = bytes(32)
    for seq, recs in enumerate(batches):
        sb = signer.sign(recs, lane=lane, created_ms=created + seq)
        assert (sb.seq, sb.lane, sb.count) == (seq, lane, len(recs))
        assert sb.digest == hashlib.sha256(sb.data).digest()
        b = batch.verify(sb.data, PUB)
        assert b.records == tuple(recs)
        assert (b.gateway_id, b.seq, b.prev_hash, b.created_ms, b.lane) == (gw, seq, prev, created + seq, lane)
        assert b.digest == sb.digest
        assert tracker.add_batch(b).ok
        prev = sb.digest
        batch.to_json(b)  # renders any valid batch
    assert signer.next_seq == len(batches) and signer.prev_hash == prev
    assert tracker.intact


def test_signing_is_deterministic_and_resumable() -> None:
    a = BatchSigner(KEY, "gw-01")
    first = a.sign([smoke()], lane=0, created_ms=1)
    second = a.sign([smoke(8)], lane=1, created_ms=2)
    # A restarted gateway that persisted (next_seq, prev_hash) continues the same chain byte for byte.
    b = BatchSigner(KEY, "gw-01", next_seq=1, prev_hash=first.digest)
    assert b.sign([smoke(8)], lane=1, created_ms=2).data == second.data
    assert BatchSigner(KEY, "gw-01").sign([smoke()], lane=0, created_ms=1).data == first.data


def test_wire_layout_matches_the_contract() -> None:
    sb = BatchSigner(KEY, "gw-01").sign([smoke()], lane=0, created_ms=5)
    tag = cbor2.loads(sb.data)
    assert isinstance(tag, cbor2.CBORTag) and tag.tag == 18
    prot, unprot, payload, sig = tag.value
    assert cbor2.loads(prot) == {1: -8, 3: "application/vnd.lifeline.batch+cbor", 4: b"gw-01"}
    assert dict(unprot) == {} and len(sig) == 64
    body = cbor2.loads(payload)
    assert sorted(body) == list(range(1, 8))
    assert (body[1], body[2], body[3], body[4], body[5], body[6]) == (1, "gw-01", 0, bytes(32), 5, 0)
    rec = body[7][0]
    assert sorted(rec) == list(range(1, 12))
    assert rec[1] == DEV and rec[6] == {1: 2, 5: 215, 15: 3000}
    assert rec[8] == [["lora-serial", "lora0", 1_700_000_000_123, -97, 75]]
    assert (rec[9], rec[10], rec[11]) == (0, 0, 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"device_id": b"\x01" * 7},
        {"fcnt": -1},
        {"fcnt": True},
        {"data_class": 4},
        {"flags": 8},
        {"record_type": 2},
        {"priority": 3},
        {"fields": {1: 1.5}},
        {"fields": {1: "text"}},
        {"fields": {-1: 1}},
        {"receptions": (WireReception("lora", "a", 1, 1 << 40, None),)},
    ],
)
def test_signer_rejects_bad_records_and_keeps_its_state(bad: dict[str, Any]) -> None:
    signer = BatchSigner(KEY, "gw-01")
    with pytest.raises(BatchError) as info:
        signer.sign([smoke(), smoke(**bad)], lane=0, created_ms=1)
    assert info.value.reason == "bad_record" and "record 1" in info.value.detail
    assert signer.next_seq == 0 and signer.prev_hash == bytes(32)


@pytest.mark.parametrize("gw", ["", "a/b", "gw+1", "#", "x" * 65, "-lead"])
def test_gateway_id_must_be_a_topic_level(gw: str) -> None:
    with pytest.raises(BatchError):
        BatchSigner(KEY, gw)


def test_signer_refuses_a_lane_outside_live_backlog() -> None:
    with pytest.raises(BatchError):
        BatchSigner(KEY, "gw-01").sign([], lane=2, created_ms=0)


# ------------------------------------------------------------------------------------------ rejections


def test_too_large_is_refused_unread() -> None:
    assert reason(b"\xd2" + bytes(batch.MAX_BATCH_BYTES)) == "too_large"


@pytest.mark.parametrize(
    "data",
    [b"", b"\xd2", b"\x01", b"\xd2\x83\x40\xa0\x40", b"\xd2\x84\x40", b"\xd2\x9f\x40\xa0\x40\x40\xff",
     b"\xd2\x84\x01\xa0\x40\x40", b"\xd2\x84\x40\x80\x40\x40", b"\xd2\x84\x40\xa0\x40\x5f\x40\xff",
     b"\xd2\x84\x40\xa0\x40\x58\x40"],
    ids=["empty", "tag-only", "int", "array3", "truncated", "indefinite", "protected-int", "unprotected-array",
         "indefinite-signature", "signature-truncated"],
)
def test_not_cose_sign1(data: bytes) -> None:
    assert reason(data) == "not_cose_sign1"


def test_trailing_bytes_after_the_envelope() -> None:
    sb = BatchSigner(KEY, "gw-01").sign([], lane=0, created_ms=1)
    assert reason(sb.data + b"\x00") == "not_cose_sign1"


def test_bad_tag() -> None:
    payload = cbor2.dumps(good_payload())
    assert reason(envelope(GOOD_HDR, payload, tag=None)) == "bad_tag"
    with pytest.raises(BatchError, match="COSE_Mac0"):
        batch.verify(envelope(GOOD_HDR, payload, tag=17), PUB)


def test_bad_alg_names_the_suite() -> None:
    payload = cbor2.dumps(good_payload())
    with pytest.raises(BatchError) as info:
        batch.verify(envelope({**GOOD_HDR, 1: -7}, payload), PUB)
    assert info.value.reason == "bad_alg" and "ES256" in info.value.detail and "EdDSA" in info.value.detail
    hdr_no_alg = {k: v for k, v in GOOD_HDR.items() if k != 1}
    assert reason(envelope(hdr_no_alg, payload)) == "bad_alg"
    with pytest.raises(BatchError, match="unprotected"):
        batch.verify(envelope(hdr_no_alg, payload, unprotected={1: -8}), PUB)
    assert reason(envelope(b"", payload)) == "bad_alg"
    assert reason(envelope({**GOOD_HDR, 1: "EdDSA"}, payload)) == "bad_alg"


@pytest.mark.parametrize(
    "protected",
    [
        {**GOOD_HDR, 3: "application/cbor"},
        {**GOOD_HDR, 2: [99]},
        {1: -8, 3: batch.CONTENT_TYPE},
        {**GOOD_HDR, 4: "gw-01"},
        cbor2.dumps([1, -8]),
        b"\xa1\x01",
        cbor2.dumps(GOOD_HDR) + b"\x00",
        cbor2.dumps({**GOOD_HDR, 5: bytes(batch.MAX_PROTECTED_BYTES)}),
    ],
    ids=["content-type", "crit", "no-kid", "kid-text", "array", "truncated", "trailing", "oversized"],
)
def test_bad_header(protected: dict[int, Any] | bytes) -> None:
    assert reason(envelope(protected, cbor2.dumps(good_payload()))) == "bad_header"


def test_header_label_both_protected_and_unprotected() -> None:
    assert reason(envelope(GOOD_HDR, cbor2.dumps(good_payload()), unprotected={4: b"gw-01"})) == "bad_header"


def test_bad_signature() -> None:
    sb = BatchSigner(KEY, "gw-01").sign([smoke()], lane=0, created_ms=1)
    other = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    assert reason(sb.data, other) == "bad_signature"
    data = bytearray(sb.data)
    data[-1] ^= 1  # signature
    assert reason(bytes(data)) == "bad_signature"
    i = sb.data.index(DEV)
    data = bytearray(sb.data)
    data[i] ^= 1  # payload: the device id of the record
    assert reason(bytes(data)) == "bad_signature"
    short = envelope(GOOD_HDR, cbor2.dumps(good_payload()))[:-64]
    assert reason(short[:-2] + b"\x58\x3f" + bytes(63)) == "bad_signature"


def test_raw_public_key_bytes_are_accepted() -> None:
    sb = BatchSigner(KEY, "gw-01").sign([], lane=0, created_ms=1)
    raw = PUB.public_bytes_raw()
    assert batch.verify(sb.data, raw).seq == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        cbor2.dumps([1, 2]),
        cbor2.dumps(good_payload()) + b"\x00",
        cbor2.dumps({k: v for k, v in good_payload().items() if k != 5}),
        cbor2.dumps({**good_payload(), 8: 0}),
        cbor2.dumps({k: v for k, v in good_payload().items() if k != 1}),
        cbor2.dumps(good_payload({1: True})),
        cbor2.dumps(good_payload({2: "gw-02"})),
        cbor2.dumps(good_payload({3: -1})),
        cbor2.dumps(good_payload({3: 1.0})),
        cbor2.dumps(good_payload({4: bytes(31)})),
        cbor2.dumps(good_payload({6: 2})),
        cbor2.dumps(good_payload({7: {}})),
        cbor2.dumps(good_payload({7: [{}]})),
        cbor2.dumps(good_payload({7: [{1: DEV}]})),
    ],
    ids=["not-cbor", "array", "trailing", "missing-created", "extra-key", "no-version", "bool-version",
         "kid-mismatch", "negative-seq", "float-seq", "short-prev", "lane-2", "records-map", "empty-record",
         "partial-record"],
)
def test_bad_payload(payload: bytes) -> None:
    assert reason(envelope(GOOD_HDR, payload)) == "bad_payload"


def _record_cbor(over: dict[int, Any] | None = None) -> dict[int, Any]:
    rec: dict[int, Any] = {1: DEV, 2: 1, 3: 2, 4: 3, 5: 1, 6: {1: 0}, 7: 2, 8: [["lora", "l0", 3, None, None]],
                           9: 0, 10: 0, 11: 2}
    rec.update(over or {})
    return rec


@pytest.mark.parametrize(
    "over",
    [{1: DEV[:7]}, {2: True}, {6: {1: 1.5}}, {6: {"a": 1}}, {6: [1]}, {7: 4}, {8: {}}, {8: [["lora"]]},
     {8: [[1, "l0", 3, None, None]]}, {8: [["lora", "l0", 3, 1 << 40, None]]}, {9: 8}, {10: 2}, {11: 3}],
    ids=lambda o: repr(o)[:40],
)
def test_bad_record_in_payload(over: dict[int, Any]) -> None:
    payload = cbor2.dumps(good_payload({7: [_record_cbor(over)]}))
    assert reason(envelope(GOOD_HDR, payload)) == "bad_payload"
    ok = cbor2.dumps(good_payload({7: [_record_cbor()]}))
    assert batch.verify(envelope(GOOD_HDR, ok), PUB).records[0].device_id == DEV


def test_unknown_version_is_reported_after_the_signature_holds() -> None:
    payload = cbor2.dumps(good_payload({1: 2}))
    with pytest.raises(BatchError) as info:
        batch.verify(envelope(GOOD_HDR, payload), PUB)
    assert info.value.reason == "unknown_version" and "2" in info.value.detail
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    assert reason(envelope(GOOD_HDR, payload, key=other)) == "bad_signature"


def test_detached_payload_is_not_supported() -> None:
    prot = cbor2.dumps(GOOD_HDR)
    data = cbor2.dumps(cbor2.CBORTag(18, [prot, {}, None, bytes(64)]))
    assert reason(data) == "bad_payload"


# ------------------------------------------------------------------------------------------ fuzzing


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_batch_error(data: bytes) -> None:
    for candidate in (data, b"\xd2\x84" + data):
        with pytest.raises(BatchError):
            batch.verify(candidate, PUB)


def test_mutated_batches_only_ever_raise_batch_error() -> None:
    rng = random.Random(1234)
    signer = BatchSigner(KEY, "gw-01")
    good = signer.sign([smoke(), smoke(8, fields={1: 0})], lane=1, created_ms=99).data
    reasons: dict[str, int] = {}
    for _ in range(5000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            i = rng.randrange(len(data))
            if op < 0.5:
                data[i] = rng.randrange(256)
            elif op < 0.75:
                del data[i : i + rng.randint(1, 8)]
            else:
                data[i:i] = rng.randbytes(rng.randint(1, 8))
        try:
            batch.verify(bytes(data), PUB)
        except BatchError as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
        else:
            assert bytes(data) == good
    assert {"not_cose_sign1", "bad_signature"} <= set(reasons)


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.binary(max_size=40) | st.text(max_size=10)
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.integers(-3, 12), inner, max_size=8),
    max_leaves=40,
))
def test_any_signed_cbor_payload_is_accepted_or_rejected_cleanly(obj: object) -> None:
    """Whatever a (compromised or buggy) gateway signs, the verifier answers with a BatchError at worst."""
    try:
        batch.verify(envelope(GOOD_HDR, cbor2.dumps(obj)), PUB)
    except BatchError as exc:
        assert exc.reason in ("bad_payload", "unknown_version")


# ------------------------------------------------------------------------------------------ chain


def signed_chain(n: int, gw: str = "gw-01") -> list[batch.Batch]:
    signer = BatchSigner(KEY, gw)
    return [batch.verify(signer.sign([smoke(i)], lane=0, created_ms=i).data, PUB) for i in range(n)]


def test_in_order_chain_is_intact() -> None:
    t = ChainTracker()
    results = [t.add_batch(b) for b in signed_chain(5)]
    assert all(r.ok and r.verdict == "new" and r.gap is None for r in results)
    assert t.intact and t.highest == 4 and t.gaps == ()


def test_removed_batch_is_a_gap_that_stays() -> None:
    chain = signed_chain(5)
    t = ChainTracker()
    for b in chain[:2] + chain[3:]:
        t.add_batch(b)
    assert t.gaps == ((2, 2),) and t.missing_count == 1 and not t.intact
    assert t.broken_links == ()  # neighbours of the hole are unknown to each other: a gap, not a broken link


def test_reordered_arrival_fills_the_gap() -> None:
    chain = signed_chain(6)
    t = ChainTracker()
    order = [0, 3, 1, 5, 2, 4]
    results = {i: t.add_batch(chain[i]) for i in order}
    assert results[3].verdict == "new" and results[3].gap == (1, 2)
    assert results[1].verdict == "late" and results[2].verdict == "late"
    assert results[5].gap == (4, 4)
    assert all(r.ok for r in results.values())
    assert t.intact and t.highest == 5


def test_duplicate_and_equivocation() -> None:
    chain = signed_chain(3)
    t = ChainTracker()
    for b in chain:
        t.add_batch(b)
    assert t.add_batch(chain[1]).verdict == "duplicate"
    assert t.intact
    # The same key signs a different batch 1 (a gateway rolled back its state, or a stolen key).
    forged = BatchSigner(KEY, "gw-01", next_seq=1, prev_hash=chain[0].digest).sign([smoke(99)], 0, 1)
    r = t.add(forged.seq, chain[0].digest, forged.digest)
    assert r.verdict == "equivocation" and not r.ok
    assert t.equivocations == (1,) and not t.intact


def test_broken_links() -> None:
    chain = signed_chain(4)
    t = ChainTracker()
    for b in chain[:2]:
        t.add_batch(b)
    # A gateway that lost its state restarts at seq 2 with a zero prev_hash.
    restarted = batch.verify(BatchSigner(KEY, "gw-01", next_seq=2).sign([smoke(50)], 0, 2).data, PUB)
    r = t.add_batch(restarted)
    assert r.verdict == "new" and r.broken_links == ((1, 2),) and not r.ok
    # The link is checked forwards too: batch 3 of the original chain names the original batch 2.
    r3 = t.add_batch(chain[3])
    assert r3.broken_links == ((2, 3),)
    assert t.broken_links == ((1, 2), (2, 3))


def test_broken_link_found_when_the_earlier_batch_arrives_late() -> None:
    chain = signed_chain(3)
    t = ChainTracker()
    t.add_batch(chain[0])
    t.add_batch(chain[2])
    replaced = batch.verify(
        BatchSigner(KEY, "gw-01", next_seq=1, prev_hash=chain[0].digest).sign([smoke(77)], 0, 1).data, PUB
    )
    r = t.add_batch(replaced)
    assert r.verdict == "late" and r.broken_links == ((1, 2),)


def test_genesis_must_name_zero_hash() -> None:
    t = ChainTracker()
    r = t.add(0, b"\x01" * 32, b"\x02" * 32)
    assert r.broken_links == ((-1, 0),)


def test_tracker_started_mid_stream_and_bounded_memory() -> None:
    t = ChainTracker(first_seq=1000, window=4)
    assert t.add(999, bytes(32), b"\x09" * 32).verdict == "stale"
    prev = b"\x00" * 32
    digests = []
    for seq in range(1000, 1010):
        d = hashlib.sha256(seq.to_bytes(8, "big")).digest()
        assert t.add(seq, prev, d).ok
        digests.append(d)
        prev = d
    assert t.intact and len(t._digest) == 4
    assert t.add(1001, digests[0], digests[1]).verdict == "stale"  # forgotten: cannot be judged
    assert t.add(1009, digests[8], digests[9]).verdict == "duplicate"


def test_huge_jump_costs_one_gap_not_memory() -> None:
    t = ChainTracker()
    t.add(0, bytes(32), b"\x01" * 32)
    r = t.add(1 << 60, b"\x05" * 32, b"\x06" * 32)
    assert r.gap == (1, (1 << 60) - 1) and t.gaps == ((1, (1 << 60) - 1),)
    assert t.add(12345, b"\x07" * 32, b"\x08" * 32).verdict == "late"
    assert list(t.gaps) == [(1, 12344), (12346, (1 << 60) - 1)]


@settings(max_examples=100, deadline=None)
@given(st.permutations(list(range(12))), st.sets(st.integers(0, 11), max_size=4))
def test_any_order_any_loss(order: list[int], lost: set[int]) -> None:
    """Whatever the arrival order, the tracker ends up knowing exactly the lost seqs below the highest."""
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(12)]
    t = ChainTracker()
    for i in order:
        if i not in lost:
            r = t.add(i, digests[i - 1] if i else bytes(32), digests[i])
            assert r.ok
    arrived = set(range(12)) - lost
    highest = max(arrived) if arrived else None
    assert t.highest == highest
    expected = {s for s in lost if highest is not None and s < highest}
    assert {s for lo, hi in t.gaps for s in range(lo, hi + 1)} == expected
    assert t.broken_links == ()


# ------------------------------------------------------------------------------------------ JSON


def test_to_json_uses_human_names() -> None:
    meter = BatchRecord(
        device_id=bytes.fromhex("0004a30b001c2f3e"), fcnt=12, node_time=0, rx_ms=1_700_000_001_000,
        kind=schema.K_WATER_METER, fields={1: 1_234_567, 3: 0b101}, data_class=schema.SENSITIVE,
        receptions=(WireReception("nbiot", "nb0", 1_700_000_001_000, None, None),),
        flags=batch.FLAG_BACKFILLED | batch.FLAG_QUEUED,
    )
    event = BatchRecord(
        device_id=bytes(8), fcnt=0, node_time=0, rx_ms=1_700_000_002_000, kind=3, fields={1: 5, 2: b"\xab"},
        data_class=schema.INTERNAL, receptions=(), record_type=batch.RECORD_EVENT, priority=schema.P_EVENT,
    )
    sb = BatchSigner(KEY, "gw-01").sign([smoke(), meter, event], lane=batch.LANE_BACKLOG, created_ms=1_700_000_003_000)
    j = batch.to_json(batch.verify(sb.data, PUB))
    assert j["gateway_id"] == "gw-01" and j["lane"] == "backlog" and j["count"] == 3
    assert j["digest"] == sb.digest.hex() and j["prev_hash"] == "00" * 32
    assert j["created_iso"] == "2023-11-14T22:13:23.000Z"
    s, m, e = j["records"]
    assert s["device"] == "70b3d57ed0000001" and s["kind"] == "smoke" and s["kind_id"] == 1
    assert s["fields"]["alarm_state"] == "alarm"
    assert s["fields"]["temperature"] == {"value": 21.5, "unit": "degC"}
    assert s["data_class"] == "sensitive" and s["priority"] == "alarm" and s["type"] == "reading"
    assert s["node_time_iso"] == "2020-01-02T03:46:40Z"
    assert s["receptions"] == [{"radio": "lora-serial", "adapter": "lora0", "rx_ms": 1_700_000_000_123,
                                "rssi_dbm": -97, "snr_db": 7.5}]
    assert m["kind"] == "water_meter" and m["fields"]["flags"] == ["leak", "tamper"]
    assert m["flags"] == ["backfilled", "queued"] and m["node_time_iso"] is None
    assert e["type"] == "event" and e["event"] == 3 and e["fields"] == {"1": 5, "2": "ab"}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=300), st.integers(0, 2**40), st.integers(0, 1))
def test_sign_encoded_is_byte_identical_to_sign(fcnts: list[int], created: int, lane: int) -> None:
    """The gateway's pre-encoded path must produce exactly the batch the record path produces."""
    key = keys.generate()
    records = [
        batch.BatchRecord(device_id=(i % 7).to_bytes(8, "big"), fcnt=f, node_time=f // 2, rx_ms=created, kind=3,
                          fields={1: f % 20000, 2: -5}, data_class=0,
                          receptions=(batch.WireReception("nbiot", "nb0", created, -90, None),))
        for i, f in enumerate(fcnts)
    ]
    a = batch.BatchSigner(key, "gw-1", next_seq=5, prev_hash=bytes(range(32)))
    b = batch.BatchSigner(key, "gw-1", next_seq=5, prev_hash=bytes(range(32)))
    one = a.sign(records, lane, created)
    two = b.sign_encoded([batch.encode_record(r) for r in records], lane, created)
    assert one.data == two.data and one.digest == two.digest and two.count == len(records)
    assert batch.verify(two.data, keys.public_key(key)).records == tuple(records)


@settings(max_examples=300, deadline=None)
@given(st.builds(
    BatchRecord,
    device_id=st.binary(min_size=7, max_size=9),
    fcnt=st.integers(-1, 2**64) | st.booleans(),
    node_time=st.integers(-1, 2**64),
    rx_ms=st.integers(-1, 2**64),
    kind=st.integers(-1, 300),
    fields=st.dictionaries(st.integers(-1, 30), st.integers(-(2**65), 2**65) | st.binary(max_size=3) | st.none()),
    data_class=st.integers(-1, 4),
    receptions=st.tuples(st.builds(WireReception, radio=st.text(max_size=3), adapter=st.text(max_size=3),
                                   rx_ms=st.integers(-1, 3), rssi=st.none() | st.integers(-(2**32), 2**32),
                                   snr_x10=st.none() | st.integers(-(2**32), 2**32))),
    flags=st.integers(-1, 8),
    record_type=st.integers(-1, 2),
    priority=st.integers(-1, 3),
))
def test_fast_record_check_agrees_with_the_full_check(record: BatchRecord) -> None:
    try:
        batch._check_record(record, 0)
        full_ok = True
    except BatchError:
        full_ok = False
    assert batch._plainly_valid(record) == full_ok


@settings(max_examples=500, deadline=None)
@given(st.builds(
    BatchRecord,
    device_id=st.binary(min_size=8, max_size=8),
    fcnt=st.integers(0, 2**64 - 1),
    node_time=st.integers(0, 2**64 - 1),
    rx_ms=st.integers(0, 2**64 - 1),
    kind=st.integers(0, 2**64 - 1),
    fields=st.dictionaries(st.integers(0, 2**64 - 1), st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=300),
                           max_size=30),
    data_class=st.integers(0, 3),
    receptions=st.lists(st.builds(WireReception, radio=st.text(max_size=30), adapter=st.text(max_size=30),
                                  rx_ms=st.integers(0, 2**64 - 1),
                                  rssi=st.none() | st.integers(-(2**31), 2**31 - 1),
                                  snr_x10=st.none() | st.integers(-(2**31), 2**31 - 1)),
                        max_size=30).map(tuple),
    flags=st.integers(0, 7),
    record_type=st.integers(0, 1),
    priority=st.integers(0, 2),
))
def test_hand_rolled_record_encoder_matches_cbor2_canonical(record: BatchRecord) -> None:
    assert batch.encode_record(record) == cbor2.dumps(batch._record_to_cbor(record), canonical=True)
