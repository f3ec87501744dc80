"""Lifeline BLE advertisement codec and extractor: round trips, every reason, bounded state, fuzzing."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifeline.gateway.ingress import ble_adv
from lifeline.gateway.ingress.ble_adv import AdvExtractor, encode_adv, parse_ad
from lifeline.protocols import frame, frame_sizes, schema

ADDR = "C0:11:22:33:44:55"
KEYS = frame.derive_keys(bytes(range(32)), bytes.fromhex("70b3d57ed0000001"))


def real_frames() -> list[bytes]:
    """Every kind at its longest encoding, plus short ones: the frames nodes really send."""
    out = []
    for kind in sorted(schema.KINDS):
        flags = frame.FLAG_DOWN if schema.is_downlink_kind(kind) else 0
        out.append(frame.encode(KEYS, KEYS.dev_id, 7, 9, kind, frame_sizes.max_fields(kind), flags))
    out.append(frame.encode(KEYS, KEYS.dev_id, 8, 9, 3, {1: 0}))
    return out


def fake_frame(n: int, tag: int = 0) -> bytes:
    return bytes((0x11, 3, 0)) + bytes((tag,)) + bytes((i * 7 + tag) & 0xFF for i in range(n - 4))


def test_sizes_follow_the_frame_budget() -> None:
    assert ble_adv.SEGMENT_FIRST_LEN == 26
    assert (ble_adv.SEGMENT_SECOND_MIN, ble_adv.SEGMENT_SECOND_MAX) == (2, 25)
    longest = max(real_frames(), key=len)
    (ext,) = encode_adv(longest, flags=ble_adv.FLAGS_LE_GENERAL_NO_BREDR)
    assert len(ext) == 3 + 5 + len(longest) > ble_adv.LEGACY_AD_MAX  # why legacy needs two segments
    for seg in encode_adv(fake_frame(frame.MAX_FRAME), legacy=True, seq=3):
        assert len(seg) <= ble_adv.LEGACY_AD_MAX


def test_extended_round_trip_byte_exact() -> None:
    ex = AdvExtractor()
    for i, data in enumerate(real_frames()):
        (ad,) = encode_adv(data, flags=ble_adv.FLAGS_LE_GENERAL_NO_BREDR)
        assert ad[:3] == b"\x02\x01\x06" and ad[4:8] == b"\xff\xff\xff\x10"
        assert ex.feed_raw(ADDR, ad, i) == (data,)
    for n in range(frame.MIN_FRAME, frame.MAX_FRAME + 1):
        (ad,) = encode_adv(fake_frame(n, 1))
        assert ex.feed_raw(ADDR, ad, 100) == (fake_frame(n, 1),)
    assert ex.counters["frames"] == len(real_frames()) + frame.MAX_FRAME - frame.MIN_FRAME + 1
    assert not [k for k in ex.counters if k.startswith("reject.")]


def test_bleak_style_manufacturer_dict() -> None:
    data = real_frames()[0]
    ex = AdvExtractor()
    assert ex.feed(ADDR, {0x004C: b"\x02\x15", 0xFFFF: b"\x10" + data}, 0) == (data,)
    assert ex.feed(ADDR, {0xFFFF: b"\x10" + data}, 1) == ()
    assert ex.counters["duplicate"] == 1


@pytest.mark.parametrize("first", [0, 1])
def test_legacy_segments_in_either_order(first: int) -> None:
    ex = AdvExtractor()
    for seq, data in enumerate(real_frames()):
        segs = encode_adv(data, legacy=True, seq=seq & 3)
        assert ex.feed_raw(ADDR, segs[first], 10 * seq) == ()
        assert ex.feed_raw(ADDR, segs[1 - first], 10 * seq + 1) == (data,)
        assert ex.feed_raw(ADDR, segs[first], 10 * seq + 2) == ()  # the burst goes on: duplicate
    n = len(real_frames())
    assert ex.counters["frames"] == n and ex.counters["duplicate"] == n and ex.counters["segment.dropped"] == 0


def test_segments_pair_per_address_and_sequence() -> None:
    ex = AdvExtractor()
    a, b = fake_frame(51, 1), fake_frame(40, 2)
    sa, sb = encode_adv(a, legacy=True, seq=1), encode_adv(b, legacy=True, seq=1)
    assert ex.feed_raw("C0:00:00:00:00:01", sa[0], 0) == ()
    assert ex.feed_raw("C0:00:00:00:00:02", sb[1], 0) == ()  # another node's second half: no mix-up
    assert ex.feed_raw("C0:00:00:00:00:01", sa[1], 1) == (a,)
    assert ex.feed_raw("C0:00:00:00:00:02", sb[0], 1) == (b,)
    # a new sequence number replaces an unfinished half
    c = fake_frame(30, 3)
    sc = encode_adv(c, legacy=True, seq=2)
    sd = encode_adv(fake_frame(33, 4), legacy=True, seq=3)
    assert ex.feed_raw("C0:00:00:00:00:03", sc[0], 2) == ()
    assert ex.feed_raw("C0:00:00:00:00:03", sd[0], 3) == ()
    assert ex.counters["segment.dropped"] == 1
    # the same sequence number with a different first half (counter wrapped) drops the stale second half
    e1, e2 = fake_frame(44, 5), fake_frame(44, 6)
    s1, s2 = encode_adv(e1, legacy=True, seq=0), encode_adv(e2, legacy=True, seq=0)
    assert ex.feed_raw("C0:00:00:00:00:04", s1[0], 4) == ()
    assert ex.feed_raw("C0:00:00:00:00:04", s1[1], 5) == (e1,)
    assert ex.feed_raw("C0:00:00:00:00:04", s2[0], 6) == ()  # not e2[:26] + e1[26:]
    assert ex.feed_raw("C0:00:00:00:00:04", s2[1], 7) == (e2,)


def test_half_frames_expire_and_are_bounded() -> None:
    ex = AdvExtractor(segment_timeout_ms=1000, pending_capacity=8)
    first, second = encode_adv(fake_frame(50), legacy=True, seq=0)
    assert ex.feed_raw(ADDR, first, 0) == ()
    assert ex.feed_raw("C0:99:99:99:99:99", first, 999) == ()  # triggers expiry checks
    assert ex.counters["segment.dropped"] == 0
    assert ex.feed_raw(ADDR, second, 1000) == ()  # its first half expired at 1000 ms; the other node's not
    assert ex.counters["segment.dropped"] == 1
    for i in range(100):
        ex.feed_raw("C0:00:00:00:%02X:%02X" % (i // 256, i % 256), first, 1000)
    assert len(ex._pending) <= 8


def test_duplicates_within_the_window_only_and_bounded() -> None:
    data = fake_frame(40)
    (ad,) = encode_adv(data)
    ex = AdvExtractor(dedupe_window_ms=1000, dedupe_capacity=16)
    assert ex.feed_raw(ADDR, ad, 0) == (data,)
    assert ex.feed_raw("C0:AA:AA:AA:AA:AA", ad, 500) == ()  # same frame via another address: still a repeat
    assert ex.feed_raw(ADDR, ad, 1400) == ()  # repeats keep it remembered (500 + 1000 > 1400)
    assert ex.feed_raw(ADDR, ad, 2500) == (data,)  # silent for a whole window: heard anew
    assert ex.counters["duplicate"] == 2 and ex.counters["frames"] == 2
    for i in range(1000):
        ex.feed_raw(ADDR, encode_adv(fake_frame(40, i & 0xFF) + bytes((i >> 8,)))[0], 3000)
    assert len(ex._seen) <= 16
    assert ex.feed_raw(ADDR, ad, 3000) == (data,)
    ex.forget(data)  # could not be delivered: the next repeat gets through
    assert ex.feed_raw(ADDR, ad, 3001) == (data,)
    ex.reset()  # a new scan
    assert ex.feed_raw(ADDR, ad, 3002) == (data,)


@pytest.mark.parametrize(
    ("ad", "reason"),
    [
        (b"\x02\x01\x06", "no_manufacturer_data"),
        (b"", "no_manufacturer_data"),
        (b"\x05\xff\x4c\x00\x02\x15", "wrong_company"),
        (ble_adv.manufacturer_ad(b"\x20" + fake_frame(40)), "bad_header"),  # version 2
        (ble_adv.manufacturer_ad(b"\x00" + fake_frame(40)), "bad_header"),  # version 0
        (ble_adv.manufacturer_ad(b"\x1c" + fake_frame(26)), "bad_header"),  # segment value 3
        (ble_adv.manufacturer_ad(b"\x11" + fake_frame(40)), "bad_header"),  # sequence on a whole frame
        (ble_adv.manufacturer_ad(b""), "bad_length"),  # no Lifeline header at all
        (ble_adv.manufacturer_ad(b"\x10" + fake_frame(51)[:27]), "bad_length"),  # below MIN_FRAME
        (ble_adv.manufacturer_ad(b"\x10" + fake_frame(51) + b"\x00"), "bad_length"),
        (ble_adv.manufacturer_ad(b"\x14" + fake_frame(30)[:25]), "bad_length"),  # first segment is 26
        (ble_adv.manufacturer_ad(b"\x18" + b"\x01"), "bad_length"),  # second segment 2..25
        (ble_adv.manufacturer_ad(b"\x18" + fake_frame(30)[:26]), "bad_length"),
        (b"\x1f\xff\xff", "bad_ad"),  # runs past the end
        (b"\x02\xff\xff", "bad_ad"),  # manufacturer data shorter than a company id
        (b"\x03\x09ab\x04", "bad_ad"),
        (bytes(ble_adv.EXT_AD_MAX + 1), "bad_ad"),
    ],
)
def test_every_reason_is_counted(ad: bytes, reason: str) -> None:
    assert reason in ble_adv.REASONS
    ex = AdvExtractor()
    assert ex.feed_raw(ADDR, ad, 0) == ()
    assert dict(ex.counters) == {"adv.seen": 1, "reject." + reason: 1}


def test_padding_after_a_zero_length_structure_is_ignored() -> None:
    data = fake_frame(35)
    (ad,) = encode_adv(data)
    assert parse_ad(ad + b"\x00" * 10).manufacturer == ((0xFFFF, b"\x10" + data),)
    assert parse_ad(ad + b"\x00\x07junk").reason is None


def test_encoder_refuses_what_the_format_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_adv(fake_frame(51) + b"\x00")
    with pytest.raises(ValueError):
        encode_adv(fake_frame(51)[:27])
    with pytest.raises(ValueError):
        encode_adv(fake_frame(40), legacy=True, flags=6)
    with pytest.raises(ValueError):
        ble_adv.header_byte(ble_adv.SEG_WHOLE, 1)
    with pytest.raises(ValueError):
        ble_adv.header_byte(3)


def test_status_codec() -> None:
    status = ble_adv.encode_status(KEYS.dev_id, 7, 3, 3600, ble_adv.STATUS_FLAG_MAINTENANCE)
    assert len(status) == ble_adv.STATUS_LEN
    assert ble_adv.status_device_id(status) == KEYS.dev_id
    assert ble_adv.status_device_id(status[:-1]) is None
    assert ble_adv.status_device_id(b"\x02" + status[1:]) is None


# --- fuzzing -----------------------------------------------------------------------------------------

OUTCOMES = ("frames", "duplicate", "segment.stored")
KNOWN = {"adv.seen", "segment.dropped", *OUTCOMES, *("reject." + r for r in ble_adv.REASONS)}


def _outcomes(ex: AdvExtractor) -> int:
    return sum(v for k, v in ex.counters.items() if k in OUTCOMES or k.startswith("reject."))


def _check(ex: AdvExtractor, address: str, ad: bytes, now_ms: int) -> None:
    before_seen, before = ex.counters["adv.seen"], _outcomes(ex)
    out = ex.feed_raw(address, ad, now_ms)
    assert isinstance(out, tuple)
    for data in out:
        assert isinstance(data, bytes) and frame.MIN_FRAME <= len(data) <= frame.MAX_FRAME
    assert ex.counters["adv.seen"] == before_seen + 1
    assert _outcomes(ex) > before, ad.hex()  # every advertisement is accounted for
    assert set(ex.counters) <= KNOWN, set(ex.counters) - KNOWN


def _seeds() -> list[bytes]:
    seeds: list[bytes] = []
    for i, data in enumerate(real_frames()):
        seeds.extend(encode_adv(data, flags=6))
        seeds.extend(encode_adv(data, legacy=True, seq=i & 3))
    seeds += [b"\x02\x01\x06\x05\xff\x4c\x00\x02\x15", b"\x03\x03\xaa\xfe" + encode_adv(fake_frame(30))[0],
              encode_adv(fake_frame(28))[0] * 2, b""]
    return seeds


def _mutate(rng: random.Random, ad: bytes) -> bytes:
    b = bytearray(ad)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(7)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0x00, 0x01, 0x02, 0x10, 0x14, 0x18, 0x1C, 0x20, 0xFF))
        elif op == 2:
            del b[rng.randrange(len(b) + 1):]
        elif op == 3:
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.randbytes(rng.randrange(1, 6))
        elif op == 4 and b:  # a length byte or the header byte, where it matters most
            pos = rng.choice([0, 3, 7, min(len(b) - 1, 8)])
            if pos < len(b):
                b[pos] = rng.randrange(256)
        elif op == 5:
            b += rng.choice(_SEEDS)
        elif op == 6 and len(b) > 2:
            pos = rng.randrange(len(b))
            del b[pos]
    return bytes(b)


_SEEDS = _seeds()


def test_fuzz_random_and_mutated_ad_structures() -> None:
    """At least 100,000 random, structured and mutated advertisements: never raises, every one counted
    under one known reason or outcome, and the campaign reaches every reason. LIFELINE_FUZZ_N raises it."""
    n = int(os.environ.get("LIFELINE_FUZZ_N", "100000"))
    rng = random.Random(20261123)
    ex = AdvExtractor(dedupe_capacity=512, pending_capacity=32)
    addresses = ["C0:00:00:00:00:%02X" % i for i in range(40)]
    for i in range(n):
        r = i % 5
        if r == 0:
            ad = rng.randbytes(rng.randrange(0, 80))
        elif r == 1:  # random AD structures with plausible types and company ids
            parts = []
            for _ in range(rng.randrange(1, 4)):
                t = rng.choice((0x01, 0x09, 0x16, 0xFF, 0xFF, 0xFF))
                body = (rng.choice((0xFFFF, 0x004C, 0x0059)).to_bytes(2, "little") if t == 0xFF else b"")
                body += bytes((rng.choice((0x10, 0x14, 0x18, 0x11, 0x20)),)) + rng.randbytes(rng.randrange(0, 56))
                parts.append(bytes((len(body) + 1, t)) + body)
            ad = b"".join(parts)
        else:
            ad = _mutate(rng, rng.choice(_SEEDS))
        _check(ex, rng.choice(addresses), ad, i * 7)
    assert ex.counters["adv.seen"] == n
    for key in ("frames", "duplicate", "segment.stored", "segment.dropped", *("reject." + r for r in ble_adv.REASONS)):
        assert ex.counters[key] > 0, (key, dict(ex.counters))
    assert len(ex._seen) <= 512 and len(ex._pending) <= 32


_ad_structure = st.one_of(
    st.binary(max_size=40).map(lambda b: bytes((len(b) + 1, 0xFF)) + b),
    st.tuples(st.sampled_from([0xFFFF, 0x004C]), st.integers(0, 255), st.binary(max_size=60)).map(
        lambda t: ble_adv.manufacturer_ad(bytes((t[1],)) + t[2], t[0])
    ),
    st.binary(max_size=30).map(lambda b: bytes((len(b) + 1, 0x09)) + b),
    st.binary(max_size=6),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ad_structure, max_size=4), st.sampled_from(["C0:00:00:00:00:01", "C0:00:00:00:00:02"]))
def test_hypothesis_ad_structures(parts: list[bytes], address: str) -> None:
    ex = AdvExtractor()
    _check(ex, address, b"".join(parts), 0)
    _check(ex, address, b"".join(parts), 1)


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=70), max_size=4))
def test_hypothesis_manufacturer_dicts(manufacturer: dict[int, bytes]) -> None:
    """The bleak path (``{company id: data}``) never raises either."""
    ex = AdvExtractor()
    out = ex.feed(ADDR, manufacturer, 0)
    assert all(frame.MIN_FRAME <= len(d) <= frame.MAX_FRAME for d in out)
    assert set(ex.counters) <= KNOWN and _outcomes(ex) >= 1
