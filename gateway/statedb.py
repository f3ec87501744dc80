"""One SQLite database file, owned by one thread.

All statements on a :class:`StateDB` run on its single worker thread (``run``), so the event loop never
blocks on a query or an fsync, and transactions never interleave. The file is created 0600 (SQLite gives
its -wal and -shm files the same mode), because it holds keys or decrypted readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from lifeline.gateway.log import Log

T = TypeVar("T")
_log = Log("db")


def ensure_private_file(path: Path) -> None:
    """Create ``path`` (and its directory, 0700) if missing; force mode 0600 on the file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode != 0o600:
            os.fchmod(fd, 0o600)
            _log.warning("tightened file mode", path=str(path), was=oct(mode))
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists() and stat.S_IMODE(side.stat().st_mode) != 0o600:
            os.chmod(side, 0o600)


def connect(path: Path, *, wal: bool = True) -> sqlite3.Connection:
    ensure_private_file(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA journal_size_limit=67108864")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class StateDB:
    """A connection plus the one thread that may use it."""

    def __init__(self, path: Path, *, cache_kib: int | None = None) -> None:
        self.path = path
        self.conn = connect(path)
        if cache_kib is not None:  # SQLite's page cache of this connection (default 2,000 KiB)
            self.conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{path.name}")

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self.conn)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run on the worker thread and wait (for start-up/shutdown code outside the loop)."""
        return self._executor.submit(fn, self.conn).result()

    def close(self) -> None:
        self._executor.submit(self.conn.close).result()
        self._executor.shutdown(wait=True)

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(str(self.path) + suffix).st_size
        return total


class Transaction:
    """``with Transaction(conn, durable=True): ...`` -> BEGIN IMMEDIATE ... COMMIT (or ROLLBACK).

    ``durable=False`` commits with synchronous=NORMAL (used only for deletions whose loss is harmless:
    a batch deleted after PUBACK may be republished after a crash; the platform dedupes it by seq).
    """

    def __init__(self, conn: sqlite3.Connection, durable: bool = True) -> None:
        self.conn = conn
        self.durable = durable

    def __enter__(self) -> sqlite3.Connection:
        if not self.durable:
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self.conn.execute("COMMIT")
            else:
                self.conn.execute("ROLLBACK")
        finally:
            if not self.durable:
                self.conn.execute("PRAGMA synchronous=FULL")
