"""`lifeline bench platform-store`: the PostgreSQL store path, next to a raw COPY baseline of the same run.

Everything runs against a PostgreSQL started for the bench (:class:`~lifeline.tools.pgserver.PgServer`,
fsync on, in the bench's work directory):

1. ingest: verified batches of ``BATCH`` readings stored through :meth:`PgStore.store_batch` (both insert
   methods: COPY into a staging table and ``unnest`` arrays), one transaction per batch as a sink does;
   readings/s, and CPU per 1,000 readings in this process (the sink side) and in the server's processes.
   Baselines: the same rows COPY'd into a plain table without indexes, one commit per batch and one commit
   for all.
2. queries with ``--quick`` 200k / full 10 million stored readings (generated server-side with
   ``generate_series`` into the partitioned table, keys and last readings, indexes built after the load,
   ANALYZE): p50/p99 of "last reading of every device in a spatial unit" (the maintained
   ``last_readings`` table; and the same answer from the partitions with a LATERAL index probe per device,
   for comparison) and of "open alarms"; the EXPLAIN shape of each.
3. bytes on disk per stored reading (partitions + their index + the dedupe key table), for the sizing model.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import batch, schema
from lifeline.tools.bench import BenchContext, Figure, rate
from lifeline.tools.pgserver import PgServer
from lifeline.tools.platform import pg_store
from lifeline.tools.platform.pg_store import DAY_MS, PgStore

BATCH = 50  # readings per signed batch (a gateway's live lane sends one every few seconds)
B = "platform-store"


def _server_cpu_s(server: PgServer) -> float:
    """utime + stime of the postmaster and all its children (backends, walwriter, checkpointer, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    root = server.pid
    total = 0
    if root is None:
        return 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(pid) == root or int(fields[1]) == root:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _make_batches(n_readings: int, t0: int) -> list[tuple[batch.Batch, bytes]]:
    gws = [(f"gw-{i:03d}", Ed25519PrivateKey.generate()) for i in range(10)]
    signers = [batch.BatchSigner(k, g) for g, k in gws]
    devices = [os.urandom(8) for _ in range(2000)]
    fcnt = dict.fromkeys(devices, 0)
    rnd = random.Random(7)
    out = []
    for i in range(n_readings // BATCH):
        g = i % len(gws)
        recs: list[batch.BatchRecord] = []
        for _ in range(BATCH):
            d = devices[rnd.randrange(len(devices))]
            fcnt[d] += 1
            rx = t0 + i * 100 + len(recs)
            recs.append(batch.BatchRecord(device_id=d, fcnt=fcnt[d], node_time=fcnt[d], rx_ms=rx,
                                          kind=schema.K_WATER_LEVEL, fields={1: rnd.randrange(4000)},
                                          data_class=schema.PUBLIC,
                                          receptions=(batch.WireReception("lora", "sx0", rx, -90, 75),)))
        sb = signers[g].sign(recs, batch.LANE_LIVE, t0)
        out.append((batch.verify(sb.data, gws[g][1].public_key()), sb.data))
    return out


def _ingest(server: PgServer, method: str, work: list[tuple[batch.Batch, bytes]], now: int) -> tuple[float, float,
                                                                                                       float]:
    with psycopg.connect(server.url, autocommit=True) as c:  # a fresh schema per method
        c.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    store = PgStore(server.url, method=method)
    try:
        n = sum(len(b.records) for b, _ in work)
        cpu0, srv0, t0 = time.process_time(), _server_cpu_s(server), time.perf_counter()
        for b, raw in work:
            store.store_batch(b, raw, "bench", now)
        wall = time.perf_counter() - t0
        cpu, srv = time.process_time() - cpu0, _server_cpu_s(server) - srv0
        assert store.record_count() == n
    finally:
        store.close()
    return rate(n, wall), cpu / n * 1000, srv / n * 1000


def _copy_baseline(server: PgServer, work: list[tuple[batch.Batch, bytes]], now: int,
                   per_batch: bool) -> tuple[float, float]:
    rows = [[(r.device_id, r.fcnt, r.kind, r.node_time, r.rx_ms, b.gateway_id, b.seq, b.lane, r.flags, r.priority,
              r.data_class, json.dumps(batch.record_to_json(r)["fields"], separators=(",", ":")), now, "bench")
             for r in b.records] for b, _ in work]
    n = sum(len(x) for x in rows)
    with psycopg.connect(server.url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS copy_baseline")
        c.execute("CREATE TABLE copy_baseline (device bytea, fcnt bigint, kind smallint, node_time bigint, "
                  "rx_ms bigint, gateway text, seq bigint, lane smallint, flags integer, priority smallint, "
                  "data_class smallint, fields jsonb, stored_ms bigint, sink text)")
        sql = "COPY copy_baseline FROM STDIN"
        srv0, t0 = _server_cpu_s(server), time.perf_counter()
        if per_batch:
            for chunk in rows:
                with c.transaction(), c.cursor().copy(sql) as cp:
                    for row in chunk:
                        cp.write_row(row)
        else:
            with c.transaction(), c.cursor().copy(sql) as cp:
                for chunk in rows:
                    for row in chunk:
                        cp.write_row(row)
        wall = time.perf_counter() - t0
        srv = _server_cpu_s(server) - srv0
        c.execute("DROP TABLE copy_baseline")
    return rate(n, wall), srv / n * 1000


def _pcts(fn: Callable[[int], Any], repeats: int) -> tuple[float, float]:
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]


def _plan(c: psycopg.Connection[Any], sql: str, args: tuple[Any, ...]) -> str:
    rows = c.execute("EXPLAIN (COSTS OFF) " + sql, args).fetchall()
    return " / ".join(str(r[0]).strip() for r in rows[:8])


def _load_10m(c: psycopg.Connection[Any], n: int, devices: int, units: int, t0: int) -> None:
    """n readings over ``devices`` devices (``units`` spatial units), 1 reading per device per step, over
    ten days; last readings and alarms (1 in 100 devices has an alarm, a third of them open)."""
    per_dev = max(1, n // devices)
    step_ms = 10 * DAY_MS // per_dev
    c.execute("DROP INDEX IF EXISTS readings_by_device")
    c.execute("ALTER TABLE reading_keys DROP CONSTRAINT reading_keys_pkey")
    c.execute(
        "INSERT INTO devices (device, kind, spatial_unit, imported_ms) "
        "SELECT int8send(d), 'water_level', 'unit-' || (d %% %s), 0 FROM generate_series(1, %s) d", (units, devices))
    for k in range(per_dev):  # one statement per step keeps each transaction's memory small
        c.execute(
            "INSERT INTO readings (device, fcnt, kind, node_time, rx_ms, gateway, seq, lane, flags, priority, "
            "data_class, fields, stored_ms, sink) "
            "SELECT int8send(d), %s, 3, %s, %s + d, 'gw-' || (d %% 1000), %s, 0, 0, 3, 0, "
            "jsonb_build_object('level', jsonb_build_object('value', (d * 7 + %s) %% 4000, 'unit', 'mm')), "
            "%s + d, 'bench' FROM generate_series(1, %s) d",
            (k + 1, k + 1, t0 + k * step_ms, k, k, t0 + k * step_ms, devices))
    c.execute("INSERT INTO reading_keys (device, fcnt, rx_ms) SELECT device, fcnt, rx_ms FROM readings")
    c.execute("ALTER TABLE reading_keys ADD PRIMARY KEY (device, fcnt)")
    c.execute("CREATE INDEX readings_by_device ON readings (device, rx_ms)")
    c.execute("INSERT INTO last_readings (device, fcnt, rx_ms, kind, gateway, fields, spatial_unit) "
              "SELECT r.device, r.fcnt, r.rx_ms, r.kind, r.gateway, r.fields, d.spatial_unit FROM readings r "
              "JOIN devices d ON d.device = r.device WHERE r.fcnt = %s", (per_dev,))
    c.execute("INSERT INTO alarms (device, alarm_id, cause, value, gateway, raised_fcnt, raised_ms, cleared_fcnt, "
              "cleared_ms, updated_ms) SELECT int8send(d), 1, 1, 100, 'gw-1', 10, %s, "
              "CASE WHEN d %% 3 = 0 THEN NULL ELSE 11 END, NULL, 0 FROM generate_series(1, %s, 100) d",
              (t0, devices))
    c.execute("VACUUM ANALYZE")


def bench(ctx: BenchContext) -> list[Figure]:
    figs: list[Figure] = []
    now = time.time_ns() // 1_000_000
    t0 = (now // DAY_MS) * DAY_MS
    with PgServer(ctx.workdir / "pg", durable=True) as server:
        work = _make_batches(ctx.scale(100_000, 5_000), t0)
        n = len(work) * BATCH
        copy_rate, copy_srv = _copy_baseline(server, work, now, per_batch=True)
        bulk_rate, bulk_srv = _copy_baseline(server, work, now, per_batch=False)
        figs.append(Figure(B, "raw_copy_per_batch", copy_rate, "rows/s",
                           note=f"baseline: COPY {BATCH} rows per commit into a plain table, no index "
                                f"(server CPU {copy_srv * 1000:.0f} ms/1k)"))
        figs.append(Figure(B, "raw_copy_bulk", bulk_rate, "rows/s",
                           note=f"baseline: one COPY of {n:,} rows, one commit (server CPU {bulk_srv * 1000:.0f} "
                                "ms/1k)"))
        for method in pg_store.INSERT_METHODS:
            r, cpu, srv = _ingest(server, method, work, now)
            figs.append(Figure(B, f"store_{method}_rate", r, "readings/s", baseline="raw_copy_per_batch",
                               note=f"store_batch, {BATCH} readings per transaction, 1 sink, {n:,} readings"))
            figs.append(Figure(B, f"store_{method}_sink_cpu_per_1k", cpu * 1000, "ms", better="lower",
                               note="CPU of the storing process per 1,000 readings (JSON rendering included)"))
            figs.append(Figure(B, f"store_{method}_server_cpu_per_1k", srv * 1000, "ms", better="lower",
                               note="CPU of all PostgreSQL processes per 1,000 readings"))

        # ---- queries at scale
        with psycopg.connect(server.url, autocommit=True) as c:
            c.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        PgStore(server.url, days_ahead=0).close()
        total = ctx.scale(10_000_000, 200_000)
        devices = ctx.scale(200_000, 20_000)
        units = 30  # ~6,700 devices per unit: one community (issue 13)
        with psycopg.connect(server.url, autocommit=True) as c:
            pg_store.ensure_partitions(c, range(t0 // DAY_MS, t0 // DAY_MS + 11))
            load0 = time.perf_counter()
            _load_10m(c, total, devices, units, t0)
            load_s = time.perf_counter() - load0
            stored = int(c.execute("SELECT count(*) FROM readings").fetchone()[0])  # type: ignore[index]
            figs.append(Figure(B, "query_dataset_readings", stored, "readings", note=(
                f"{devices:,} devices in {units} spatial units, 10 daily partitions, loaded+indexed in "
                f"{load_s:.0f}s (generate_series)")))
            q_last = pg_store.LAST_READINGS_SQL.replace("%(unit)s", "%s")
            q_lateral = ("SELECT d.device, r.fcnt, r.rx_ms, r.fields FROM devices d LEFT JOIN LATERAL "
                         "(SELECT fcnt, rx_ms, fields FROM readings x WHERE x.device = d.device "
                         "ORDER BY rx_ms DESC LIMIT 1) r ON true WHERE d.spatial_unit = %s")
            q_alarms = ("SELECT device, alarm_id, cause, value, gateway, raised_ms, acked_ms FROM alarms "
                        "WHERE open ORDER BY raised_ms, device, alarm_id")
            reps = ctx.scale(200, 30)
            p50, p99 = _pcts(lambda i: c.execute(q_last, (f"unit-{i % units}",) * 2).fetchall(), reps)
            figs.append(Figure(B, "query_last_readings_unit_p50", p50, "ms", better="lower",
                               note=f"{devices // units:,} devices, last_readings table; "
                                    + _plan(c, q_last, ("unit-1",) * 2)))
            figs.append(Figure(B, "query_last_readings_unit_p99", p99, "ms", better="lower",
                               note=f"{reps} queries, a different spatial unit each"))
            lp50, lp99 = _pcts(lambda i: c.execute(q_lateral, (f"unit-{i % units}",)).fetchall(),
                               ctx.scale(20, 5))
            figs.append(Figure(B, "query_last_readings_lateral_p50", lp50, "ms", better="lower",
                               baseline="query_last_readings_unit_p50",
                               note="the same answer from the partitions (index probe per device per partition); "
                                    + _plan(c, q_lateral, ("unit-1",))))
            figs.append(Figure(B, "query_last_readings_lateral_p99", lp99, "ms", better="lower"))
            n_open = len(c.execute(q_alarms).fetchall())
            ap50, ap99 = _pcts(lambda i: c.execute(q_alarms).fetchall(), reps)
            figs.append(Figure(B, "query_open_alarms_p50", ap50, "ms", better="lower",
                               note=f"{n_open:,} open of {devices // 100:,} alarms; " + _plan(c, q_alarms, ())))
            figs.append(Figure(B, "query_open_alarms_p99", ap99, "ms", better="lower"))
            size = c.execute(
                "SELECT (SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i "
                "        WHERE i.inhparent = 'readings'::regclass), "
                "       pg_total_relation_size('reading_keys'), pg_total_relation_size('last_readings')").fetchone()
            assert size is not None
            parts, keys, last = (int(x or 0) for x in size)
            figs.append(Figure(B, "bytes_per_reading", (parts + keys) / stored, "B", better="lower",
                               note=f"readings partitions with index {parts / stored:.0f} B + dedupe key "
                                    f"{keys / stored:.0f} B (heap+index); last_readings {last / devices:.0f} B "
                                    "per device"))
    return figs
