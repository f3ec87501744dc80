"""Small secret files (a key-encryption key, a token PIN): written 0600 atomically, read only if 0600.

Errors name the file and what is wrong with it, never its content.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lifeline.protocols import keys

MAX_SECRET_FILE = 4096


class SecretFileError(Exception):
    """A secret file that cannot be used. ``reason`` is a short code; the message names the file."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_secret(path: Path, what: str) -> bytes:
    """The bytes of ``path`` (a regular file, mode 0600 or stricter, at most 4 KiB)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise SecretFileError("missing", f"{what} {path} does not exist") from None
    except OSError as e:
        raise SecretFileError("unreadable", f"cannot open {what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError("not_a_file", f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SecretFileError("insecure_permissions",
                                  f"{what} {path} has mode {mode:04o}: group/others may read or write it; "
                                  f"run `chmod 600 {path}` (and treat the secret as disclosed)")
        data = os.read(fd, MAX_SECRET_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE:
        raise SecretFileError("too_large", f"{what} {path} is larger than {MAX_SECRET_FILE} bytes")
    return data


def write_secret(path: Path, data: bytes, *, overwrite: bool = False, what: str = "secret file") -> None:
    """Write ``data`` to ``path`` mode 0600 via a temporary file and a rename (never readable by others)."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} already exists; refusing to overwrite it")
    keys.write_private_file(path, data, overwrite=True, what=what)
