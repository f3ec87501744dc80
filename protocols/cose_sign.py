"""Pluggable COSE_Sign1 signers and verifiers for the gateway's batches (docs/protocol.md section 5.1).

A batch names its signature suite in the protected header (``alg``, RFC 9052 label 1), so a verifier never
guesses. The batch code (:mod:`lifeline.protocols.batch`) does not know how a signature is made; it builds
the RFC 9052 ``Sig_structure`` and hands it to a :class:`SigningKey`:

* ``alg``: the COSE algorithm id written into the protected header (``-8`` EdDSA for suite ``intl``);
* ``suite``: the Lifeline suite name (``"intl"`` or ``"sm"``), for logs, status and errors;
* ``protected_extra()``: extra protected header entries (e.g. ``33`` x5chain), merged with Lifeline's
  own (alg, content type, kid); an empty map keeps the header exactly as before;
* ``sign(sig_structure)``: the signature bytes over the complete ``Sig_structure`` (the signer hashes it
  itself, as its algorithm prescribes).

An implementation may keep the private key anywhere (a file, a PKCS#11 token): only these four members are
used. The verifying side is a :class:`VerifyKey` (``alg``, ``suite``, ``signature_size``, ``verify``);
:func:`verify_key` turns a public key (object, raw bytes) into one, and :func:`signing_key` wraps a private key.

CPython only (cryptography; SM2 through lifeline.protocols.sm2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lifeline.protocols import sm2

SUITE_INTL: Final = "intl"
SUITE_SM: Final = "sm"
SUITES: Final = (SUITE_INTL, SUITE_SM)

ALG_EDDSA: Final = -8  # IANA COSE "EdDSA"; Lifeline signs it with Ed25519 only
# SM2 signature with SM3 over Z_A||M (GB/T 32918.2, user id per GB/T 35276). No IANA COSE id exists;
# this one is from the private-use range (< -65536) and is fixed for Lifeline (docs/protocol.md 5.1).
ALG_SM2_SM3: Final = -65537

ALG_SUITES: Final = {ALG_EDDSA: SUITE_INTL, ALG_SM2_SM3: SUITE_SM}
ALG_LABELS: Final = {ALG_EDDSA: "EdDSA, Ed25519", ALG_SM2_SM3: "SM2-SM3, Lifeline private use"}

@runtime_checkable
class SigningKey(Protocol):
    """Makes batch signatures. See the module docstring."""

    @property
    def alg(self) -> int: ...

    @property
    def suite(self) -> str: ...

    def protected_extra(self) -> Mapping[int, Any]: ...

    def sign(self, sig_structure: bytes) -> bytes: ...


@runtime_checkable
class VerifyKey(Protocol):
    """Checks batch signatures of one algorithm with one public key."""

    @property
    def alg(self) -> int: ...

    @property
    def suite(self) -> str: ...

    @property
    def signature_size(self) -> int: ...

    def verify(self, signature: bytes, sig_structure: bytes) -> None:
        """Return if ``signature`` holds over ``sig_structure``; otherwise raise
        ``cryptography.exceptions.InvalidSignature``."""
        ...


class Ed25519Signer:
    """Suite ``intl``: Ed25519 (RFC 8032, deterministic), COSE alg -8."""

    alg: Final = ALG_EDDSA
    suite: Final = SUITE_INTL

    __slots__ = ("_extra", "_key")

    def __init__(self, key: Ed25519PrivateKey, extra: Mapping[int, Any] | None = None) -> None:
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError("Ed25519Signer needs an Ed25519PrivateKey")
        self._key = key
        self._extra = dict(extra or {})

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def protected_extra(self) -> Mapping[int, Any]:
        return self._extra

    def sign(self, sig_structure: bytes) -> bytes:
        return self._key.sign(sig_structure)

    def verify_key(self) -> Ed25519Verifier:
        return Ed25519Verifier(self._key.public_key())

    def __repr__(self) -> str:  # never the key
        return "Ed25519Signer(alg=-8)"


class Ed25519Verifier:
    alg: Final = ALG_EDDSA
    suite: Final = SUITE_INTL
    signature_size: Final = 64

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key

    def raw(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def verify(self, signature: bytes, sig_structure: bytes) -> None:
        self._key.verify(signature, sig_structure)  # raises InvalidSignature

    def __repr__(self) -> str:
        return f"Ed25519Verifier({self.raw().hex()[:16]}…)"


class Sm2Signer:
    """Suite ``sm``: SM2 with SM3 over the Sig_structure, user id ``1234567812345678`` (GB/T 35276), private
    COSE alg -65537; the signature is r||s, 64 bytes (like COSE ECDSA). Randomized: two signatures of the
    same batch differ; both verify."""

    alg: Final = ALG_SM2_SM3
    suite: Final = SUITE_SM

    __slots__ = ("_extra", "_key")

    def __init__(self, key: sm2.SM2PrivateKey, extra: Mapping[int, Any] | None = None) -> None:
        if not isinstance(key, sm2.SM2PrivateKey):
            raise TypeError("Sm2Signer needs an sm2.SM2PrivateKey")
        self._key = key
        self._extra = dict(extra or {})

    @property
    def private_key(self) -> sm2.SM2PrivateKey:
        return self._key

    def protected_extra(self) -> Mapping[int, Any]:
        return self._extra

    def sign(self, sig_structure: bytes) -> bytes:
        return self._key.sign(sig_structure)

    def verify_key(self) -> Sm2Verifier:
        return Sm2Verifier(self._key.public_key())

    def __repr__(self) -> str:
        return f"Sm2Signer(alg={ALG_SM2_SM3})"


class Sm2Verifier:
    alg: Final = ALG_SM2_SM3
    suite: Final = SUITE_SM
    signature_size: Final = 64

    __slots__ = ("_key",)

    def __init__(self, key: sm2.SM2PublicKey) -> None:
        self._key = key

    @property
    def public_key(self) -> sm2.SM2PublicKey:
        return self._key

    def raw(self) -> bytes:
        return self._key.point()

    def verify(self, signature: bytes, sig_structure: bytes) -> None:
        self._key.verify(signature, sig_structure)  # raises InvalidSignature

    def __repr__(self) -> str:
        return f"Sm2Verifier({self.raw().hex()[:18]}…)"


class WithHeaders:
    """Any :class:`SigningKey` plus extra protected header entries (e.g. 33 x5chain): the gateway's
    certificate chain is attached this way whatever holds the key (file or token)."""

    __slots__ = ("_extra", "inner")

    def __init__(self, inner: SigningKey, extra: Mapping[int, Any]) -> None:
        self.inner = inner
        self._extra = {**inner.protected_extra(), **extra}

    @property
    def alg(self) -> int:
        return self.inner.alg

    @property
    def suite(self) -> str:
        return self.inner.suite

    def protected_extra(self) -> Mapping[int, Any]:
        return self._extra

    def sign(self, sig_structure: bytes) -> bytes:
        return self.inner.sign(sig_structure)

    def __repr__(self) -> str:
        return f"WithHeaders({self.inner!r}, labels={sorted(self._extra)})"


PrivateKeyLike: TypeAlias = "SigningKey | Ed25519PrivateKey | sm2.SM2PrivateKey"


def signing_key(key: object) -> SigningKey:
    """A :class:`SigningKey` for ``key``: an Ed25519PrivateKey or sm2.SM2PrivateKey is wrapped; a SigningKey
    passes through."""
    if isinstance(key, Ed25519PrivateKey):
        return Ed25519Signer(key)
    if isinstance(key, sm2.SM2PrivateKey):
        return Sm2Signer(key)
    if isinstance(key, SigningKey):
        return key
    raise TypeError(f"not a batch signing key: {type(key).__name__}")


def verify_key(key: object) -> VerifyKey:
    """A :class:`VerifyKey` for ``key``: Ed25519PublicKey, sm2.SM2PublicKey, raw bytes (32: Ed25519; 65, the
    uncompressed point 04||x||y: SM2), or a VerifyKey."""
    if isinstance(key, Ed25519PublicKey):
        return Ed25519Verifier(key)
    if isinstance(key, sm2.SM2PublicKey):
        return Sm2Verifier(key)
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return Ed25519Verifier(Ed25519PublicKey.from_public_bytes(bytes(key)))
    if isinstance(key, bytes | bytearray) and len(key) == 65:
        return Sm2Verifier(sm2.SM2PublicKey.from_point(bytes(key)))
    if isinstance(key, VerifyKey):
        return key
    raise TypeError("public_key must be an Ed25519PublicKey, an SM2PublicKey, 32 or 65 raw bytes, "
                    "or a cose_sign.VerifyKey")


def suite_of(key: object) -> str:
    """The suite of a private or public key object."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return SUITE_INTL
    if isinstance(key, sm2.SM2PrivateKey | sm2.SM2PublicKey):
        return SUITE_SM
    if isinstance(key, SigningKey | VerifyKey):
        return key.suite
    raise TypeError(f"not a Lifeline key: {type(key).__name__}")


def alg_label(alg: int) -> str:
    return f"{alg} ({ALG_LABELS[alg]})" if alg in ALG_LABELS else str(alg)
