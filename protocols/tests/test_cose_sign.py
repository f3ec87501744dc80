"""The pluggable batch signer interface: Ed25519 through it is byte-identical, a third-party SigningKey (as a
PKCS#11 token would be) plugs in with extra protected headers, and the verifier dispatches by the protected
alg, refusing a batch whose alg is not the key's suite."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import batch, cose_sign, schema
from lifeline.protocols.batch import BatchError, BatchRecord, BatchSigner, WireReception
from lifeline.protocols.cose_sign import SigningKey, VerifyKey

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
REC = BatchRecord(device_id=bytes(8), fcnt=1, node_time=5, rx_ms=9, kind=schema.K_SMOKE, fields={1: 2},
                  data_class=schema.SENSITIVE, receptions=(WireReception("lora", "lora0", 9, -90, 70),))


class TokenSigner:
    """What an out-of-tree signer looks like: only the four SigningKey members, no key object exposed."""

    def __init__(self, key: Ed25519PrivateKey, extra: Mapping[int, Any]) -> None:
        self._key = key
        self._extra = dict(extra)
        self.calls: list[bytes] = []

    @property
    def alg(self) -> int:
        return cose_sign.ALG_EDDSA

    @property
    def suite(self) -> str:
        return cose_sign.SUITE_INTL

    def protected_extra(self) -> Mapping[int, Any]:
        return self._extra

    def sign(self, sig_structure: bytes) -> bytes:
        self.calls.append(sig_structure)
        return self._key.sign(sig_structure)


class OtherSuiteVerifier:
    """A verifier for the SM2 alg id that must never be reached for an Ed25519-signed batch."""

    alg = cose_sign.ALG_SM2_SM3
    suite = cose_sign.SUITE_SM
    signature_size = 64

    def verify(self, signature: bytes, sig_structure: bytes) -> None:
        raise AssertionError("alg dispatch failed: an SM2 verifier was asked to check an EdDSA batch")


def test_ed25519_through_the_interface_is_byte_identical() -> None:
    plain = BatchSigner(KEY, "gw-01").sign([REC], lane=0, created_ms=7)
    wrapped = BatchSigner(cose_sign.Ed25519Signer(KEY), "gw-01").sign([REC], lane=0, created_ms=7)
    assert plain.data == wrapped.data
    assert batch.protected_header("gw-01", KEY) == batch.protected_header("gw-01")
    assert isinstance(cose_sign.Ed25519Signer(KEY), SigningKey)
    assert isinstance(cose_sign.Ed25519Signer(KEY).verify_key(), VerifyKey)


def test_a_foreign_signing_key_plugs_in_with_extra_protected_headers() -> None:
    token = TokenSigner(KEY, {33: b"certificate-bytes"})
    sb = BatchSigner(token, "gw-01").sign([REC], lane=0, created_ms=7)
    assert len(token.calls) == 1
    prot = cbor2.loads(cbor2.loads(sb.data).value[0])
    assert prot == {1: -8, 3: batch.CONTENT_TYPE, 4: b"gw-01", 33: b"certificate-bytes"}
    assert batch.verify(sb.data, KEY.public_key()).records == (REC,)
    # the extra header is protected: changing it breaks the signature
    tampered = sb.data.replace(b"certificate-bytes", b"certificate-bytez")
    with pytest.raises(BatchError) as info:
        batch.verify(tampered, KEY.public_key())
    assert info.value.reason == "bad_signature"


def test_a_signer_may_not_override_lifeline_labels() -> None:
    for label in (1, 2, 3, 4):
        with pytest.raises(BatchError) as info:
            BatchSigner(TokenSigner(KEY, {label: 0}), "gw-01")
        assert info.value.reason == "bad_header"


def test_verifier_dispatches_by_the_protected_alg() -> None:
    sb = BatchSigner(KEY, "gw-01").sign([REC], lane=0, created_ms=7)
    with pytest.raises(BatchError) as info:
        batch.verify(sb.data, OtherSuiteVerifier())
    assert info.value.reason == "bad_alg"
    assert "suite intl" in info.value.detail and "suite sm" in info.value.detail


def test_a_resolver_sees_the_headers_and_picks_the_key() -> None:
    token = TokenSigner(KEY, {33: b"cert"})
    sb = BatchSigner(token, "gw-01").sign([REC], lane=0, created_ms=7)
    seen: list[tuple[dict[Any, Any], dict[Any, Any]]] = []

    def resolve(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> VerifyKey:
        seen.append((dict(protected), dict(unprotected)))
        if protected.get(33) != b"cert":
            raise BatchError("untrusted", "no certificate")
        return cose_sign.verify_key(KEY.public_key())

    assert batch.verify(sb.data, resolve).seq == 0
    assert seen[0][0][33] == b"cert" and seen[0][1] == {}
    plain = BatchSigner(KEY, "gw-01").sign([REC], lane=0, created_ms=7)
    with pytest.raises(BatchError) as info:
        batch.verify(plain.data, resolve)
    assert info.value.reason == "untrusted"


def test_unknown_key_types_are_refused_plainly() -> None:
    with pytest.raises(TypeError):
        cose_sign.signing_key(b"\x00" * 32)
    with pytest.raises(TypeError):
        cose_sign.verify_key(b"\x00" * 31)
    assert "key" not in repr(cose_sign.Ed25519Signer(KEY)).lower().replace("ed25519signer", "")


def test_ed25519_verifier_raises_invalid_signature() -> None:
    v = cose_sign.verify_key(KEY.public_key())
    sig = KEY.sign(b"x")
    v.verify(sig, b"x")
    with pytest.raises(InvalidSignature):
        v.verify(sig, b"y")
