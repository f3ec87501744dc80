"""The durable buffer: accepted readings on disk until the platform has acknowledged them.

Tables (buffer DB, WAL, synchronous=FULL for every commit that admits data):

* ``readings``: one row per accepted reading or gateway event, ``record`` = the batch record's wire
  bytes (:func:`encode_reading`), ``radio`` = radio of the first reception (metrics), ``batch`` = outbox
  seq once signed (NULL while pending). The partial index
  ``readings_pending(priority, rx_ms) WHERE batch IS NULL`` serves batching, TTL and quota in order.
* ``outbox``: signed batches (the exact COSE bytes) not yet PUBACKed, with the row ids they carry.
* ``chain``: the signer's next seq and prev_hash, updated in the transaction that adds to the outbox.

Order: pending rows leave in (priority, first-reception time, acceptance order).
Policy (one place, :meth:`Buffer.enforce_quota` and :meth:`Buffer.sweep_ttl`): per-class TTL; over the disk
quota, drop the oldest pending periodic readings first, then events, alarms last; every drop is counted by
(reason, priority) and reported to the platform as an ``EV_BUFFER_DROP`` gateway event. Rows inside a
signed batch are never dropped: they leave only after PUBACK (:meth:`Buffer.outbox_done`).
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import cbor2

from lifeline.gateway import records as rec
from lifeline.gateway.clock import lifeline_time
from lifeline.gateway.config import BufferConfig
from lifeline.gateway.ingress.base import Reception
from lifeline.protocols import batch, schema
from lifeline.protocols.fastpath import WireMap

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings(
  id INTEGER PRIMARY KEY,
  priority INTEGER NOT NULL,
  rx_ms INTEGER NOT NULL,
  radio TEXT NOT NULL,
  batch INTEGER,
  record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_pending ON readings(priority, rx_ms) WHERE batch IS NULL;
CREATE TABLE IF NOT EXISTS outbox(
  seq INTEGER PRIMARY KEY,
  lane INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  count INTEGER NOT NULL,
  ids BLOB NOT NULL,
  data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chain(
  id INTEGER PRIMARY KEY CHECK (id = 0),
  gateway_id TEXT NOT NULL,
  next_seq INTEGER NOT NULL,
  prev_hash BLOB NOT NULL
);
"""

PRIORITIES = (schema.P_ALARM, schema.P_EVENT, schema.P_PERIODIC)
DROP_ORDER = (schema.P_PERIODIC, schema.P_EVENT, schema.P_ALARM)
_CHUNK = 4096
GATEWAY_RADIO = "gateway"  # radio column of gateway-made event records

Item = rec.Reading | rec.ReceptionUpdate | rec.GatewayEvent


class BufferError(Exception):
    """The buffer cannot be used (e.g. it belongs to another gateway id)."""


def wire_reception(r: Reception) -> batch.WireReception:
    return batch.WireReception(r.radio, r.adapter, r.rx_ms, r.rssi, r.snr_x10)


def encode_reading(r: rec.Reading, extra: Sequence[Reception] = ()) -> bytes:
    """Row format: the batch record exactly as it goes on the wire (``batch.encode_record``), encoded once
    here so that signing a batch is a concatenation (``BatchSigner.sign_encoded``).

    Hot path (every accepted reading): the bytes are put together from a device head and per-adapter
    templates, without building a BatchRecord; the field map's bytes are the node's own when the frame
    fast path vouched for them (a ``fastpath.WireMap``: the decrypted body is the map's deterministic CBOR),
    else built from CBOR heads; anything
    outside the plain shape (an odd type, an out-of-range value) takes ``batch.encode_record``, which
    gives the same bytes or the precise error. Tests check both byte for byte."""
    fast = _encode_reading_fast(r, extra)
    if fast is not None:
        return fast
    rx = tuple(wire_reception(x) for x in r.receptions) + tuple(wire_reception(x) for x in extra)
    return batch.encode_record(batch.BatchRecord(
        r.device_id, r.fcnt, r.node_time, r.rx_ms, r.kind, r.fields, r.data_class, rx, r.flags, rec.RT_READING,
        r.priority))


_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_I32 = 1 << 31
_UINT = tuple(bytes((i,)) if i < 24 else bytes((0x18, i)) for i in range(256))
_ARRAY = tuple(bytes((0x80 | i,)) for i in range(24))
_MAP = tuple(bytes((0xA0 | i,)) for i in range(24))
_NINT = tuple(bytes((0x20 | i,)) if i < 24 else bytes((0x38, i)) for i in range(256))
_RX_HEAD: dict[tuple[str, str], bytes] = {}  # b"\x85" + radio + adapter as CBOR text, per adapter
_RX_HEAD_MAX = 1024


def _head(major: int, n: int) -> bytes:
    """CBOR head of major type ``major`` with argument 0 <= n < 2**64 (shortest form)."""
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 256:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n <= _U32:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")


def _u(n: int) -> bytes:
    """CBOR unsigned head (major 0) for 0 <= n <= 2**32 - 1 (callers check the range)."""
    if n < 256:
        return _UINT[n]
    if n < 0x10000:
        return b"\x19" + n.to_bytes(2, "big")
    return b"\x1a" + n.to_bytes(4, "big")


def _i32(v: int | None) -> bytes:
    if v is None:
        return b"\xf6"
    if v >= 0:
        return _UINT[v] if v < 256 else (b"\x19" + v.to_bytes(2, "big") if v < 0x10000 else
                                         b"\x1a" + v.to_bytes(4, "big"))
    n = -1 - v
    return _NINT[n] if n < 256 else (b"\x39" + n.to_bytes(2, "big") if n < 0x10000 else
                                     b"\x3a" + n.to_bytes(4, "big"))


def _rx_bytes(x: Reception) -> bytes | None:
    rssi, snr, rx_ms = x.rssi, x.snr_x10, x.rx_ms
    if (type(rx_ms) is not int or not 0 <= rx_ms <= _U64
            or (rssi is not None and (type(rssi) is not int or not -_I32 <= rssi < _I32))
            or (snr is not None and (type(snr) is not int or not -_I32 <= snr < _I32))):
        return None
    key = (x.radio, x.adapter)
    head = _RX_HEAD.get(key)
    if head is None:
        if type(x.radio) is not str or type(x.adapter) is not str:
            return None
        head = b"\x85" + cbor2.dumps(x.radio) + cbor2.dumps(x.adapter)
        if len(_RX_HEAD) < _RX_HEAD_MAX:
            _RX_HEAD[key] = head
    return head + _head(0, rx_ms) + _i32(rssi) + _i32(snr)


def _append_map(parts: list[bytes], fields: object) -> bool:
    """Append the deterministic CBOR of a plain field map (uint keys < 2**16, int or bytes values) to
    ``parts``; False for anything else (the generic encoder then gives the bytes or the precise error)."""
    if type(fields) is not dict:
        return False
    nf = len(fields)
    if nf >= 24:
        return False
    parts.append(_MAP[nf])
    for k in sorted(fields):  # uint keys: RFC 8949 core deterministic order is numeric order
        v = fields[k]
        if type(k) is not int or not 0 <= k < 0x10000:
            return False
        parts.append(_UINT[k] if k < 256 else b"\x19" + k.to_bytes(2, "big"))
        if type(v) is int:
            if 0 <= v < 256:
                parts.append(_UINT[v])
            elif 0 <= v <= _U64:
                parts.append(_head(0, v))
            elif -_U64 - 1 <= v < 0:
                parts.append(_head(1, -1 - v))
            else:
                return False
        elif type(v) is bytes:
            parts.append(_head(2, len(v)))
            parts.append(v)
        else:
            return False
    return True


def _encode_reading_fast(r: rec.Reading, extra: Sequence[Reception]) -> bytes | None:
    dev, fcnt, node_time, kind, fields = r.device_id, r.fcnt, r.node_time, r.kind, r.fields
    rxs = r.receptions
    if (type(fcnt) is not int or type(node_time) is not int or type(kind) is not int or not 0 <= fcnt <= _U32
            or not 0 <= node_time <= _U32 or not 0 <= kind < 256 or not rxs
            or r.data_class not in (0, 1, 2, 3) or r.flags not in (0, 1, 2, 3, 4, 5, 6, 7)
            or r.priority not in (0, 1, 2) or type(r.data_class) is not int or type(r.flags) is not int
            or type(r.priority) is not int):
        return None
    if type(dev) is not bytes or len(dev) != 8:
        return None
    parts = [b"\xab\x01\x48" + dev + b"\x02", _u(fcnt), b"\x03", _u(node_time), b"\x04", b"", b"\x05",
             _UINT[kind], b"\x06"]
    if type(fields) is WireMap:
        parts.append(fields.cbor)  # the node's own deterministic CBOR of this map (fastpath.decode_parsed)
    elif not _append_map(parts, fields):
        return None
    rx_ms = rxs[0].rx_ms
    if type(rx_ms) is not int or not 0 <= rx_ms <= _U64:
        return None
    parts[5] = _head(0, rx_ms)
    parts.append(b"\x07")
    parts.append(_UINT[r.data_class])
    n = len(rxs) + len(extra)
    if n >= 24:
        return None
    parts.append(b"\x08")
    parts.append(_ARRAY[n])
    for x in rxs:
        b = _rx_bytes(x)
        if b is None:
            return None
        parts.append(b)
    for x in extra:
        b = _rx_bytes(x)
        if b is None:
            return None
        parts.append(b)
    parts.append(b"\x09")
    parts.append(_UINT[r.flags])
    parts.append(b"\x0a\x00\x0b")
    parts.append(_UINT[r.priority])
    return b"".join(parts)


def encode_event(e: rec.GatewayEvent) -> bytes:
    return batch.encode_record(batch.BatchRecord(
        e.device_id, e.fcnt, lifeline_time(e.at_ms), e.at_ms, e.code, e.fields, schema.INTERNAL,
        tuple(wire_reception(x) for x in e.receptions), 0, rec.RT_EVENT, e.priority))


def decode_record(blob: bytes) -> batch.BatchRecord:
    m = cbor2.loads(blob)
    return batch.BatchRecord(
        device_id=m[1], fcnt=m[2], node_time=m[3], rx_ms=m[4], kind=m[5], fields=m[6], data_class=m[7],
        receptions=tuple(batch.WireReception(*x) for x in m[8]), flags=m[9], record_type=m[10], priority=m[11])


def with_flags(blob: bytes, flags: int) -> bytes:
    """Set record flag bits in an encoded record without re-encoding it. The record map ends with
    keys 9 (flags), 10 (record type), 11 (priority), each a one-byte uint, so the flags value is the
    fifth byte from the end."""
    if not flags:
        return blob
    if blob[-6] != 0x09 or blob[-5] > 7:
        raise ValueError("not an encoded batch record")
    return blob[:-5] + bytes((blob[-5] | flags,)) + blob[-4:]


def add_receptions(blob: bytes, extra: Sequence[Reception]) -> bytes:
    r = decode_record(blob)
    rx = r.receptions + tuple(wire_reception(x) for x in extra)
    return batch.encode_record(batch.BatchRecord(
        r.device_id, r.fcnt, r.node_time, r.rx_ms, r.kind, r.fields, r.data_class, rx, r.flags, r.record_type,
        r.priority))


def _id_list(ids: Sequence[int]) -> str:
    """Row ids as a JSON array for ``json_each`` (ids are ints: nothing to escape)."""
    return "[" + ",".join(map(str, ids)) + "]"


@dataclass(frozen=True, slots=True)
class Drop:
    reason: int  # rec.DROP_TTL / DROP_QUOTA
    priority: int
    count: int
    oldest_rx_ms: int


@dataclass(slots=True)
class WriteResult:
    inserted: list[int] = field(default_factory=lambda: [0, 0, 0])  # per priority
    updated_receptions: int = 0
    late_receptions: int = 0  # turned into EV_RECEPTIONS events
    drops: list[Drop] = field(default_factory=list)


class PendingRow(NamedTuple):
    """A pending buffer row as the forwarder reads it (immutable; a tuple, made straight from the SQLite
    row: the forwarder reads up to 4,096 of these per batch, a frozen dataclass costs twice as much)."""

    id: int
    priority: int
    rx_ms: int
    radio: str
    record: bytes


_pending_row = PendingRow._make


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    lane: int
    created_ms: int
    count: int
    ids: tuple[int, ...]
    data: bytes


class Buffer:
    """Table logic; every method takes the connection and runs on the state DB's thread."""

    def __init__(self, config: BufferConfig) -> None:
        self.quota_bytes = config.quota_mb << 20
        self.ttl_ms = tuple(t * 1000 for t in config.ttl_s)
        self.pending = [0, 0, 0]  # rows with batch IS NULL, per priority
        self.outbox_count = 0
        self.over_quota = False  # True while only unsendable (signed, in-flight) data keeps us over
        self._next_id = 1
        self._page_size = 4096

    # ---------------------------------------------------------------------------------- open / ids

    def open(self, conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self.pending = [0, 0, 0]
        for prio, n in conn.execute("SELECT priority, count(*) FROM readings WHERE batch IS NULL GROUP BY priority"):
            if prio in PRIORITIES:
                self.pending[prio] = n
        self.outbox_count = int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        top = conn.execute("SELECT max(id) FROM readings").fetchone()[0]
        self._next_id = (top or 0) + 1

    def allocate_id(self) -> int:
        i = self._next_id
        self._next_id = i + 1
        return i

    def used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * self._page_size

    # ---------------------------------------------------------------------------------- write path

    def write_group(self, conn: sqlite3.Connection, items: Sequence[Item], now_ms: int) -> WriteResult:
        """Insert a group inside the caller's transaction, attach duplicate receptions, enforce the quota."""
        res = WriteResult()
        readings: list[rec.Reading] = []
        events: list[rec.GatewayEvent] = []
        extra: dict[int, list[Reception]] = {}
        local: set[int] = set()
        for it in items:
            if isinstance(it, rec.Reading):
                readings.append(it)
                local.add(it.id)
            elif isinstance(it, rec.GatewayEvent):
                events.append(it)
        for it in items:
            if not isinstance(it, rec.ReceptionUpdate):
                continue
            if it.reading_id in local:
                extra.setdefault(it.reading_id, []).append(it.reception)
                res.updated_receptions += 1
                continue
            row = conn.execute("SELECT priority, batch, record FROM readings WHERE id=?", (it.reading_id,)).fetchone()
            if row is not None and row[1] is None:
                conn.execute("UPDATE readings SET record=? WHERE id=?",
                             (add_receptions(row[2], (it.reception,)), it.reading_id))
                res.updated_receptions += 1
            else:
                prio = row[0] if row is not None else it.priority
                events.append(rec.GatewayEvent(rec.EV_RECEPTIONS, it.device_id, it.reception.rx_ms, prio,
                                               fcnt=it.fcnt, receptions=(it.reception,)))
                res.late_receptions += 1
        rows: list[tuple[int, int, int, str, bytes]] = []
        for r in readings:
            rows.append((r.id, r.priority, r.rx_ms, r.receptions[0].radio, encode_reading(r, extra.get(r.id, ()))))
            res.inserted[r.priority] += 1
        for e in events:
            rows.append((self.allocate_id(), e.priority, e.at_ms, GATEWAY_RADIO, encode_event(e)))
            res.inserted[e.priority] += 1
        conn.executemany("INSERT INTO readings(id, priority, rx_ms, radio, record) VALUES (?,?,?,?,?)", rows)
        for p in PRIORITIES:
            self.pending[p] += res.inserted[p]
        self.enforce_quota(conn, now_ms, res)
        return res

    def _delete_oldest(self, conn: sqlite3.Connection, prio: int, limit: int,
                       before_rx_ms: int | None = None) -> tuple[int, int]:
        if before_rx_ms is None:
            sel = conn.execute("SELECT id, rx_ms FROM readings WHERE batch IS NULL AND priority=? "
                               "ORDER BY rx_ms, id LIMIT ?", (prio, limit)).fetchall()
        else:
            sel = conn.execute("SELECT id, rx_ms FROM readings WHERE batch IS NULL AND priority=? AND rx_ms < ? "
                               "ORDER BY rx_ms, id LIMIT ?", (prio, before_rx_ms, limit)).fetchall()
        if not sel:
            return 0, 0
        conn.executemany("DELETE FROM readings WHERE id=?", [(i,) for i, _ in sel])
        self.pending[prio] -= len(sel)
        return len(sel), min(rx for _, rx in sel)

    def _record_drops(self, conn: sqlite3.Connection, drops: list[Drop], now_ms: int) -> None:
        rows = []
        for d in drops:
            row_id = self.allocate_id()
            ev = rec.GatewayEvent(rec.EV_BUFFER_DROP, rec.GATEWAY_DEVICE, now_ms, schema.P_EVENT, fields={
                rec.EVF_PRIORITY: d.priority, rec.EVF_REASON: d.reason, rec.EVF_COUNT: d.count,
                rec.EVF_OLDEST_RX_MS: d.oldest_rx_ms}, fcnt=rec.EV_FCNT_BASE + row_id)
            rows.append((row_id, ev.priority, now_ms, GATEWAY_RADIO, encode_event(ev)))
        conn.executemany("INSERT INTO readings(id, priority, rx_ms, radio, record) VALUES (?,?,?,?,?)", rows)
        self.pending[schema.P_EVENT] += len(rows)

    def enforce_quota(self, conn: sqlite3.Connection, now_ms: int, res: WriteResult | None = None) -> list[Drop]:
        """Drop oldest pending periodic, then event, then alarm rows until the file fits the quota."""
        used = self.used_bytes(conn)
        drops: list[Drop] = []
        if used <= self.quota_bytes:
            self.over_quota = False
            return drops
        for prio in DROP_ORDER:
            count, oldest = 0, 0
            while used > self.quota_bytes:
                want = max(64, (used - self.quota_bytes) // 64)
                n, first = self._delete_oldest(conn, prio, min(want, _CHUNK))
                if n == 0:
                    break
                oldest = first if count == 0 else min(oldest, first)
                count += n
                used = self.used_bytes(conn)
            if count:
                drops.append(Drop(rec.DROP_QUOTA, prio, count, oldest))
            if used <= self.quota_bytes:
                break
        self.over_quota = used > self.quota_bytes
        if drops:
            self._record_drops(conn, drops, now_ms)
            if res is not None:
                res.drops.extend(drops)
        return drops

    def sweep_ttl(self, conn: sqlite3.Connection, now_ms: int) -> list[Drop]:
        """Inside a transaction: delete pending rows older than their class TTL."""
        drops: list[Drop] = []
        for prio in DROP_ORDER:
            cutoff = now_ms - self.ttl_ms[prio]
            count, oldest = 0, 0
            while True:
                n, first = self._delete_oldest(conn, prio, _CHUNK, before_rx_ms=cutoff)
                if n == 0:
                    break
                oldest = first if count == 0 else min(oldest, first)
                count += n
            if count:
                drops.append(Drop(rec.DROP_TTL, prio, count, oldest))
        if drops:
            self._record_drops(conn, drops, now_ms)
        return drops

    # ---------------------------------------------------------------------------------- read path

    def select_pending(self, conn: sqlite3.Connection, prio: int, rx_from: int, rx_to: int,
                       limit: int) -> list[PendingRow]:
        """Pending rows of one priority with rx_from <= rx_ms < rx_to, oldest first."""
        return [_pending_row(r) for r in conn.execute(
            "SELECT id, priority, rx_ms, radio, record FROM readings WHERE batch IS NULL AND priority=? AND rx_ms >= ? "
            "AND rx_ms < ? ORDER BY rx_ms, id LIMIT ?", (prio, rx_from, rx_to, limit))]

    def first_pending_rx(self, conn: sqlite3.Connection, prio: int, rx_from: int = -(1 << 62)) -> int | None:
        row = conn.execute("SELECT rx_ms FROM readings WHERE batch IS NULL AND priority=? AND rx_ms >= ? "
                           "ORDER BY rx_ms LIMIT 1", (prio, rx_from)).fetchone()
        return None if row is None else int(row[0])

    def count_pending_before(self, conn: sqlite3.Connection, rx_to: int) -> int:
        n = 0
        for p in PRIORITIES:
            n += conn.execute("SELECT count(*) FROM readings WHERE batch IS NULL AND priority=? AND rx_ms < ?",
                              (p, rx_to)).fetchone()[0]
        return n

    # ---------------------------------------------------------------------------------- outbox

    def load_chain(self, conn: sqlite3.Connection, gateway_id: str) -> tuple[int, bytes]:
        row = conn.execute("SELECT gateway_id, next_seq, prev_hash FROM chain WHERE id=0").fetchone()
        if row is None:
            return 0, batch.ZERO_HASH
        if row[0] != gateway_id:
            raise BufferError(f"buffer belongs to gateway {row[0]!r}, not {gateway_id!r}; use another state_dir")
        return int(row[1]), bytes(row[2])

    def outbox_add(self, conn: sqlite3.Connection, gateway_id: str, signed: batch.SignedBatch, created_ms: int,
                   ids: Sequence[int]) -> None:
        """Inside a transaction: the signed batch, its rows marked, the chain advanced (all or nothing)."""
        conn.execute("INSERT INTO outbox(seq, lane, created_ms, count, ids, data) VALUES (?,?,?,?,?,?)",
                     (signed.seq, signed.lane, created_ms, signed.count, array("q", ids).tobytes(), signed.data))
        # one statement for the whole batch (a per-row executemany costs ~0.7 us more per row)
        conn.execute("UPDATE readings SET batch=? WHERE id IN (SELECT value FROM json_each(?))",
                     (signed.seq, _id_list(ids)))
        conn.execute("INSERT INTO chain(id, gateway_id, next_seq, prev_hash) VALUES (0,?,?,?) ON CONFLICT(id) "
                     "DO UPDATE SET next_seq=excluded.next_seq, prev_hash=excluded.prev_hash",
                     (gateway_id, signed.seq + 1, signed.digest))
        self.outbox_count += 1

    def mark_assigned(self, rows: Sequence[PendingRow]) -> None:
        for r in rows:
            self.pending[r.priority] -= 1

    def outbox_done(self, conn: sqlite3.Connection, seq: int, ids: Sequence[int]) -> None:
        """After PUBACK: delete the batch and its readings."""
        conn.execute("DELETE FROM readings WHERE id IN (SELECT value FROM json_each(?))", (_id_list(ids),))
        if conn.execute("DELETE FROM outbox WHERE seq=?", (seq,)).rowcount:
            self.outbox_count -= 1

    def outbox_entries(self, conn: sqlite3.Connection) -> list[OutboxEntry]:
        out = []
        for seq, lane, created, count, ids, data in conn.execute(
                "SELECT seq, lane, created_ms, count, ids, data FROM outbox ORDER BY seq"):
            a = array("q")
            a.frombytes(ids)
            out.append(OutboxEntry(seq, lane, created, count, tuple(a), bytes(data)))
        return out

    def oldest_pending_rx(self, conn: sqlite3.Connection) -> int | None:
        vals = [v for v in (self.first_pending_rx(conn, p) for p in PRIORITIES) if v is not None]
        return min(vals) if vals else None
