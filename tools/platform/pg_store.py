"""The city-scale store: PostgreSQL through psycopg 3, shared by any number of sink processes.

Schema and design (docs/platform.md has the diagram and the reasoning):

- ``readings`` is range-partitioned by day of the gateway's receive time (``rx_ms``); partitions are
  created ahead by ``lifeline platform-sink migrate`` and on demand by the store (under an advisory lock,
  in their own transaction). Retention drops whole partitions (:meth:`PgStore.drop_partitions_before`).
- Dedupe of readings cannot be a unique index on the partitioned table: PostgreSQL requires the partition
  key in it, and (device, fcnt, rx day) is NOT a correct key: the same reading heard by two gateways, or
  redelivered from a gateway's backlog, carries a different ``rx_ms`` and may fall on another day. So the
  key lives in ``reading_keys`` (device, fcnt) PRIMARY KEY, not partitioned; a reading row is inserted only
  for the keys that ``INSERT … ON CONFLICT DO NOTHING RETURNING`` reports as new, in the same statement
  and transaction. Two sinks racing on one key: the second waits on the first's uncommitted index entry
  and then sees the conflict, so exactly one stores the row.
- Gateway events (record type 1) go to ``events``, unique on (gateway, device, fcnt); the rules engine's
  audit events are readable through the ``rule_events`` view.
- Per gateway, ``gateway_chain`` holds the chain state (highest seq and its digest, batches, missing
  seqs); its row is locked (``SELECT … FOR UPDATE``) for the whole storing transaction, so the batches of
  one gateway are stored one at a time across every sink and the neighbour checks see each other's
  commits. Broken links and equivocations found on the way go to ``chain_breaks``.
- ``alarms`` follow raised/cleared alarm records and the gateway's alarm life-cycle events (acked);
  ``last_readings`` keeps each device's newest reading; ``devices`` (imported from provisioning records)
  give each device its spatial unit.
- Migrations are numbered (``schema_migrations``), applied in order under an advisory lock, each in one
  transaction; opening a store upgrades it in place.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from lifeline.protocols import batch, schema
from lifeline.tools.platform.store import ChainReport, StoredRecord, StoreError, StoreOutcome, StoreUnavailable

DAY_MS = 86_400_000
MAX_RX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: a later receive time cannot name a partition
_I64 = (1 << 63) - 1
INSERT_METHODS = ("copy", "unnest")
_LOCK_MIGRATE = 0x4C4C_0001  # advisory lock ids ("LL")
_LOCK_PARTITION = 0x4C4C_0002

# The gateway's alarm life-cycle event (gateway/rules_engine/audit.py EV_ALARM, gateway/alarms.py STEPS).
EV_ALARM = 69
FAL_ID, FAL_STEP = 1, 3
ALARM_STEPS = ("raised", "forwarded", "acked", "ack_delivered", "handled", "closed", "cleared", "escalated")

# ------------------------------------------------------------------------------------------ migrations

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "batches, partitioned readings with a dedupe key table, events, rejects, chain state", """
CREATE TABLE batches (
    gateway text NOT NULL, seq bigint NOT NULL, digest bytea NOT NULL, prev_hash bytea NOT NULL,
    lane smallint NOT NULL, created_ms bigint NOT NULL, count integer NOT NULL, new_records integer NOT NULL,
    received_ms bigint NOT NULL, sink text NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (gateway, seq, digest)
);
CREATE SEQUENCE record_id_seq;
CREATE TABLE reading_keys (
    device bytea NOT NULL, fcnt bigint NOT NULL, rx_ms bigint NOT NULL,
    PRIMARY KEY (device, fcnt)
);
CREATE TABLE readings (
    id bigint NOT NULL DEFAULT nextval('record_id_seq'),
    device bytea NOT NULL, fcnt bigint NOT NULL, kind smallint NOT NULL, node_time bigint NOT NULL,
    rx_ms bigint NOT NULL, gateway text NOT NULL, seq bigint NOT NULL, lane smallint NOT NULL,
    flags integer NOT NULL, priority smallint NOT NULL, data_class smallint NOT NULL,
    fields jsonb NOT NULL, stored_ms bigint NOT NULL, sink text NOT NULL
) PARTITION BY RANGE (rx_ms);
CREATE INDEX readings_by_device ON readings (device, rx_ms);
CREATE TABLE events (
    id bigint NOT NULL DEFAULT nextval('record_id_seq') PRIMARY KEY,
    gateway text NOT NULL, device bytea NOT NULL, fcnt bigint NOT NULL, kind smallint NOT NULL,
    node_time bigint NOT NULL, rx_ms bigint NOT NULL, seq bigint NOT NULL, lane smallint NOT NULL,
    flags integer NOT NULL, priority smallint NOT NULL, data_class smallint NOT NULL,
    fields jsonb NOT NULL, stored_ms bigint NOT NULL, sink text NOT NULL,
    UNIQUE (gateway, device, fcnt)
);
CREATE TABLE rejects (
    id bigserial PRIMARY KEY, received_ms bigint NOT NULL, topic text NOT NULL, reason text NOT NULL,
    detail text NOT NULL, size integer NOT NULL, sink text NOT NULL
);
CREATE TABLE gateway_chain (
    gateway text PRIMARY KEY, highest_seq bigint, highest_digest bytea, batches bigint NOT NULL DEFAULT 0,
    missing bigint NOT NULL DEFAULT 0, broken_links bigint NOT NULL DEFAULT 0,
    equivocations bigint NOT NULL DEFAULT 0, updated_ms bigint NOT NULL DEFAULT 0
);
CREATE TABLE chain_breaks (
    id bigserial PRIMARY KEY, gateway text NOT NULL, what text NOT NULL CHECK (what IN ('broken_link', 'equivocation')),
    a bigint NOT NULL, b bigint NOT NULL, detected_ms bigint NOT NULL, sink text NOT NULL
);
CREATE INDEX chain_breaks_by_gateway ON chain_breaks (gateway, id);
"""),
    (2, "devices with spatial units, last readings, alarms and their life cycle, rule events", """
CREATE TABLE devices (
    device bytea PRIMARY KEY, kind text NOT NULL, spatial_unit text NOT NULL DEFAULT '',
    address text NOT NULL DEFAULT '', lat_udeg bigint, lon_udeg bigint, data_class text NOT NULL DEFAULT '',
    revoked boolean NOT NULL DEFAULT false, imported_ms bigint NOT NULL
);
CREATE INDEX devices_by_spatial_unit ON devices (spatial_unit, device);
CREATE TABLE last_readings (
    device bytea PRIMARY KEY, fcnt bigint NOT NULL, rx_ms bigint NOT NULL, kind smallint NOT NULL,
    gateway text NOT NULL, fields jsonb NOT NULL
);
INSERT INTO last_readings (device, fcnt, rx_ms, kind, gateway, fields)
    SELECT DISTINCT ON (device) device, fcnt, rx_ms, kind, gateway, fields FROM readings
    ORDER BY device, rx_ms DESC, fcnt DESC;
CREATE TABLE alarms (
    device bytea NOT NULL, alarm_id integer NOT NULL,
    cause integer, value bigint, gateway text NOT NULL,
    raised_fcnt bigint, raised_ms bigint, cleared_fcnt bigint, cleared_ms bigint, acked_ms bigint,
    open boolean GENERATED ALWAYS AS (raised_fcnt IS NOT NULL AND (cleared_fcnt IS NULL OR cleared_fcnt < raised_fcnt))
        STORED,
    updated_ms bigint NOT NULL,
    PRIMARY KEY (device, alarm_id)
);
CREATE INDEX alarms_open ON alarms (raised_ms) WHERE open;
INSERT INTO alarms (device, alarm_id, cause, value, gateway, raised_fcnt, raised_ms, updated_ms)
    SELECT DISTINCT ON (device, (fields->>'alarm_id')::int) device, (fields->>'alarm_id')::int, NULL,
           NULL, gateway, fcnt, rx_ms, 0
    FROM readings WHERE kind = 9 AND fields ? 'alarm_id'
    ORDER BY device, (fields->>'alarm_id')::int, fcnt DESC;
UPDATE alarms a SET cleared_fcnt = c.fcnt, cleared_ms = c.rx_ms
    FROM (SELECT device, (fields->>'alarm_id')::int AS alarm_id, max(fcnt) AS fcnt, max(rx_ms) AS rx_ms
          FROM readings WHERE kind = 10 AND fields ? 'alarm_id' GROUP BY 1, 2) c
    WHERE a.device = c.device AND a.alarm_id = c.alarm_id;
CREATE VIEW rule_events AS
    SELECT gateway, device, fcnt - 4294967296 AS audit_seq,
           CASE kind WHEN 64 THEN 'rule_fired' WHEN 65 THEN 'rule_cleared' WHEN 66 THEN 'action'
                     WHEN 67 THEN 'mode' WHEN 68 THEN 'rules_loaded' WHEN 69 THEN 'alarm' END AS event,
           CASE WHEN kind IN (64, 65, 66) AND fields ? '1'
                THEN convert_from(decode(fields->>'1', 'hex'), 'UTF8') END AS rule,
           rx_ms, fields
    FROM events WHERE kind BETWEEN 64 AND 69;
"""),
    (3, "the spatial unit kept in last_readings, so a unit's last readings are one index range", """
ALTER TABLE last_readings ADD COLUMN spatial_unit text NOT NULL DEFAULT '';
UPDATE last_readings l SET spatial_unit = d.spatial_unit FROM devices d WHERE d.device = l.device;
CREATE INDEX last_readings_by_unit ON last_readings (spatial_unit, device);
"""),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# The last reading of every (not revoked) device of a spatial unit. devices decides the membership;
# last_readings.spatial_unit (refreshed by every new reading and every device import) lets PostgreSQL
# read only that unit's rows of last_readings through last_readings_by_unit.
LAST_READINGS_SQL = (
    "SELECT d.device, d.spatial_unit, l.fcnt, l.rx_ms, l.kind, l.fields FROM devices d "
    "LEFT JOIN (SELECT * FROM last_readings WHERE spatial_unit = %(unit)s) l ON l.device = d.device "
    "WHERE d.spatial_unit = %(unit)s AND NOT d.revoked ORDER BY d.device")


@dataclass(frozen=True, slots=True)
class LastReading:
    device: bytes
    spatial_unit: str
    fcnt: int | None
    rx_ms: int | None
    kind: int | None
    fields: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class OpenAlarm:
    device: bytes
    alarm_id: int
    cause: int | None
    value: int | None
    gateway: str
    raised_ms: int | None
    acked_ms: int | None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device: bytes
    kind: str
    spatial_unit: str
    address: str = ""
    lat_udeg: int | None = None
    lon_udeg: int | None = None
    data_class: str = ""
    revoked: bool = False


def safe_url(url: str) -> str:
    """The URL without its password (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def partition_name(day: int) -> str:
    return "readings_" + datetime.fromtimestamp(day * DAY_MS / 1000, tz=UTC).strftime("%Y%m%d")


def _transient(e: BaseException) -> bool:
    return isinstance(e, psycopg.OperationalError | pg_errors.SerializationFailure | pg_errors.DeadlockDetected
                      | psycopg.InterfaceError)


def applied_versions(conn: psycopg.Connection[Any]) -> list[int]:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    return [int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def migrate(conn: psycopg.Connection[Any], target: int = SCHEMA_VERSION,
            now_ms: int | None = None) -> list[int]:
    """Apply the migrations above the database's version up to ``target``; returns the versions applied.

    Each migration runs in its own transaction under an advisory lock (several sinks starting at once
    upgrade once). A database newer than this code is refused."""
    done: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_MIGRATE,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                     "name text NOT NULL, applied_ms bigint NOT NULL)")
    have = set(applied_versions(conn))
    newer = [v for v in have if v > SCHEMA_VERSION]
    if newer:
        raise StoreError(f"database schema version {max(newer)} is newer than this lifeline ({SCHEMA_VERSION})")
    for version, name, sql in MIGRATIONS:
        if version > target:
            break
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_MIGRATE,))
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version=%s", (version,)).fetchone():
                continue
            conn.execute(sql)  # several statements: simple query protocol (no parameters)
            conn.execute("INSERT INTO schema_migrations (version, name, applied_ms) VALUES (%s, %s, %s)",
                         (version, name, now_ms if now_ms is not None else time.time_ns() // 1_000_000))
            done.append(version)
    return done


def ensure_partitions(conn: psycopg.Connection[Any], days: Iterable[int]) -> list[str]:
    """Create the daily partitions of ``readings`` for ``days`` (day numbers since 1970) if missing."""
    created = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_PARTITION,))
        for day in sorted(set(days)):
            name = partition_name(day)
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() == (True,):
                continue
            conn.execute(f"CREATE TABLE {name} PARTITION OF readings "  # name built from an int: no injection
                         f"FOR VALUES FROM ({day * DAY_MS}) TO ({(day + 1) * DAY_MS})")
            created.append(name)
    return created


def list_partitions(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(r[0]) for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'readings' ORDER BY c.relname")]


_PART_RE = re.compile(r"readings_(\d{8})")


class PgStore:
    """A :class:`~lifeline.tools.platform.store.Store` in PostgreSQL (one connection, reconnected on loss)."""

    def __init__(self, url: str, *, create: bool = True, method: str = "copy", connect_timeout_s: int = 5,
                 days_ahead: int = 2) -> None:
        if method not in INSERT_METHODS:
            raise StoreError(f"insert method {method!r} is not one of {', '.join(INSERT_METHODS)}")
        self._dsn = url
        self.method = method
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._partitions: set[int] = set()
        self._staged = False
        self.counters: Counter[str] = Counter()
        conn = self._connection()
        try:
            if create:
                migrate(conn)
                today = time.time_ns() // 1_000_000 // DAY_MS
                self._partitions.update(self._existing_days(conn))
                self._ensure_days(conn, range(today - 1, today + days_ahead + 1))
            elif applied_versions(conn)[-1:] != [SCHEMA_VERSION]:
                raise StoreError(f"{self.url}: schema is not at version {SCHEMA_VERSION} "
                                 "(run lifeline platform-sink migrate)")
        except psycopg.Error as e:
            self.close()
            raise StoreUnavailable(f"{self.url}: {e}") from None
        except StoreError:
            self.close()
            raise

    @property
    def url(self) -> str:
        return safe_url(self._dsn)

    # ---------------------------------------------------------------------------------- connection

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            self.counters["reconnects"] += 1
        try:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._connect_timeout_s,
                                         application_name="lifeline-sink")
        except psycopg.Error as e:
            raise StoreUnavailable(f"{self.url}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self._staged = False
        return self._conn

    @contextlib.contextmanager
    def _using(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, under the lock; a lost connection or a deadlock becomes StoreUnavailable."""
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except psycopg.Error as e:
                if _transient(e):
                    self.counters["transient_errors"] += 1
                    raise StoreUnavailable(f"{self.url}: {type(e).__name__}: {str(e).splitlines()[0]}") from e
                raise StoreError(f"{self.url}: {type(e).__name__}: {str(e).splitlines()[0]}") from e

    def _existing_days(self, conn: psycopg.Connection[Any]) -> set[int]:
        days = set()
        for name in list_partitions(conn):
            m = _PART_RE.fullmatch(name)
            if m:
                d = datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC)
                days.add(int(d.timestamp() * 1000) // DAY_MS)
        return days

    def _ensure_days(self, conn: psycopg.Connection[Any], days: Iterable[int]) -> None:
        missing = set(days) - self._partitions
        if missing:
            self.counters["partitions_created"] += len(ensure_partitions(conn, missing))
            self._partitions |= missing

    def _stage(self, conn: psycopg.Connection[Any]) -> None:
        if not self._staged:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS stage_readings (device bytea, fcnt bigint, kind smallint, "
                         "node_time bigint, rx_ms bigint, lane smallint, flags integer, priority smallint, "
                         "data_class smallint, fields jsonb) ON COMMIT DELETE ROWS")
            self._staged = True

    # ------------------------------------------------------------------------------------ writing

    def store_batch(self, b: batch.Batch, raw: bytes, sink_id: str, now_ms: int) -> StoreOutcome:
        readings = sorted((r for r in b.records if r.record_type != batch.RECORD_EVENT),
                          key=lambda r: (r.device_id, r.fcnt))
        events = sorted((r for r in b.records if r.record_type == batch.RECORD_EVENT),
                        key=lambda r: (r.device_id, r.fcnt))
        # one reading per key inside a batch too (a key repeated within a batch is a duplicate)
        uniq: dict[tuple[bytes, int], batch.BatchRecord] = {}
        for r in readings:
            uniq.setdefault((r.device_id, r.fcnt), r)
        readings = list(uniq.values())
        for r in b.records:  # values the schema cannot hold: a permanent refusal, not a retry
            if r.rx_ms > MAX_RX_MS or max(r.fcnt, r.node_time) > _I64:
                raise StoreError(f"{b.gateway_id} seq {b.seq}: device {r.device_id.hex()} fcnt {r.fcnt}: "
                                 f"rx_ms {r.rx_ms} / node_time {r.node_time} out of the store's range")
        days = {r.rx_ms // DAY_MS for r in readings}
        with self._using() as conn:
            self._ensure_days(conn, days)
            try:
                with conn.transaction():
                    return self._store_locked(conn, b, raw, sink_id, now_ms, readings, events)
            except pg_errors.CheckViolation:  # "no partition for row": another process dropped a day we knew
                self._partitions -= days
                self.counters["partitions_recreated"] += 1
                self._ensure_days(conn, days)
                with conn.transaction():
                    return self._store_locked(conn, b, raw, sink_id, now_ms, readings, events)

    def _store_locked(self, conn: psycopg.Connection[Any], b: batch.Batch, raw: bytes, sink_id: str, now_ms: int,
                      readings: Sequence[batch.BatchRecord], events: Sequence[batch.BatchRecord]) -> StoreOutcome:
        gw = b.gateway_id
        # lock this gateway's chain row (created on first sight): its batches are stored one at a time
        row = conn.execute("INSERT INTO gateway_chain AS g (gateway) VALUES (%s) ON CONFLICT (gateway) DO UPDATE "
                           "SET gateway = g.gateway RETURNING highest_seq, missing", (gw,)).fetchone()
        assert row is not None
        highest, missing = row[0], int(row[1])
        # under that lock, the batch and its neighbours as every sink committed them
        near = conn.execute("SELECT seq, digest, prev_hash FROM batches WHERE gateway=%s AND seq BETWEEN %s AND %s",
                            (gw, b.seq - 1, b.seq + 1)).fetchall()
        if any(seq == b.seq and bytes(digest) == b.digest for seq, digest, _ in near):
            return StoreOutcome(True, 0, 0, ())  # the same batch again: its records were stored with it
        broken: list[tuple[int, int]] = []
        equivocation = False
        if b.seq == 0 and b.prev_hash != batch.ZERO_HASH:
            broken.append((-1, 0))
        for seq, digest, prev in near:
            digest, prev = bytes(digest), bytes(prev)
            if seq == b.seq - 1 and digest != b.prev_hash:
                broken.append((seq, b.seq))
            elif seq == b.seq + 1 and prev != b.digest:
                broken.append((b.seq, seq))
            elif seq == b.seq:
                equivocation = True
        fields = {id(r): self._fields(r) for r in (*readings, *events)}
        new_keys = self._insert_readings(conn, b, readings, sink_id, now_ms, fields)
        new_events = self._insert_events(conn, b, events, sink_id, now_ms, fields)
        new = len(new_keys) + len(new_events)
        for a, c in broken:
            conn.execute("INSERT INTO chain_breaks (gateway, what, a, b, detected_ms, sink) "
                         "VALUES (%s, 'broken_link', %s, %s, %s, %s)", (gw, a, c, now_ms, sink_id))
        if equivocation:
            conn.execute("INSERT INTO chain_breaks (gateway, what, a, b, detected_ms, sink) "
                         "VALUES (%s, 'equivocation', %s, %s, %s, %s)", (gw, b.seq, b.seq, now_ms, sink_id))
        if highest is None or b.seq > highest:
            missing += b.seq - (highest + 1 if highest is not None else 0)
            top_seq, top_digest, filled = b.seq, b.digest, 0
        else:  # a late batch closes one missing seq (an equivocating one closes none)
            top_seq, top_digest, filled = highest, None, 0 if equivocation else 1
        conn.execute(
            "WITH ins AS (INSERT INTO batches (gateway, seq, digest, prev_hash, lane, created_ms, count, new_records, "
            "received_ms, sink, data) VALUES (%(gw)s, %(seq)s, %(digest)s, %(prev)s, %(lane)s, %(created)s, "
            "%(count)s, %(new)s, %(now)s, %(sink)s, %(data)s)) "
            "UPDATE gateway_chain SET highest_seq=%(top)s, highest_digest=COALESCE(%(top_digest)s, highest_digest), "
            "batches=batches+1, missing=GREATEST(%(missing)s - %(filled)s, 0), broken_links=broken_links+%(broken)s, "
            "equivocations=equivocations+%(eq)s, updated_ms=%(now)s WHERE gateway=%(gw)s",
            {"gw": gw, "seq": b.seq, "digest": b.digest, "prev": b.prev_hash, "lane": b.lane, "created": b.created_ms,
             "count": len(b.records), "new": new, "now": now_ms, "sink": sink_id, "data": raw, "top": top_seq,
             "top_digest": top_digest, "missing": missing, "filled": filled, "broken": len(broken),
             "eq": int(equivocation)})
        fresh = [r for r in readings if (r.device_id, r.fcnt) in new_keys]
        self._update_last(conn, gw, fresh, fields)
        self._update_alarms(conn, gw, fresh, [e for e in events if (e.device_id, e.fcnt) in new_events], now_ms)
        self.counters["batches"] += 1
        self.counters["readings"] += len(new_keys)
        return StoreOutcome(False, new, len(b.records) - new, tuple(broken))

    @staticmethod
    def _fields(r: batch.BatchRecord) -> str:
        return json.dumps(batch.record_to_json(r)["fields"], separators=(",", ":"))

    _NEW_READINGS = """
        WITH k AS (
            INSERT INTO reading_keys (device, fcnt, rx_ms) SELECT device, fcnt, rx_ms FROM {src} AS k0
            ORDER BY device, fcnt ON CONFLICT DO NOTHING RETURNING device, fcnt)
        INSERT INTO readings (device, fcnt, kind, node_time, rx_ms, gateway, seq, lane, flags, priority,
                              data_class, fields, stored_ms, sink)
        SELECT s.device, s.fcnt, s.kind, s.node_time, s.rx_ms, %(gw)s, %(seq)s, s.lane, s.flags, s.priority,
               s.data_class, s.fields, %(now)s, %(sink)s
        FROM {src} s JOIN k ON k.device = s.device AND k.fcnt = s.fcnt
        ORDER BY s.device, s.fcnt
        RETURNING device, fcnt"""

    def _insert_readings(self, conn: psycopg.Connection[Any], b: batch.Batch, readings: Sequence[batch.BatchRecord],
                         sink_id: str, now_ms: int, fields: Mapping[int, str]) -> set[tuple[bytes, int]]:
        if not readings:
            return set()
        args: dict[str, Any] = {"gw": b.gateway_id, "seq": b.seq, "now": now_ms, "sink": sink_id}
        if self.method == "copy":
            self._stage(conn)
            with conn.cursor() as cur:
                with cur.copy("COPY stage_readings (device, fcnt, kind, node_time, rx_ms, lane, flags, priority, "
                              "data_class, fields) FROM STDIN") as cp:
                    for r in readings:
                        cp.write_row((r.device_id, r.fcnt, r.kind, r.node_time, r.rx_ms, b.lane, r.flags, r.priority,
                                      r.data_class, fields[id(r)]))
                rows = cur.execute(self._NEW_READINGS.format(src="stage_readings"), args).fetchall()
                # the staging rows go at commit (ON COMMIT DELETE ROWS): one batch per transaction
        else:
            src = ("(SELECT * FROM unnest(%(dev)s::bytea[], %(fcnt)s::bigint[], %(kind)s::smallint[], "
                   "%(nt)s::bigint[], %(rx)s::bigint[], %(lane)s::smallint[], %(flags)s::integer[], "
                   "%(prio)s::smallint[], %(dc)s::smallint[], %(fields)s::jsonb[]) AS u(device, fcnt, kind, "
                   "node_time, rx_ms, lane, flags, priority, data_class, fields))")
            args.update(dev=[r.device_id for r in readings], fcnt=[r.fcnt for r in readings],
                        kind=[r.kind for r in readings], nt=[r.node_time for r in readings],
                        rx=[r.rx_ms for r in readings], lane=[b.lane] * len(readings),
                        flags=[r.flags for r in readings], prio=[r.priority for r in readings],
                        dc=[r.data_class for r in readings], fields=[fields[id(r)] for r in readings])
            rows = conn.execute(self._NEW_READINGS.format(src=src), args).fetchall()
        return {(bytes(d), int(f)) for d, f in rows}

    def _insert_events(self, conn: psycopg.Connection[Any], b: batch.Batch, events: Sequence[batch.BatchRecord],
                       sink_id: str, now_ms: int, fields: Mapping[int, str]) -> set[tuple[bytes, int]]:
        if not events:
            return set()
        rows = conn.execute(
            "INSERT INTO events (gateway, device, fcnt, kind, node_time, rx_ms, seq, lane, flags, priority, "
            "data_class, fields, stored_ms, sink) "
            "SELECT %(gw)s, u.* , %(now)s, %(sink)s FROM unnest(%(dev)s::bytea[], %(fcnt)s::bigint[], "
            "%(kind)s::smallint[], %(nt)s::bigint[], %(rx)s::bigint[], %(seq)s::bigint[], %(lane)s::smallint[], "
            "%(flags)s::integer[], %(prio)s::smallint[], %(dc)s::smallint[], %(fields)s::jsonb[]) AS u "
            "ON CONFLICT DO NOTHING RETURNING device, fcnt",
            {"gw": b.gateway_id, "now": now_ms, "sink": sink_id, "dev": [e.device_id for e in events],
             "fcnt": [e.fcnt for e in events], "kind": [e.kind for e in events],
             "nt": [e.node_time for e in events], "rx": [e.rx_ms for e in events], "seq": [b.seq] * len(events),
             "lane": [b.lane] * len(events), "flags": [e.flags for e in events],
             "prio": [e.priority for e in events], "dc": [e.data_class for e in events],
             "fields": [fields[id(e)] for e in events]},
        ).fetchall()
        return {(bytes(d), int(f)) for d, f in rows}

    def _update_last(self, conn: psycopg.Connection[Any], gw: str, fresh: Sequence[batch.BatchRecord],
                     fields: Mapping[int, str]) -> None:
        newest: dict[bytes, batch.BatchRecord] = {}
        for r in fresh:
            cur = newest.get(r.device_id)
            if cur is None or (r.rx_ms, r.fcnt) > (cur.rx_ms, cur.fcnt):
                newest[r.device_id] = r
        if not newest:
            return
        rs = [newest[d] for d in sorted(newest)]  # one lock order for every sink: no deadlock between them
        conn.execute(
            "INSERT INTO last_readings (device, fcnt, rx_ms, kind, gateway, fields, spatial_unit) "
            "SELECT u.device, u.fcnt, u.rx_ms, u.kind, %(gw)s, u.fields, "
            "COALESCE((SELECT spatial_unit FROM devices d WHERE d.device = u.device), '') "
            "FROM unnest(%(dev)s::bytea[], %(fcnt)s::bigint[], %(rx)s::bigint[], %(kind)s::smallint[], "
            "%(fields)s::jsonb[]) AS u(device, fcnt, rx_ms, kind, fields) "
            "ON CONFLICT (device) DO UPDATE SET fcnt=EXCLUDED.fcnt, rx_ms=EXCLUDED.rx_ms, kind=EXCLUDED.kind, "
            "gateway=EXCLUDED.gateway, fields=EXCLUDED.fields, spatial_unit=EXCLUDED.spatial_unit "
            "WHERE (last_readings.rx_ms, last_readings.fcnt) < (EXCLUDED.rx_ms, EXCLUDED.fcnt)",
            {"gw": gw, "dev": [r.device_id for r in rs], "fcnt": [r.fcnt for r in rs], "rx": [r.rx_ms for r in rs],
             "kind": [r.kind for r in rs], "fields": [fields[id(r)] for r in rs]},
        )

    def _update_alarms(self, conn: psycopg.Connection[Any], gw: str, fresh: Sequence[batch.BatchRecord],
                       events: Sequence[batch.BatchRecord], now_ms: int) -> None:
        steps: list[tuple[bytes, int, str, batch.BatchRecord]] = []
        for r in fresh:
            aid = r.fields.get(1)
            if r.kind in (schema.K_ALARM_RAISED, schema.K_ALARM_CLEARED) and isinstance(aid, int):
                steps.append((r.device_id, aid, "raised" if r.kind == schema.K_ALARM_RAISED else "cleared", r))
        for e in events:
            eid, estep = e.fields.get(FAL_ID), e.fields.get(FAL_STEP)
            if (e.kind == EV_ALARM and isinstance(eid, int) and isinstance(estep, int)
                    and 0 <= estep < len(ALARM_STEPS) and ALARM_STEPS[estep] == "acked"):
                steps.append((e.device_id, eid, "acked", e))
        for dev, aid, step, r in sorted(steps, key=lambda s: (s[0], s[1], s[3].fcnt)):
            cause = r.fields.get(2)
            value = r.fields.get(3)
            args = {"dev": dev, "aid": aid, "gw": gw, "fcnt": r.fcnt, "rx": r.rx_ms, "now": now_ms,
                    "cause": cause if isinstance(cause, int) else None,
                    "value": value if isinstance(value, int) else None}
            if step == "raised":  # a newer raise (re)opens the alarm; an older one arriving late changes nothing
                conn.execute(
                    "INSERT INTO alarms (device, alarm_id, cause, value, gateway, raised_fcnt, raised_ms, updated_ms) "
                    "VALUES (%(dev)s, %(aid)s, %(cause)s, %(value)s, %(gw)s, %(fcnt)s, %(rx)s, %(now)s) "
                    "ON CONFLICT (device, alarm_id) DO UPDATE SET cause=EXCLUDED.cause, value=EXCLUDED.value, "
                    "gateway=EXCLUDED.gateway, raised_fcnt=EXCLUDED.raised_fcnt, raised_ms=EXCLUDED.raised_ms, "
                    "acked_ms=NULL, updated_ms=EXCLUDED.updated_ms "
                    "WHERE alarms.raised_fcnt IS NULL OR alarms.raised_fcnt < EXCLUDED.raised_fcnt", args)
            elif step == "cleared":
                conn.execute(
                    "INSERT INTO alarms (device, alarm_id, cause, value, gateway, cleared_fcnt, cleared_ms, "
                    "updated_ms) "
                    "VALUES (%(dev)s, %(aid)s, %(cause)s, %(value)s, %(gw)s, %(fcnt)s, %(rx)s, %(now)s) "
                    "ON CONFLICT (device, alarm_id) DO UPDATE SET cleared_fcnt=EXCLUDED.cleared_fcnt, "
                    "cleared_ms=EXCLUDED.cleared_ms, updated_ms=EXCLUDED.updated_ms "
                    "WHERE alarms.cleared_fcnt IS NULL OR alarms.cleared_fcnt < EXCLUDED.cleared_fcnt", args)
            else:
                conn.execute("UPDATE alarms SET acked_ms=%(rx)s, updated_ms=%(now)s "
                             "WHERE device=%(dev)s AND alarm_id=%(aid)s AND open", args)

    def record_reject(self, topic: str, reason: str, detail: str, size: int, sink_id: str, now_ms: int) -> None:
        with self._using() as conn:
            conn.execute("INSERT INTO rejects (received_ms, topic, reason, detail, size, sink) "
                         "VALUES (%s,%s,%s,%s,%s,%s)", (now_ms, topic[:200], reason, detail[:500], size, sink_id))

    def import_devices(self, rows: Iterable[DeviceRow], now_ms: int) -> int:
        """Insert or update devices (their spatial unit and place); returns how many rows were written."""
        n = 0
        with self._using() as conn, conn.transaction(), conn.cursor() as cur:
            for d in rows:
                cur.execute(
                    "INSERT INTO devices (device, kind, spatial_unit, address, lat_udeg, lon_udeg, data_class, "
                    "revoked, imported_ms) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (device) DO UPDATE SET "
                    "kind=EXCLUDED.kind, spatial_unit=EXCLUDED.spatial_unit, address=EXCLUDED.address, "
                    "lat_udeg=EXCLUDED.lat_udeg, lon_udeg=EXCLUDED.lon_udeg, data_class=EXCLUDED.data_class, "
                    "revoked=EXCLUDED.revoked, imported_ms=EXCLUDED.imported_ms",
                    (d.device, d.kind, d.spatial_unit, d.address, d.lat_udeg, d.lon_udeg, d.data_class, d.revoked,
                     now_ms))
                n += 1
            cur.execute("UPDATE last_readings l SET spatial_unit = d.spatial_unit FROM devices d "
                        "WHERE d.device = l.device AND d.imported_ms = %s AND l.spatial_unit <> d.spatial_unit",
                        (now_ms,))
        return n

    def revoke_device(self, device: bytes, now_ms: int) -> bool:
        with self._using() as conn:
            cur = conn.execute("UPDATE devices SET revoked=true, imported_ms=%s WHERE device=%s", (now_ms, device))
            return cur.rowcount == 1

    def drop_partitions_before(self, before_ms: int) -> list[str]:
        """Retention: drop every daily partition wholly older than ``before_ms`` and the dedupe keys of
        its readings. A reading older than that arriving again (a stream must not keep messages that
        long) is stored again into a new partition."""
        cutoff_day = before_ms // DAY_MS
        dropped = []
        with self._using() as conn:
            for day in sorted(self._existing_days(conn)):
                if day >= cutoff_day:
                    continue
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_PARTITION,))
                    conn.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")
                    conn.execute("DELETE FROM reading_keys WHERE rx_ms < %s", ((day + 1) * DAY_MS,))
                dropped.append(partition_name(day))
                self._partitions.discard(day)
        return dropped

    # ------------------------------------------------------------------------------------ queries

    def _all(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        with self._using() as conn:
            return list(conn.execute(sql, args).fetchall())

    def record_count(self) -> int:
        return int(self._all("SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM events)")[0][0])

    def batch_count(self) -> int:
        return int(self._all("SELECT count(*) FROM batches")[0][0])

    def record_keys(self) -> list[tuple[bytes, int]]:
        return [(bytes(d), int(f)) for d, f in self._all("SELECT device, fcnt FROM readings ORDER BY id")]

    def records(self, device: bytes | None = None) -> list[StoredRecord]:
        where = "" if device is None else " WHERE device = %(dev)s"
        sql = (f"SELECT id, device, fcnt, 0, kind, node_time, rx_ms, gateway, seq, lane, flags, priority, fields "
               f"FROM readings{where} UNION ALL "
               f"SELECT id, device, fcnt, 1, kind, node_time, rx_ms, gateway, seq, lane, flags, priority, fields "
               f"FROM events{where} ORDER BY 1")
        return [StoredRecord(device=bytes(r[1]), fcnt=int(r[2]), record_type=int(r[3]), kind=int(r[4]),
                             node_time=int(r[5]), rx_ms=int(r[6]), gateway=r[7], seq=int(r[8]), lane=int(r[9]),
                             flags=int(r[10]), priority=int(r[11]), fields=r[12])
                for r in self._all(sql, {"dev": device})]

    def rejects(self) -> list[tuple[str, str, str]]:
        return [(r[0], r[1], r[2]) for r in self._all("SELECT topic, reason, detail FROM rejects ORDER BY id")]

    def reject_counts(self) -> dict[str, int]:
        return {str(r): int(n) for r, n in self._all("SELECT reason, count(*) FROM rejects GROUP BY reason")}

    def records_by_sink(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self._all(
            "SELECT sink, sum(n) FROM (SELECT sink, count(*) AS n FROM readings GROUP BY sink UNION ALL "
            "SELECT sink, count(*) FROM events GROUP BY sink) x GROUP BY sink")}

    def chain_report(self, gateway: str | None = None) -> list[ChainReport]:
        with self._using() as conn:
            gws = [gateway] if gateway else [str(r[0]) for r in conn.execute(
                "SELECT gateway FROM gateway_chain ORDER BY gateway")]
            out = []
            for gw in gws:
                rows = conn.execute("SELECT seq, prev_hash, digest FROM batches WHERE gateway=%s "
                                    "ORDER BY seq, received_ms", (gw,)).fetchall()
                tracker = batch.ChainTracker(window=max(2, len(rows) + 1))
                for seq, prev, digest in rows:
                    tracker.add(int(seq), bytes(prev), bytes(digest))
                out.append(ChainReport(gw, len(rows), tracker.highest, tracker.gaps, tracker.broken_links,
                                       tracker.equivocations))
        return out

    def chain_state(self) -> dict[str, dict[str, Any]]:
        """The stored per-gateway chain state (kept up to date by every sink, no scan of the batches)."""
        return {str(r[0]): {"highest": r[1], "digest": bytes(r[2]).hex() if r[2] is not None else None,
                            "batches": int(r[3]), "missing": int(r[4]), "broken_links": int(r[5]),
                            "equivocations": int(r[6])}
                for r in self._all("SELECT gateway, highest_seq, highest_digest, batches, missing, broken_links, "
                                   "equivocations FROM gateway_chain ORDER BY gateway")}

    def chain_breaks(self, gateway: str | None = None) -> list[tuple[str, str, int, int]]:
        sql = "SELECT gateway, what, a, b FROM chain_breaks"
        args: tuple[Any, ...] = ()
        if gateway is not None:
            sql += " WHERE gateway=%s"
            args = (gateway,)
        return [(str(g), str(w), int(a), int(b)) for g, w, a, b in self._all(sql + " ORDER BY id", args)]

    def last_readings(self, spatial_unit: str) -> list[LastReading]:
        """The newest reading of every device in a spatial unit (None fields: no reading yet)."""
        return [LastReading(bytes(r[0]), r[1], r[2], r[3], r[4], r[5])
                for r in self._all(LAST_READINGS_SQL, {"unit": spatial_unit})]

    def open_alarms(self) -> list[OpenAlarm]:
        return [OpenAlarm(bytes(r[0]), int(r[1]), r[2], r[3], str(r[4]), r[5], r[6]) for r in self._all(
            "SELECT device, alarm_id, cause, value, gateway, raised_ms, acked_ms FROM alarms WHERE open "
            "ORDER BY raised_ms, device, alarm_id")]

    def rule_events(self, gateway: str | None = None) -> list[tuple[str, bytes, int, str, str | None]]:
        sql = "SELECT gateway, device, audit_seq, event, rule FROM rule_events"
        args: tuple[Any, ...] = ()
        if gateway is not None:
            sql += " WHERE gateway=%s"
            args = (gateway,)
        return [(str(g), bytes(d), int(s), str(e), r) for g, d, s, e, r in self._all(sql + " ORDER BY 1, 3", args)]

    def schema_version(self) -> int:
        with self._using() as conn:
            v = applied_versions(conn)
        return v[-1] if v else 0

    def partitions(self) -> list[str]:
        with self._using() as conn:
            return list_partitions(conn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None
