"""The gateway's signing key on disk: generate, save (0600, atomically), load (refusing loose permissions),
export the public half. Suite ``intl`` keys are Ed25519, suite ``sm`` keys SM2 (:mod:`lifeline.protocols.sm2`);
``load_private_key`` stays Ed25519-only (technician keys use it), ``load_signing_key`` takes either.

The private key file is PKCS#8 PEM, unencrypted: the gateway must start unattended, so the protection is
the file mode (0600, owner only) and the disk. Errors name the file and the problem, never key material.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import overload

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lifeline.protocols import sm2

SUITES = ("intl", "sm")
PrivateKey = Ed25519PrivateKey | sm2.SM2PrivateKey
PublicKey = Ed25519PublicKey | sm2.SM2PublicKey

MAX_KEY_FILE = 64 * 1024  # a PEM Ed25519 key is ~120 bytes; refuse to read anything absurd


class KeyFileError(ValueError):
    """A key file that cannot be used. ``reason`` is a short code, the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def generate() -> Ed25519PrivateKey:
    """A fresh Ed25519 key from the OS CSPRNG."""
    return Ed25519PrivateKey.generate()


def generate_for(suite: str) -> PrivateKey:
    """A fresh signing key of ``suite`` ("intl": Ed25519, "sm": SM2) from the OS CSPRNG."""
    if suite == "intl":
        return Ed25519PrivateKey.generate()
    if suite == "sm":
        return sm2.SM2PrivateKey.generate()
    raise ValueError(f"unknown suite {suite!r}; expected one of {', '.join(SUITES)}")


def suite_of(key: PrivateKey | PublicKey) -> str:
    return "sm" if isinstance(key, sm2.SM2PrivateKey | sm2.SM2PublicKey) else "intl"


def private_pem(key: PrivateKey) -> bytes:
    if isinstance(key, sm2.SM2PrivateKey):
        return sm2.private_pem(key)
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def write_private_file(path: Path, data: bytes, *, overwrite: bool = False, what: str = "secret file") -> Path:
    """Write ``data`` to ``path`` mode 0600, atomically: a new temporary file in the same directory created
    with O_CREAT|O_EXCL and mode 0600 (never readable by others, not even for a moment), fsynced, renamed
    over ``path``, then the directory fsynced so the rename survives a power cut. Refuses to replace an
    existing file unless ``overwrite`` (the error names ``what`` and the path, never the content)."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite a {what}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask can only remove bits; make the mode exact
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_private_file(path: Path, what: str, *, max_bytes: int = MAX_KEY_FILE,
                      error: Callable[[str, str], Exception] = KeyFileError) -> bytes:
    """The bytes of a private file (a key, a key-encryption key, a PIN, a token), the counterpart of
    :func:`write_private_file`: opened without following a symbolic link, and only if it is a regular file of
    mode 0600 or stricter and at most ``max_bytes`` long. Otherwise raises ``error(reason, message)``, reason
    one of ``missing``, ``unreadable`` (a symbolic link lands here), ``not_a_file``, ``insecure_permissions``,
    ``too_large``; the message names ``what`` and ``path`` and what to do, never the content."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise error("missing", f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error("unreadable", f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error("not_a_file", f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise error("insecure_permissions", f"{what} {path} has mode {mode:04o}: group/others may read or "
                        f"write it; run `chmod 600 {path}` (and treat what it holds as disclosed)")
        data = b""
        if st.st_size <= max_bytes:  # refused unread if larger; one that grows while read is bounded too
            while len(data) <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - len(data))):
                data += chunk
    finally:
        os.close(fd)
    if max(st.st_size, len(data)) > max_bytes:
        raise error("too_large", f"{what} {path} is larger than {max_bytes} bytes")
    return data


def save_private_key(
    key: PrivateKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``key`` to ``path`` as PEM, mode 0600, atomically.

    The bytes go to a new temporary file in the same directory, created with O_CREAT|O_EXCL and mode 0600
    (so the key is never readable by others, not even for a moment), fsynced, then renamed over ``path``;
    the directory is fsynced so the rename survives a power cut. Refuses to replace an existing file
    unless ``overwrite``.
    """
    return write_private_file(Path(path), private_pem(key), overwrite=overwrite, what="signing key")


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an Ed25519 private key PEM, refusing a file that group or others may read or write."""
    p = Path(path)
    pem = read_private_file(p, "key file")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # The library's message could quote the file; say only what is wrong.
        raise KeyFileError("bad_key", f"key file {p} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("not_ed25519", f"key file {p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_signing_key(path: str | os.PathLike[str], suite: str | None = None) -> PrivateKey:
    """Read the gateway's signing key (Ed25519 or SM2 PEM), with the permission checks of
    :func:`load_private_key`; if ``suite`` is given the key must belong to it."""
    p = Path(path)
    pem = read_private_file(p, "key file")
    key: PrivateKey
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except UnsupportedAlgorithm:  # cryptography has no SM2 curve
        try:
            key = sm2.SM2PrivateKey.from_pem(pem)
        except sm2.Sm2Error:
            raise KeyFileError("bad_key", f"key file {p} is neither an Ed25519 nor an SM2 private key") from None
    except (ValueError, TypeError):
        raise KeyFileError("bad_key", f"key file {p} is not an unencrypted PEM private key") from None
    else:
        if not isinstance(loaded, Ed25519PrivateKey):
            raise KeyFileError("wrong_type", f"key file {p} holds a {type(loaded).__name__}; a gateway key "
                               "is Ed25519 (suite intl) or SM2 (suite sm)")
        key = loaded
    if suite is not None and suite_of(key) != suite:
        kind = "an SM2" if suite_of(key) == "sm" else "an Ed25519"
        raise KeyFileError("wrong_suite", f"key file {p} holds {kind} key (suite {suite_of(key)}), but the "
                           f"configured suite is {suite}; run `lifeline gateway keygen --suite {suite}`")
    return key


@overload
def public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey: ...
@overload
def public_key(key: sm2.SM2PrivateKey | sm2.SM2PublicKey) -> sm2.SM2PublicKey: ...
@overload
def public_key(key: PrivateKey | PublicKey) -> PublicKey: ...
def public_key(key: PrivateKey | PublicKey) -> PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey | sm2.SM2PrivateKey) else key


def public_key_raw(key: PrivateKey | PublicKey) -> bytes:
    """The raw public key as platforms configure it: Ed25519 32 bytes (RFC 8032), SM2 65 bytes 04||x||y."""
    pub = public_key(key)
    if isinstance(pub, sm2.SM2PublicKey):
        return pub.point()
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_hex(key: PrivateKey | PublicKey) -> str:
    return public_key_raw(key).hex()


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public key."""
    pub = public_key(key)
    if isinstance(pub, sm2.SM2PublicKey):
        return pub.pem()
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_verify_key(data: bytes | str) -> PublicKey:
    """A gateway public key of either suite: Ed25519 (32 raw bytes, 64 hex, PEM) or SM2 (65 raw bytes
    04||x||y, 130 hex, PEM with the SM2 curve)."""
    if isinstance(data, str):
        text = data.strip()
        if text.startswith("-----BEGIN"):
            data = text.encode("ascii", "replace")
        else:
            try:
                data = bytes.fromhex(text)
            except ValueError:
                raise KeyFileError("bad_key", "public key is neither hex nor PEM") from None
    if len(data) == 65 and data[:1] == b"\x04":
        try:
            return sm2.SM2PublicKey.from_point(data)
        except sm2.Sm2Error as e:
            raise KeyFileError("bad_key", f"65-byte public key is not an SM2 point: {e}") from None
    try:
        return load_public_key(data)
    except KeyFileError:
        if not data.lstrip().startswith(b"-----BEGIN"):
            raise
    try:
        return sm2.SM2PublicKey.from_pem(data)
    except sm2.Sm2Error:
        raise KeyFileError("bad_key", "public key PEM is neither Ed25519 nor SM2") from None


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """A public key from 32 raw bytes, 64 hex characters, or a PEM SubjectPublicKeyInfo."""
    if isinstance(data, str):
        text = data.strip()
        if text.startswith("-----BEGIN"):
            data = text.encode("ascii", "replace")
        else:
            try:
                data = bytes.fromhex(text)
            except ValueError:
                raise KeyFileError("bad_key", "public key is neither 64 hex characters nor PEM") from None
    if len(data) == 32:
        return Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError("bad_key", "public key is not 32 raw bytes, 64 hex characters or PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("not_ed25519", f"public key is a {type(key).__name__}, not Ed25519")
    return key
