"""The gateway's Ed25519 signing key on disk: generate, save (0600, atomically), load (refusing loose
permissions), export the public half.

The private key file is PKCS#8 PEM, unencrypted: the gateway must start unattended, so the protection is
the file mode (0600, owner only) and the disk. Errors name the file and the problem, never key material.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_KEY_FILE = 64 * 1024  # a PEM Ed25519 key is ~120 bytes; refuse to read anything absurd


class KeyFileError(ValueError):
    """A key file that cannot be used. ``reason`` is a short code, the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def generate() -> Ed25519PrivateKey:
    """A fresh Ed25519 key from the OS CSPRNG."""
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def save_private_key(
    key: Ed25519PrivateKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write ``key`` to ``path`` as PEM, mode 0600, atomically.

    The bytes go to a new temporary file in the same directory, created with O_CREAT|O_EXCL and mode 0600
    (so the key is never readable by others, not even for a moment), fsynced, then renamed over ``path``;
    the directory is fsynced so the rename survives a power cut. Refuses to replace an existing file
    unless ``overwrite``.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists; refusing to overwrite a signing key")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    data = private_pem(key)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask can only remove bits; make the mode exact
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an Ed25519 private key PEM, refusing a file that group or others may read or write."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyFileError("missing", f"key file {p} does not exist") from None
    except OSError as exc:
        raise KeyFileError("unreadable", f"cannot open key file {p}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError("not_a_file", f"key file {p} is not a regular file")
        loose = stat.S_IMODE(st.st_mode) & 0o077
        if loose:
            raise KeyFileError(
                "insecure_permissions",
                f"key file {p} has mode {stat.S_IMODE(st.st_mode):04o}: group/others may read or write it; "
                f"run `chmod 600 {p}` (and check who has seen it)",
            )
        if st.st_size > MAX_KEY_FILE:
            raise KeyFileError("bad_key", f"key file {p} is {st.st_size} bytes, too large for a key")
        chunks = []
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
            if sum(map(len, chunks)) > MAX_KEY_FILE:
                raise KeyFileError("bad_key", f"key file {p} is too large for a key")
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(b"".join(chunks), password=None)
    except (ValueError, TypeError):
        # The library's message could quote the file; say only what is wrong.
        raise KeyFileError("bad_key", f"key file {p} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("not_ed25519", f"key file {p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def public_key_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32-byte raw public key (RFC 8032 encoding), as platforms configure it."""
    return public_key(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    return public_key_raw(key).hex()


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public key."""
    return public_key(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


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
    except (ValueError, TypeError):
        raise KeyFileError("bad_key", "public key is not 32 raw bytes, 64 hex characters or PEM") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("not_ed25519", f"public key is a {type(key).__name__}, not Ed25519")
    return key
