"""The re-key KDF and the two re-key kinds (docs/keys.md, "Rotating a device key")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifeline.protocols import frame, rekey, schema_table, suites

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "vectors" / "rekey.json").read_text())
DEV = bytes.fromhex("70b3d57ed0000001")
ROOT = bytes(range(32))


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v["name"])
def test_rekey_kdf_vectors(v: dict[str, object]) -> None:
    got = rekey.pending_root(suites.suite_id(v["suite"]), bytes.fromhex(str(v["root_key"])),
                             bytes.fromhex(str(v["dev_id"])), int(str(v["epoch"])), bytes.fromhex(str(v["seed"])))
    assert got.hex() == v["pending"]


def test_both_suites_are_covered_and_differ() -> None:
    assert {v["suite"] for v in VECTORS} == {"intl", "sm"}
    a = rekey.pending_root(frame.SUITE_INTL, ROOT, DEV, 1, bytes(16))
    b = rekey.pending_root(frame.SUITE_SM, ROOT, DEV, 1, bytes(16))
    assert a != b and len(a) == len(b) == 32
    assert a != rekey.pending_root(frame.SUITE_INTL, ROOT, DEV, 2, bytes(16))  # the epoch is bound
    assert a != rekey.pending_root(frame.SUITE_INTL, ROOT, DEV, 1, b"\x01" + bytes(15))


@pytest.mark.parametrize(("epoch", "seed"), [(0, bytes(16)), (65536, bytes(16)), (1, bytes(15)), (1, bytes(17))])
def test_rekey_kdf_refuses_bad_input(epoch: int, seed: bytes) -> None:
    with pytest.raises(ValueError):
        rekey.pending_root(frame.SUITE_INTL, ROOT, DEV, epoch, seed)
    with pytest.raises(ValueError):
        rekey.pending_root(9, ROOT, DEV, 1, bytes(16))


@pytest.mark.parametrize("suite", [frame.SUITE_INTL, frame.SUITE_SM])
def test_rekey_frames_are_always_encrypted_and_fit(suite: int) -> None:
    keys = frame.derive_keys(ROOT, DEV, suite)
    down = frame.encode(keys, DEV, 0xFFFFFFFF, 0xFFFFFFFF, schema_table.C_REKEY, {1: 65535, 2: b"\xff" * 16},
                        frame.FLAG_DOWN)
    assert down[2] & frame.FLAG_ENC and len(down) <= frame.MAX_FRAME
    assert b"\xff" * 16 not in down  # the seed never travels in clear
    f = frame.decode(down, keys, True)
    assert f.fields == {1: 65535, 2: b"\xff" * 16}
    up = frame.encode(keys, DEV, 1, 7, schema_table.K_REKEY_CONFIRM, {1: 4})
    assert up[2] & frame.FLAG_ENC
    assert frame.decode(up, keys).fields == {1: 4}
    with pytest.raises(frame.FrameError) as e:
        frame.encode(keys, DEV, 1, 7, schema_table.C_REKEY, {1: 1, 2: bytes(8)}, frame.FLAG_DOWN)
    assert e.value.reason == "out_of_range"
