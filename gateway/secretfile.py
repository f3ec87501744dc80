"""Small secret files (a key-encryption key, a token PIN): written 0600 atomically, read only if 0600.

Errors name the file and what is wrong with it, never its content.
"""

from __future__ import annotations

from pathlib import Path

from lifeline.protocols import keys

MAX_SECRET_FILE = 4096


class SecretFileError(Exception):
    """A secret file that cannot be used. ``reason`` is a short code; the message names the file."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_secret(path: Path, what: str) -> bytes:
    """The bytes of ``path`` (a regular file, mode 0600 or stricter, at most 4 KiB, not followed if a symbolic
    link), read by :func:`lifeline.protocols.keys.read_private_file`; SecretFileError otherwise."""
    return keys.read_private_file(path, what, max_bytes=MAX_SECRET_FILE, error=SecretFileError)


def write_secret(path: Path, data: bytes, *, overwrite: bool = False, what: str = "secret file") -> None:
    """Write ``data`` to ``path`` mode 0600 via a temporary file and a rename (never readable by others)."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} already exists; refusing to overwrite it")
    keys.write_private_file(path, data, overwrite=True, what=what)
