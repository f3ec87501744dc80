"""Our CBOR subset against cbor2, in both directions, plus the shared vectors and the refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.protocols import cbor

VECTORS = Path(__file__).resolve().parent.parent / "vectors"

scalars = (
    st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.booleans()
    | st.none()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.integers(-1000, 1000) | st.text(max_size=5), inner,
                                                                  max_size=5),
    max_leaves=20,
)


def unjson(v: Any) -> Any:
    if isinstance(v, dict) and "bytes" in v:
        return bytes.fromhex(v["bytes"])
    if isinstance(v, dict) and "map" in v:
        return {unjson(k): unjson(x) for k, x in v["map"]}
    if isinstance(v, list):
        return [unjson(x) for x in v]
    return v


@pytest.mark.parametrize("vec", json.loads((VECTORS / "cbor.json").read_text()), ids=lambda v: v["name"])
def test_vectors(vec: dict[str, Any]) -> None:
    value = unjson(vec["value"])
    assert cbor.dumps(value).hex() == vec["hex"]
    assert cbor.loads(bytes.fromhex(vec["hex"])) == value
    assert cbor2.loads(bytes.fromhex(vec["hex"])) == value


@settings(max_examples=500, deadline=None)
@given(values)
def test_ours_decodes_with_cbor2(value: Any) -> None:
    data = cbor.dumps(value)
    assert cbor2.loads(data) == value
    # deterministic encoding: cbor2's canonical mode agrees for integer-keyed and short text-keyed maps
    assert cbor.loads(data) == value


@settings(max_examples=500, deadline=None)
@given(values)
def test_cbor2_decodes_with_ours(value: Any) -> None:
    data = cbor2.dumps(value)
    assert cbor.loads(data) == value


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.integers(0, 23), st.integers(-(2**31), 2**32 - 1), max_size=10))
def test_frame_bodies_match_cbor2_canonical(body: dict[int, int]) -> None:
    assert cbor.dumps(body) == cbor2.dumps(body, canonical=True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_cbor"),
        (b"\x1c", "bad_cbor"),  # reserved additional info
        (b"\x9f\x01\xff", "bad_cbor"),  # indefinite array
        (b"\xf9\x3c\x00", "bad_cbor"),  # half float
        (b"\xc0\x01", "bad_cbor"),  # tag
        (b"\x62\xff\xfe", "bad_cbor"),  # invalid utf-8
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "bad_cbor"),  # 2^64 items claimed
        (b"\x5a\xff\xff\xff\xff", "bad_cbor"),  # 4 GiB string claimed
        (b"\x01\x02", "trailing_bytes"),
        (b"\x81" * 20 + b"\x01", "too_deep"),
        (b"\xa2\x01\x01\x01\x02", "bad_cbor"),  # duplicate key
        (b"\xa1\x81\x01\x01", "bad_cbor"),  # array as key
    ],
)
def test_refusals(data: bytes, reason: str) -> None:
    with pytest.raises(cbor.CBORError) as info:
        cbor.loads(data)
    assert info.value.reason == reason


def test_item_budget() -> None:
    with pytest.raises(cbor.CBORError):
        cbor.loads(cbor.dumps(list(range(100))), max_items=50)
    assert cbor.loads(cbor.dumps(list(range(49))), max_items=50) == list(range(49))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_refuse(data: bytes) -> None:
    try:
        cbor.loads(data)
    except cbor.CBORError as e:
        assert e.reason in ("bad_cbor", "too_deep", "trailing_bytes")
