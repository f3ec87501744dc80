"""Frame codec: vectors, size budget, round trips, fast path equivalence, and a fuzz campaign."""

from __future__ import annotations

import json
import os
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.protocols import cbor, crypto, fastpath, frame, frame_sizes, schema, suites

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / name).read_text())  # type: ignore[no-any-return]


def suite_of(v: dict[str, Any]) -> int:
    return suites.suite_id(v.get("suite", "intl"))


def allowed_of(v: dict[str, Any]) -> frozenset[int] | None:
    return None if "allowed" not in v else frozenset(suites.suite_id(a) for a in v["allowed"])


def fields_of(v: dict[str, Any]) -> dict[int, Any]:
    return {int(k): bytes.fromhex(x["bytes"]) if isinstance(x, dict) else x for k, x in v["fields"].items()}


@pytest.mark.parametrize("vec", load("frames.json"), ids=lambda v: v["name"])
def test_frame_vectors_byte_for_byte(vec: dict[str, Any]) -> None:
    root, dev = bytes.fromhex(vec["root_key"]), bytes.fromhex(vec["dev_id"])
    keys = frame.derive_keys(root, dev, suite_of(vec))
    fast = fastpath.derive_keys(root, dev, suite_of(vec))
    assert (fast.suite, fast.dev_id, fast.mic_up, fast.mic_down, fast.enc) == (
        keys.suite, keys.dev_id, keys.mic_up, keys.mic_down, keys.enc)
    data = frame.encode(keys, dev, vec["fcnt"], vec["time"], vec["kind"], fields_of(vec), vec["flags"])
    assert data.hex() == vec["frame"]
    down = bool(vec["flags"] & frame.FLAG_DOWN)
    for decode in (frame.decode, fastpath.decode):
        f = decode(data, keys, down)
        assert f.fields == fields_of(vec)
        assert (f.header.kind, f.header.fcnt, f.header.time, f.header.dev_id) == (
            vec["kind"], vec["fcnt"], vec["time"], dev)
        assert f.header.suite == suite_of(vec) == data[0] & 0x0F


def test_both_suites_have_frame_vectors_for_every_kind() -> None:
    seen = {(suite_of(v), v["kind"]) for v in load("frames.json")}
    assert seen == {(s, k) for s in frame.SUITES for k in schema.KINDS}


@pytest.mark.parametrize("vec", load("rejections.json"), ids=lambda v: v["name"])
def test_rejection_vectors(vec: dict[str, Any]) -> None:
    keys = frame.derive_keys(bytes.fromhex(vec["root_key"]), bytes.fromhex(vec["dev_id"]), suite_of(vec))
    data = bytes.fromhex(vec["frame"])
    for decode in (frame.decode, fastpath.decode):
        with pytest.raises(frame.FrameError) as info:
            decode(data, keys, vec["downlink"], allowed_of(vec))
        assert info.value.reason == vec["reason"]
        assert info.value.reason in frame.REASONS


def test_every_reason_has_a_vector() -> None:
    covered = {v["reason"] for v in load("rejections.json")}
    assert covered == set(frame.REASONS)


@pytest.mark.parametrize("suite", frame.SUITES, ids=lambda s: suites.LABELS[s])
@pytest.mark.parametrize("kind", sorted(schema.KINDS), ids=lambda k: schema.KINDS[k][0])
def test_size_budget_every_kind_at_maximum(kind: int, suite: int) -> None:
    """Every kind, every field at the value that encodes longest, fits the 51-byte LoRa budget, in both
    suites (they differ in algorithms only, never in length)."""
    keys = frame.derive_keys(os.urandom(32), os.urandom(8), suite)
    flags = frame.FLAG_DOWN if schema.is_downlink_kind(kind) else 0
    flags |= frame.FLAG_ENC | frame.FLAG_ACK_REQ if not flags else 0
    data = frame.encode(keys, keys.dev_id, 0xFFFFFFFF, 0xFFFFFFFF, kind, frame_sizes.max_fields(kind), flags)
    assert len(data) <= frame.MAX_FRAME == 51
    assert data[0] == 0x10 | suite
    assert frame.decode(data, keys, bool(flags & frame.FLAG_DOWN)).fields == frame_sizes.max_fields(kind)


def test_max_fields_really_is_the_longest() -> None:
    """max_fields must pick, for each field, the range end with the longest encoding."""
    for kind, k in schema.KINDS.items():
        mf = frame_sizes.max_fields(kind)
        for spec in k[3]:
            if spec[6] == schema.T_BYTES:
                assert len(mf[spec[0]]) == spec[5]
                continue
            candidates = [spec[4], spec[5], 0, -1, 23, 24, 255, 256, 65535, 65536, -25, -257, -65537]
            longest = max(len(cbor.dumps(c)) for c in candidates if spec[4] <= c <= spec[5])
            assert len(cbor.dumps(mf[spec[0]])) == longest


def field_values(kind: int) -> st.SearchStrategy[dict[int, Any]]:
    specs = schema.KINDS[kind][3]
    required = {s[0]: value_of(s) for s in specs if s[7]}
    optional = {s[0]: value_of(s) for s in specs if not s[7]}
    return st.fixed_dictionaries(required, optional=optional)


def value_of(spec: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    if spec[6] == schema.T_BYTES:
        return st.binary(min_size=spec[4], max_size=spec[5])
    return st.integers(spec[4], spec[5])


@st.composite
def frames(draw: st.DrawFn) -> tuple[frame.Keys, int, int, int, dict[int, Any], int]:
    kind = draw(st.sampled_from(sorted(schema.KINDS)))
    keys = frame.derive_keys(draw(st.binary(min_size=32, max_size=32)), draw(st.binary(min_size=8, max_size=8)),
                             draw(st.sampled_from(frame.SUITES)))
    flags = frame.FLAG_DOWN if schema.is_downlink_kind(kind) else 0
    flags |= draw(st.sampled_from([0, frame.FLAG_ENC, frame.FLAG_ACK_REQ, frame.FLAG_QUEUED, frame.FLAG_TEST, 0x0F]))
    return (keys, kind, draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFFFFFF)),
            draw(field_values(kind)), flags)


@settings(max_examples=400, deadline=None)
@given(frames())
def test_round_trip_every_kind(case: tuple[frame.Keys, int, int, int, dict[int, Any], int]) -> None:
    keys, kind, fcnt, time, fields, flags = case
    data = frame.encode(keys, keys.dev_id, fcnt, time, kind, fields, flags)
    down = bool(flags & frame.FLAG_DOWN)
    for decode in (frame.decode, fastpath.decode):
        f = decode(data, keys, down)
        assert f.fields == fields
        assert (f.header.kind, f.header.fcnt, f.header.time) == (kind, fcnt, time)
        assert f.header.flags & 0x0F == (flags & 0x0F) | (
            frame.FLAG_ENC if schema.KINDS[kind][1] >= schema.SENSITIVE else 0)


def test_encoder_refuses_what_the_decoder_would_reject() -> None:
    keys = frame.derive_keys(bytes(32), bytes(8))
    cases = [
        (schema.K_WATER_LEVEL, {1: 20001}, 0, "out_of_range"),
        (schema.K_WATER_LEVEL, {2: 1}, 0, "missing_field"),
        (schema.K_WATER_LEVEL, {1: 1, 9: 1}, 0, "unknown_field"),
        (schema.K_WATER_LEVEL, {1: True}, 0, "bad_type"),
        (schema.C_ACK, {1: 1}, 0, "bad_direction"),
        (schema.K_SMOKE, {1: 0}, frame.FLAG_DOWN, "bad_direction"),
        (99, {}, 0, "unknown_kind"),
        (schema.K_WATER_LEVEL, {1: 1}, 0x10, "bad_flags"),
    ]
    for kind, fields, flags, reason in cases:
        assert isinstance(fields, dict)
        with pytest.raises(frame.FrameError) as info:
            frame.encode(keys, keys.dev_id, 1, 1, kind, fields, flags)
        assert info.value.reason == reason


@pytest.mark.parametrize("suite", frame.SUITES)
def test_keys_never_show_in_repr(suite: int) -> None:
    root = bytes.fromhex("ab" * 32)
    keys = frame.derive_keys(root, bytes(8), suite)
    frame.encode(keys, bytes(8), 1, 1, schema.K_WATER_METER, {1: 1})  # fills the suite-2 caches
    text = repr(keys) + str(keys)
    for secret in (root, keys.mic_up, keys.mic_down, keys.enc):
        assert secret.hex() not in text


def test_suite_names() -> None:
    assert (suites.suite_id("intl"), suites.suite_id("sm")) == (1, 2)
    for bad in ("SM", "", None, 2, "aes"):
        with pytest.raises(ValueError):
            suites.suite_id(bad)
    with pytest.raises(ValueError):
        frame.derive_keys(bytes(32), bytes(8), 3)


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0 and b:
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1 and b:
        del b[rng.randrange(len(b)):]
    elif op == 2:
        b.extend(rng.randbytes(rng.randrange(1, 40)))
    elif op == 3 and b:
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
    elif op == 4 and len(b) > frame.HEADER_LEN:
        # replace the body with random CBOR-ish bytes but keep the frame well-sized
        body = bytes(rng.choice([0xA1, 0xBF, 0x81, 0x9F, 0xC1, 0xF9, 0x1B, 0x5F, 0x01, 0x20]) for _ in range(8))
        b = b[: frame.HEADER_LEN] + bytearray(body) + b[-frame.MIC_LEN:]
    else:
        b = bytearray(rng.randbytes(rng.randrange(0, 300)))
    return bytes(b)


def sealed(rng: random.Random, keys: frame.Keys) -> bytes:
    """A frame with a valid MIC around a random header and a random CBOR-ish body, so the fuzz reaches
    the decoder's CBOR and schema checks, not only the MIC."""
    kind = rng.choice([*sorted(schema.KINDS), 0, 42, 200])
    flags = rng.choice([0, frame.FLAG_ENC, frame.FLAG_ACK_REQ, frame.FLAG_DOWN])
    atoms = [0xA0, 0xA1, 0xA2, 0xA3, 0xBF, 0x81, 0x9F, 0xC1, 0xF9, 0xF5, 0x1B, 0x19, 0x5F, 0x41, 0x01, 0x02, 0x0F,
             0x20, 0x3A, 0xFF, 0x00]
    if rng.random() < 0.5:
        body = bytes(rng.choice(atoms) if rng.random() < 0.7 else rng.randrange(256)
                     for _ in range(rng.randrange(1, 24)))
    else:  # well-formed maps with boundary values: reaches the schema checks
        values = [0, 1, -1, 3, 24, 255, 65535, 65536, 2**32 - 1, -(2**31) - 1, 20001, b"\x00", True]
        body = cbor.dumps({rng.randrange(1, 17): rng.choice(values) for _ in range(rng.randrange(0, 5))})
    if flags & frame.FLAG_ENC:
        body = crypto.ctr_xor(keys.enc, bool(flags & frame.FLAG_DOWN), keys.dev_id, 3, body, keys.cipher)
    msg = bytes((0x10 | keys.suite, kind, flags)) + keys.dev_id + (3).to_bytes(4, "big") + (9).to_bytes(4, "big")
    msg += body
    return msg + frame.compute_mic(keys, bool(flags & frame.FLAG_DOWN), msg)


ALLOWED_CHOICES: list[frozenset[int] | None] = [None, None, None, frozenset(frame.SUITES),
                                                frozenset({frame.SUITE_INTL}), frozenset({frame.SUITE_SM})]


@pytest.mark.parametrize("suite", frame.SUITES, ids=lambda s: suites.LABELS[s])
def test_fuzz_random_and_mutated_frames(suite: int) -> None:
    """At least 100,000 random and mutated frames per suite: only FrameError with a known reason, same
    verdict from both decoders, also under a gateway allow-list. LIFELINE_FUZZ_N raises the count for longer
    campaigns."""
    n = int(os.environ.get("LIFELINE_FUZZ_N", "100000"))
    rng = random.Random(20261122 + suite)
    keys = frame.derive_keys(bytes(range(32)), bytes.fromhex("70b3d57ed0000001"), suite)
    seeds = [bytes.fromhex(v["frame"]) for v in load("frames.json") + load("rejections.json")]
    # frames under the fuzz key so that mutations get past the MIC check sometimes
    for kind in sorted(schema.KINDS):
        flags = frame.FLAG_DOWN if schema.is_downlink_kind(kind) else 0
        seeds.append(frame.encode(keys, keys.dev_id, 7, 7, kind, frame_sizes.max_fields(kind), flags))
    reasons: dict[str, int] = {}
    accepted = 0
    for i in range(n):
        if i % 4 == 0:
            data = rng.randbytes(rng.randrange(0, 64))
        elif i % 4 == 1:
            data = sealed(rng, keys)
        else:
            data = mutate(rng, rng.choice(seeds))
        down = bool(len(data) > 2 and data[2] & frame.FLAG_DOWN)
        if rng.random() < 0.05:
            down = not down  # the receiver expects the other direction
        allowed = rng.choice(ALLOWED_CHOICES)
        verdicts: list[tuple[str, object]] = []
        for decode in (frame.decode, fastpath.decode) if i % 10 == 0 else (fastpath.decode,):
            try:
                f = decode(data, keys, down, allowed)
                verdicts.append(("ok", tuple(sorted(f.fields.items()))))
            except frame.FrameError as e:
                assert e.reason in frame.REASONS
                verdicts.append(("rejected", e.reason))
        assert len(set(verdicts)) == 1, (data.hex(), verdicts)
        if verdicts[0][0] == "ok":
            accepted += 1
        else:
            reason = str(verdicts[0][1])
            reasons[reason] = reasons.get(reason, 0) + 1
    assert sum(reasons.values()) + accepted == n
    # the campaign must reach deep into the decoder, not stop at the length check
    for reason in ("truncated", "too_long", "bad_version", "bad_mic", "bad_cbor", "too_deep", "unknown_kind",
                   "unknown_field", "bad_type", "out_of_range", "missing_field", "trailing_bytes",
                   "not_encrypted", "bad_direction", "bad_suite", "wrong_suite", "suite_not_allowed"):
        assert reasons.get(reason, 0) > 0, (reason, reasons)


def test_memory_is_bounded_for_the_worst_input() -> None:
    keys = frame.derive_keys(bytes(32), bytes(8))
    worst = [bytes((0x11, 3, 0)) + bytes(8) + bytes(8) + b"\x9b" + b"\xff" * 8 + bytes(frame.MAX_INPUT - 28),
             b"\x11" * 100000, bytes(frame.MAX_INPUT)]
    tracemalloc.start()
    try:
        for data in worst:
            for decode in (frame.decode, fastpath.decode):
                with pytest.raises(frame.FrameError):
                    decode(data, keys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


@pytest.mark.parametrize(("body", "deterministic"), [
    ("a1011a00012345", True),  # {1: 74565}: deterministic (4-byte head)
    ("a101c243012345", False),  # the same value as a bignum (tag 2): same length, not deterministic
    ("a2011a00012345021864", True),  # {1: 74565, 2: 100}
    ("a201c243012345021864", False),  # bignum beside a plain value
    ("a2011a0001234502c24164", False),  # 100 as a bignum: one byte longer
    ("a2011a0001234502c1", False),  # a tag on nothing
    ("a1011ac0c0c0c0", True),  # tag-head bytes inside a value: deterministic, compared byte for byte
])
def test_fast_path_is_not_fooled_by_encodings_of_the_same_length(body: str, deterministic: bool) -> None:
    """The fast path proves determinism by length (any other encoding of an item is longer) and leaves
    bodies that might hold a tag to a byte-for-byte comparison: a bignum can be as short as the plain
    integer. Both decoders must agree, and only a deterministic body hands its bytes on."""
    dev = bytes.fromhex("4c4c000000000002")
    keys = frame.derive_keys(bytes(range(32)), dev)
    plain = bytes.fromhex(body)
    msg = bytes(((frame.VERSION << 4) | frame.SUITE, schema.K_WATER_METER, frame.FLAG_ENC)) + dev \
        + (5).to_bytes(4, "big") + (200_000_000).to_bytes(4, "big") + fastpath.ctr_xor(keys.enc, False, dev, 5, plain)
    data = msg + crypto.hmac_sha256(keys.mic_up, msg)[:frame.MIC_LEN]
    outcomes: list[tuple[str, object]] = []
    for decode in (frame.decode, fastpath.decode):
        try:
            outcomes.append(("ok", decode(data, keys).fields))
        except frame.FrameError as e:
            outcomes.append(("rejected", e.reason))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0][0] == "ok") == deterministic
    assert (type(outcomes[1][1]) is fastpath.WireMap) == deterministic


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(sorted(schema.KINDS)), st.data())
def test_canonical_length_is_the_deterministic_encodings(kind: int, data: st.DataObject) -> None:
    """fastpath._canonical_len gives the length of the deterministic CBOR of valid ascending fields."""
    fields = data.draw(field_values(kind))
    ordered = dict(sorted(fields.items()))
    assert fastpath._canonical_len(kind, ordered) == len(cbor.dumps(fields))
    if len(ordered) > 1:
        assert fastpath._canonical_len(kind, dict(reversed(ordered.items()))) == -1


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([*sorted(schema.KINDS), 0, 200]),
       st.dictionaries(st.integers(-2, 25) | st.text(max_size=2),
                       st.integers(-(2**33), 2**33) | st.binary(max_size=20) | st.booleans() | st.none(), max_size=8))
def test_fast_field_check_agrees_with_the_reference(kind: int, fields: dict[Any, Any]) -> None:
    try:
        frame.validate_fields(kind, fields)
        ok = True
    except frame.FrameError:
        ok = False
    assert fastpath._plainly_valid(kind, fields) == ok


@settings(max_examples=300, deadline=None)
@given(frames())
def test_fast_path_map_carries_exactly_its_deterministic_encoding(
        case: tuple[frame.Keys, int, int, int, dict[int, Any], int]) -> None:
    """What the fast path hands on as a WireMap's bytes is the map's deterministic CBOR (the gateway signs
    those bytes instead of encoding the map again), for every kind, suite and flag combination."""
    keys, kind, fcnt, time, fields, flags = case
    data = frame.encode(keys, keys.dev_id, fcnt, time, kind, fields, flags)
    f = fastpath.decode(data, keys, bool(flags & frame.FLAG_DOWN))
    assert type(f.fields) is fastpath.WireMap
    assert f.fields.cbor == cbor.dumps(fields)
    assert f.fields == fields


@pytest.mark.parametrize("body", [
    bytes.fromhex("a3011901f4020c0f190d48"),  # {1: 500, 2: 12, 15: 3400}: deterministic
    bytes.fromhex("a3020c011901f40f190d48"),  # same map, keys out of order
    bytes.fromhex("a301190000020c0f190d48"),  # 0 in a two-byte head (not shortest)
    bytes.fromhex("a3011901f4010c0f190d48"),  # key 1 twice
])
def test_fast_path_takes_only_deterministic_bodies_and_agrees_with_the_reference(body: bytes) -> None:
    """The fast path re-encodes the decoded map in wire order; a body that is not deterministic CBOR must
    get the reference decoder's verdict (accepted or not), never a different one from the fast path."""
    dev = bytes.fromhex("4c4c000000000001")
    keys = frame.derive_keys(bytes(range(32)), dev)
    msg = bytes(((frame.VERSION << 4) | frame.SUITE, schema.K_WATER_LEVEL, 0)) + dev + (5).to_bytes(4, "big") \
        + (200_000_000).to_bytes(4, "big") + body
    data = msg + crypto.hmac_sha256(keys.mic_up, msg)[:frame.MIC_LEN]
    outcomes: list[tuple[str, object]] = []
    for decode in (frame.decode, fastpath.decode):
        try:
            fields = decode(data, keys).fields
            outcomes.append(("ok", fields))
            if type(fields) is fastpath.WireMap:  # bytes are handed on only when they are the canonical ones
                assert fields.cbor == body == cbor.dumps(dict(fields))
        except frame.FrameError as e:
            outcomes.append(("rejected", e.reason))
    assert outcomes[0] == outcomes[1]
    assert (type(outcomes[1][1]) is fastpath.WireMap) == (body == bytes.fromhex("a3011901f4020c0f190d48"))
