"""Key-encryption keys (KEK): device root keys are stored in the registry wrapped, bound to their device id.

A wrapped key is ``suite (1) | nonce (12) | ciphertext (len(key)) | tag (16)`` with the AEAD's associated
data ``b"lifeline registry root key v1" | suite | device_id``: a blob copied onto another device's row, or
read with the other suite, does not open. Suites (docs/keys.md):

* ``0x01`` intl: AES-256-GCM (a 32-byte KEK in a file, or an AES-256 key in a PKCS#11 token).
* ``0x02`` sm: SM4-GCM (GB/T 32907 block cipher in GCM mode, as OpenSSL implements it; a 16-byte KEK).

Nonces are 96 random bits per wrap; a registry wraps a key per device and per re-key, far below the 2^32
wraps per KEK where random GCM nonces would need counting. The KEK itself lives in a 0600 file
(:class:`FileKek`, ``lifeline-kek <suite> <hex>``) or in a token (``gateway/hsm.py``); nothing here ever puts
key bytes into a message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lifeline.gateway.secretfile import SecretFileError, read_secret, write_secret

WRAP_INTL = 0x01
WRAP_SM = 0x02
SUITES = {"intl": WRAP_INTL, "sm": WRAP_SM}
SUITE_NAMES = {v: k for k, v in SUITES.items()}
KEY_BYTES = {WRAP_INTL: 32, WRAP_SM: 16}
CIPHER_NAMES = {WRAP_INTL: "AES-256-GCM", WRAP_SM: "SM4-GCM"}
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES
LABEL = b"lifeline registry root key v1"
FILE_MAGIC = "lifeline-kek"


class KekError(Exception):
    """A KEK that cannot be used, or a wrapped key that does not open. Never carries key bytes."""


class Kek(Protocol):
    """An AEAD under a key-encryption key (in memory or in a token)."""

    @property
    def suite(self) -> int: ...

    @property
    def source(self) -> str:
        """Where the KEK lives, for messages: ``file /etc/lifeline/registry.kek`` or a token and label."""
        ...

    def seal(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """ciphertext | tag."""
        ...

    def open(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """The plaintext; raises KekError when the tag does not verify."""
        ...


def _aad(suite: int, device_id: bytes) -> bytes:
    return LABEL + bytes([suite]) + device_id


def wrap(kek: Kek, device_id: bytes, key: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return bytes([kek.suite]) + nonce + kek.seal(nonce, key, _aad(kek.suite, device_id))


def unwrap(kek: Kek, device_id: bytes, blob: bytes) -> bytes:
    """The key in ``blob``; KekError if it was wrapped under another suite, KEK or device id."""
    if len(blob) <= OVERHEAD:
        raise KekError(f"wrapped key is {len(blob)} bytes, too short")
    suite = blob[0]
    if suite != kek.suite:
        name = SUITE_NAMES.get(suite, f"unknown suite 0x{suite:02x}")
        raise KekError(f"wrapped under {name}, but the key-encryption key ({kek.source}) is "
                       f"{SUITE_NAMES[kek.suite]}")
    nonce, sealed = blob[1:1 + NONCE_BYTES], blob[1 + NONCE_BYTES:]
    return kek.open(nonce, sealed, _aad(suite, device_id))


class MemoryKek:
    """A KEK held in process memory (loaded from a file). ``repr`` shows the suite, never the key."""

    __slots__ = ("_key", "_source", "_suite")

    def __init__(self, suite: int, key: bytes, source: str = "memory") -> None:
        if suite not in KEY_BYTES:
            raise KekError(f"unknown KEK suite 0x{suite:02x}")
        if len(key) != KEY_BYTES[suite]:
            raise KekError(f"{SUITE_NAMES[suite]} KEK must be {KEY_BYTES[suite]} bytes, got {len(key)}")
        self._suite = suite
        self._key = key
        self._source = source
        if suite == WRAP_SM:
            try:
                self.seal(bytes(NONCE_BYTES), b"", b"")
            except UnsupportedAlgorithm:
                raise KekError("this OpenSSL build has no SM4; the sm KEK suite is unavailable") from None

    def __repr__(self) -> str:
        return f"MemoryKek({SUITE_NAMES[self._suite]}, {self._source})"

    @property
    def suite(self) -> int:
        return self._suite

    @property
    def source(self) -> str:
        return self._source

    def seal(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if self._suite == WRAP_INTL:
            return AESGCM(self._key).encrypt(nonce, data, aad)
        enc = Cipher(algorithms.SM4(self._key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        ct = enc.update(data) + enc.finalize()
        return ct + enc.tag

    def open(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        if len(data) < TAG_BYTES:
            raise KekError("wrapped key too short")
        try:
            if self._suite == WRAP_INTL:
                return AESGCM(self._key).decrypt(nonce, data, aad)
            ct, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
            dec = Cipher(algorithms.SM4(self._key), modes.GCM(nonce, tag)).decryptor()
            dec.authenticate_additional_data(aad)
            return dec.update(ct) + dec.finalize()
        except InvalidTag:
            raise KekError(f"does not open under the key-encryption key ({self._source}): "
                           "another KEK, another device id, or a damaged row") from None


def generate_file(path: Path, suite: str = "intl", *, overwrite: bool = False) -> None:
    """A new random KEK in ``path`` (mode 0600): one line ``lifeline-kek SUITE HEX``."""
    if suite not in SUITES:
        raise KekError(f"unknown KEK suite {suite!r} (intl or sm)")
    key = os.urandom(KEY_BYTES[SUITES[suite]])
    write_secret(path, f"{FILE_MAGIC} {suite} {key.hex()}\n".encode("ascii"), overwrite=overwrite,
                 what="key-encryption key file")


def load_file(path: Path) -> MemoryKek:
    """Read a KEK file; KekError naming the file (and never its content) when it cannot be used."""
    try:
        data = read_secret(path, "key-encryption key file")
    except SecretFileError as e:
        raise KekError(str(e)) from None
    parts = data.decode("ascii", "replace").split()
    if len(parts) != 3 or parts[0] != FILE_MAGIC:
        raise KekError(f"key-encryption key file {path}: expected one line '{FILE_MAGIC} SUITE HEX'")
    if parts[1] not in SUITES:
        raise KekError(f"key-encryption key file {path}: unknown suite {parts[1][:16]!r} (intl or sm)")
    suite = SUITES[parts[1]]
    try:
        key = bytes.fromhex(parts[2])
    except ValueError:
        raise KekError(f"key-encryption key file {path}: the key is not hex") from None
    if len(key) != KEY_BYTES[suite]:
        raise KekError(f"key-encryption key file {path}: a {parts[1]} KEK is {KEY_BYTES[suite]} bytes, "
                       f"this one is {len(key)}")
    return MemoryKek(suite, key, f"file {path}")


def describe(kek: Kek | None) -> str:
    """For status output: ``AES-256-GCM (file /etc/lifeline/registry.kek)`` or ``plaintext``."""
    if kek is None:
        return "plaintext"
    return f"{CIPHER_NAMES[kek.suite]} ({kek.source})"
