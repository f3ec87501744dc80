"""Suite 1 primitives against independent implementations (stdlib hmac, the `cryptography` package)."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.protocols import aes, crypto, fastpath, frame


def test_aes_fips197_appendix_c1() -> None:
    key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    pt = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert aes.AesEcb(key).encrypt(pt).hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


def test_aes_fips197_appendix_b() -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    pt = bytes.fromhex("3243f6a8885a308d313198a2e0370734")
    assert aes.AesEcb(key).encrypt(pt).hex() == "3925841d02dc09fbdc118597196a0b32"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=64).filter(lambda b: len(b) % 16 == 0))
def test_aes_matches_cryptography(key: bytes, data: bytes) -> None:
    ref = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(data)
    assert aes.AesEcb(key).encrypt(data) == ref


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=150), st.binary(max_size=300))
def test_hmac_matches_stdlib(key: bytes, msg: bytes) -> None:
    assert crypto.hmac_sha256(key, msg) == hmac.digest(key, msg, hashlib.sha256)


def test_kdf_labels_separate_purposes_and_devices() -> None:
    root = bytes(range(32))
    a = frame.derive_keys(root, bytes(8))
    b = frame.derive_keys(root, bytes(7) + b"\x01")
    assert len({a.mic_up, a.mic_down, a.enc, b.mic_up, b.mic_down, b.enc}) == 6
    assert a.mic_up == hmac.digest(root, b"lifeline/1/mic-up" + bytes(8), "sha256")
    assert a.enc == hmac.digest(root, b"lifeline/1/enc" + bytes(8), "sha256")[:16]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.booleans(), st.binary(min_size=8, max_size=8),
       st.integers(0, 2**32 - 1), st.binary(max_size=200))
def test_ctr_three_implementations_agree(key: bytes, down: bool, dev: bytes, fcnt: int, data: bytes) -> None:
    ours = crypto.ctr_xor(key, down, dev, fcnt, data)
    assert fastpath.ctr_xor(key, down, dev, fcnt, data) == ours
    nonce = bytes((1, int(down))) + dev + fcnt.to_bytes(4, "big") + b"\x00\x00"
    assert Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor().update(data) == ours
    assert crypto.ctr_xor(key, down, dev, fcnt, ours) == data


def test_constant_time_compare() -> None:
    assert crypto.ct_equal(b"abc", b"abc")
    assert not crypto.ct_equal(b"abc", b"abd")
    assert not crypto.ct_equal(b"abc", b"ab")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=150), st.binary(max_size=300))
def test_fast_mic_matches_stdlib_hmac(key: bytes, msg: bytes) -> None:
    assert fastpath.mic(key, msg) == hmac.digest(key, msg, hashlib.sha256)[:8]
    assert fastpath.mic(key, msg) == fastpath.mic(key, msg)  # nothing kept between calls changes the result


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=8, max_size=8))
def test_fast_key_derivation_matches_the_device_code(root: bytes, dev: bytes) -> None:
    a, b = frame.derive_keys(root, dev), fastpath.derive_keys(root, dev)
    assert (a.dev_id, a.mic_up, a.mic_down, a.enc) == (b.dev_id, b.mic_up, b.mic_down, b.enc)
