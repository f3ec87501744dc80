"""The Store interface of the platform sink and :func:`open_store` (a store chosen by URL).

A store keeps verified batches, their records, rejects and each gateway's hash-chain state. It is
idempotent and transactional: :meth:`Store.store_batch` commits the batch row, its new records (readings
unique on (device, fcnt), gateway events unique on (gateway, event seq)) and any broken chain link it
detected in ONE transaction and returns only after the commit, so the caller may then acknowledge the
message to its source. The same batch stored twice (a redelivery) changes nothing and says so.

URLs: ``sqlite:PATH`` (or a bare path; the embedded default, see :mod:`.sqlite_store`) and
``postgresql://…`` (:mod:`.pg_store`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lifeline.protocols import batch


class StoreError(Exception):
    """The store refused: a bad URL, an unusable database, a schema it cannot upgrade."""


class StoreUnavailable(StoreError):
    """A transient failure (database down, locked, connection lost): nothing was committed; retry later.

    A sink leaves the message unacknowledged so its source delivers it again."""


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """What one :meth:`Store.store_batch` committed."""

    redelivered: bool  # the batch (gateway, seq, digest) was stored before: nothing changed
    new_records: int
    duplicate_records: int  # records of this batch already stored (another batch or gateway carried them)
    broken_links: tuple[tuple[int, int], ...]  # (a, b): batch b's prev_hash is not batch a's digest


@dataclass(frozen=True, slots=True)
class StoredRecord:
    device: bytes
    fcnt: int
    record_type: int
    kind: int
    node_time: int
    rx_ms: int
    gateway: str
    seq: int
    lane: int
    flags: int
    priority: int
    fields: Mapping[str, Any]  # human-named, as batch.record_to_json renders them


@dataclass(frozen=True, slots=True)
class ChainReport:
    gateway: str
    batches: int
    highest: int | None
    gaps: tuple[tuple[int, int], ...]
    broken_links: tuple[tuple[int, int], ...]
    equivocations: tuple[int, ...]

    @property
    def intact(self) -> bool:
        return not (self.gaps or self.broken_links or self.equivocations)

    def to_json(self) -> dict[str, Any]:
        return {"gateway": self.gateway, "batches": self.batches, "highest": self.highest,
                "gaps": [list(g) for g in self.gaps], "broken_links": [list(b) for b in self.broken_links],
                "equivocations": list(self.equivocations), "intact": self.intact}


class Store(Protocol):
    """What the sink core needs from a store. Implementations are thread-safe."""

    @property
    def url(self) -> str:
        """Where the data lives, with any password removed (safe to log)."""
        ...

    def store_batch(self, b: batch.Batch, raw: bytes, sink_id: str, now_ms: int) -> StoreOutcome:
        """Store a verified batch in one transaction; returns after the commit. Raises StoreUnavailable."""
        ...

    def record_reject(self, topic: str, reason: str, detail: str, size: int, sink_id: str, now_ms: int) -> None:
        """Keep a rejected message's topic, reason and detail (not its bytes)."""
        ...

    def record_count(self) -> int:
        """Records stored (by every sink sharing the store)."""
        ...

    def batch_count(self) -> int: ...

    def record_keys(self) -> list[tuple[bytes, int]]:
        """(device, fcnt) of every stored reading, in storage order."""
        ...

    def records(self, device: bytes | None = None) -> list[StoredRecord]:
        """Stored records in storage order (optionally of one device)."""
        ...

    def rejects(self) -> list[tuple[str, str, str]]:
        """(topic, reason, detail) of every rejected message, oldest first."""
        ...

    def reject_counts(self) -> dict[str, int]: ...

    def records_by_sink(self) -> dict[str, int]:
        """How many records each sink stored."""
        ...

    def chain_report(self, gateway: str | None = None) -> list[ChainReport]:
        """Gaps, broken links and equivocations per gateway, from every batch in the store."""
        ...

    def close(self) -> None: ...


def parse_sqlite_url(url: str) -> Path | None:
    """The path of ``sqlite:PATH`` / ``sqlite://PATH`` / a bare path; None for another scheme."""
    if url.startswith("sqlite://"):
        return Path(url[len("sqlite://"):])
    if url.startswith("sqlite:"):
        return Path(url[len("sqlite:"):])
    if "://" in url:
        return None
    return Path(url)


def open_store(url: str | Path, *, create: bool = True) -> Store:
    """Open (and with ``create`` create or upgrade) the store at ``url``. Raises StoreError."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        try:
            from lifeline.tools.platform.pg_store import PgStore
        except ImportError as e:
            raise StoreError(f"the PostgreSQL store needs psycopg ({e}): pip install 'lifeline[platform]'") from None

        return PgStore(text, create=create)
    path = parse_sqlite_url(text)
    if path is None or not str(path):
        scheme = text.split("://", 1)[0]
        raise StoreError(f"store URL scheme {scheme!r} is not supported (sqlite:PATH or postgresql://…)")
    from lifeline.tools.platform.sqlite_store import SqliteStore

    if not create and not path.exists():
        raise StoreError(f"{path} does not exist")
    return SqliteStore(path)
