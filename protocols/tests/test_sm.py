"""Suite 2 (sm) primitives: SM3 (GB/T 32905), SM4 (GB/T 32907), HMAC-SM3, the KDF and SM4-CTR, against the
standards' examples and against an independent implementation (OpenSSL through `cryptography`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.protocols import crypto, crypto_sm, fastpath, frame, sm3, sm4, suites

SM = json.loads((Path(__file__).resolve().parent.parent / "vectors" / "sm.json").read_text())


def test_sm3_standard_examples() -> None:
    # GB/T 32905-2016 appendix A.1 and A.2, written out here as well as in sm.json
    assert sm3.digest(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert sm3.digest(b"abcd" * 16).hex() == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


def test_sm4_standard_example() -> None:
    # GB/T 32907-2016 appendix A.1: key = plaintext
    k = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert sm4.Sm4Ecb(k).encrypt(k).hex() == "681edf34d206965e86b3e94f536e4246"


def test_sm4_standard_million_iterations_independent_implementation() -> None:
    """GB/T 32907-2016 appendix A.2 (10^6 encryptions of the example) through OpenSSL: checks that the
    reference the hypothesis tests below trust is the standard's SM4. Pure Python would take minutes."""
    k = bytes.fromhex("0123456789abcdeffedcba9876543210")
    enc = Cipher(algorithms.SM4(k), modes.ECB()).encryptor()
    block = k
    for _ in range(1_000_000):
        block = enc.update(block)
    assert block.hex() == "595298c7c6fd271f0402f804c33d3f66"


def test_sm4_round_keys_of_the_standard_example() -> None:
    # GB/T 32907-2016 appendix A.1 lists rk0 and rk31
    rk = sm4.expand_key(bytes.fromhex("0123456789abcdeffedcba9876543210"))
    assert (rk[0], rk[31]) == (0xF12186F9, 0x9124A012)


@pytest.mark.parametrize("vec", SM["sm3"], ids=lambda v: v["name"])
def test_sm3_vectors(vec: dict[str, Any]) -> None:
    assert sm3.digest(bytes.fromhex(vec["msg"])).hex() == vec["digest"]


@pytest.mark.parametrize("vec", SM["sm4"], ids=lambda v: v["name"])
def test_sm4_vectors(vec: dict[str, Any]) -> None:
    assert sm4.Sm4Ecb(bytes.fromhex(vec["key"])).encrypt(bytes.fromhex(vec["plaintext"])).hex() == vec["ciphertext"]


@pytest.mark.parametrize("vec", SM["hmac_sm3"], ids=lambda v: v["name"])
def test_hmac_sm3_vectors(vec: dict[str, Any]) -> None:
    key, msg = bytes.fromhex(vec["key"]), bytes.fromhex(vec["msg"])
    assert sm3.hmac(key, msg).hex() == vec["mac"] == fastpath.hmac_sm3(key, msg).hex()


@pytest.mark.parametrize("vec", SM["kdf"], ids=lambda v: v["name"])
def test_kdf_vectors(vec: dict[str, Any]) -> None:
    root, dev = bytes.fromhex(vec["root_key"]), bytes.fromhex(vec["dev_id"])
    for keys in (frame.derive_keys(root, dev, frame.SUITE_SM), fastpath.derive_keys(root, dev, frame.SUITE_SM)):
        assert (keys.mic_up.hex(), keys.mic_down.hex(), keys.enc.hex()) == (vec["mic_up"], vec["mic_down"], vec["enc"])
    assert crypto_sm.derive(root, crypto_sm.LABEL_OTA, dev).hex() == vec["ota"]


@pytest.mark.parametrize("vec", SM["sm4_ctr"], ids=lambda v: v["name"])
def test_sm4_ctr_vectors(vec: dict[str, Any]) -> None:
    args = (bytes.fromhex(vec["key"]), vec["downlink"], bytes.fromhex(vec["dev_id"]), vec["fcnt"],
            bytes.fromhex(vec["data"]))
    assert crypto_sm.ctr_xor(*args).hex() == vec["out"]
    assert fastpath.ctr_xor(*args, suite=frame.SUITE_SM).hex() == vec["out"]


def _sm3_ref(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_sm3_matches_openssl(data: bytes) -> None:
    assert sm3.digest(data) == _sm3_ref(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=150), st.binary(max_size=200))
def test_hmac_sm3_matches_openssl(key: bytes, msg: bytes) -> None:
    h = chmac.HMAC(key, hashes.SM3())
    h.update(msg)
    ref = h.finalize()
    assert crypto_sm.hmac_sm3(key, msg) == ref
    pads = sm3.hmac_pads(key)
    assert sm3.hmac_with(pads, msg) == ref == sm3.hmac_with(pads, msg)  # pad states are reused, never consumed


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=64).filter(lambda b: len(b) % 16 == 0))
def test_sm4_matches_openssl(key: bytes, data: bytes) -> None:
    assert sm4.Sm4Ecb(key).encrypt(data) == Cipher(algorithms.SM4(key), modes.ECB()).encryptor().update(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.booleans(), st.binary(min_size=8, max_size=8),
       st.integers(0, 2**32 - 1), st.binary(max_size=200))
def test_sm4_ctr_three_implementations_agree(key: bytes, down: bool, dev: bytes, fcnt: int, data: bytes) -> None:
    ours = crypto_sm.ctr_xor(key, down, dev, fcnt, data)
    assert fastpath.ctr_xor(key, down, dev, fcnt, data, frame.SUITE_SM) == ours
    nonce = bytes((1, int(down))) + dev + fcnt.to_bytes(4, "big") + b"\x00\x00"
    assert Cipher(algorithms.SM4(key), modes.CTR(nonce)).encryptor().update(data) == ours
    assert crypto_sm.ctr_xor(key, down, dev, fcnt, ours) == data
    if len(data) >= 8:  # the suites differ: the same key and counter give another keystream (a short
        assert ours != crypto.ctr_xor(key, down, dev, fcnt, data)  # one may agree by chance: 1 in 256 a byte)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=8, max_size=8))
def test_kdf_separates_suites_purposes_and_matches_the_fast_path(root: bytes, dev: bytes) -> None:
    a = frame.derive_keys(root, dev, frame.SUITE_SM)
    b = fastpath.derive_keys(root, dev, frame.SUITE_SM)
    i = frame.derive_keys(root, dev, frame.SUITE_INTL)
    assert (a.suite, a.dev_id, a.mic_up, a.mic_down, a.enc) == (b.suite, b.dev_id, b.mic_up, b.mic_down, b.enc)
    assert len({a.mic_up, a.mic_down, a.enc, i.mic_up, i.mic_down, i.enc}) == 6


def test_suite_names_and_labels() -> None:
    assert suites.NAMES[crypto_sm.SUITE] == crypto_sm.NAME == "LL2-HSM3/64-SM4CTR"
    assert crypto_sm.LABEL_MIC_UP == b"lifeline/2/mic-up"
