"""`lifeline bench --only ingest`: end-to-end ingest through a 3-node NATS cluster, with same-run baselines.

What is timed, for 1, 2 and 3 sink processes (each case: stream purged, fresh store, fresh durable):
from the first MQTT publish until the store holds every reading. Gateways are paho MQTT 3.1.1 clients
(QoS 1, 64 in flight each) on different cluster nodes publishing pre-signed batches (a real hash chain per
gateway); the sinks are ``lifeline platform-sink --source nats://… --store URL`` processes that verify,
store and acknowledge each batch. CPU per 1k readings = user+sys of the sink processes (getrusage of
the reaped children) per 1,000 stored readings.

Baselines in the same run, same cluster:
- MQTT publish -> PUBACK into ``$MQTT_msgs`` (R3), nothing consuming (the engine's intake ceiling);
- a bare JetStream pull consumer that only acknowledges (the engine's delivery ceiling);
- the store alone: ``store_batch`` of the same verified batches in one process (the store's ceiling).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import nats
import nats.errors
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.gateway.testing_proc import wait_until
from lifeline.protocols import batch, keys, schema
from lifeline.tools.bench import BenchContext, Figure, rate
from lifeline.tools.nats_ingest import SinkProcess
from lifeline.tools.natsserver import NatsCluster, NatsNode
from lifeline.tools.platform import nats_source
from lifeline.tools.platform.store import open_store

BENCH = "ingest"
WINDOW = 64


class Workload:
    """``gateways`` chains of ``batches`` signed batches with ``per_batch`` water-level readings each."""

    def __init__(self, gateways: int, batches: int, per_batch: int) -> None:
        self.keys = {f"bench-gw{g}": Ed25519PrivateKey.generate() for g in range(gateways)}
        self.batches: dict[str, list[bytes]] = {}
        now = int(time.time() * 1000)
        for g, (gw, key) in enumerate(self.keys.items()):
            signer = batch.BatchSigner(key, gw)
            out = []
            fcnt: dict[bytes, int] = {}
            for b in range(batches):
                recs = []
                for i in range(per_batch):
                    dev = bytes([0xB0, g & 0xFF]) + i.to_bytes(6, "big")  # per_batch devices per gateway
                    fcnt[dev] = fcnt.get(dev, 0) + 1
                    recs.append(batch.BatchRecord(
                        device_id=dev, fcnt=fcnt[dev], node_time=1_000 + fcnt[dev], rx_ms=now + b,
                        kind=schema.K_WATER_LEVEL, fields={1: 100 + i % 50}, data_class=schema.PUBLIC,
                        receptions=(batch.WireReception("nbiot", "nb0", now + b, None, None),)))
                out.append(signer.sign(recs, batch.LANE_LIVE, now + b).data)
            self.batches[gw] = out
        self.readings = gateways * batches * per_batch
        self.bytes_per_reading = sum(len(d) for v in self.batches.values() for d in v) / self.readings

    def trust_files(self, directory: Path) -> list[tuple[str, Path]]:
        directory.mkdir(parents=True, exist_ok=True)
        out = []
        for gw, key in self.keys.items():
            p = directory / f"{gw}.pub"
            p.write_text(keys.public_key_hex(key.public_key()) + "\n")
            out.append((gw, p))
        return out


def _publish_all(work: Workload, nodes: Sequence[NatsNode], timeout_s: float = 600) -> float:
    """Publish every batch over MQTT 3.1.1 QoS 1 (one client per gateway, spread over the nodes);
    returns seconds from the first publish to the last PUBACK."""
    clients = []
    done = threading.Event()
    lock = threading.Lock()
    remaining = [sum(len(v) for v in work.batches.values())]

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    for i, gw in enumerate(work.batches):
        node = nodes[i % len(nodes)]
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{gw}-{time.monotonic_ns()}",
                        protocol=mqtt.MQTTv311, clean_session=True)
        c.max_inflight_messages_set(WINDOW)
        c.max_queued_messages_set(0)
        c.on_publish = on_publish
        c.connect("127.0.0.1", node.ports.mqtt, keepalive=30)
        c.loop_start()
        clients.append((gw, c))
    try:
        wait_until(lambda: all(c.is_connected() for _, c in clients), 30, "bench gateways connected")
        t0 = time.perf_counter()
        for gw, c in clients:
            threading.Thread(target=_feed, args=(c, gw, work.batches[gw]), daemon=True).start()
        if not done.wait(timeout_s):
            raise RuntimeError(f"{remaining[0]} batches without PUBACK after {timeout_s}s")
        return time.perf_counter() - t0
    finally:
        for _, c in clients:
            c.disconnect()
            c.loop_stop()


def _feed(c: mqtt.Client, gw: str, datas: list[bytes]) -> None:
    topic = f"lifeline/v1/{gw}/up/live"
    for d in datas:  # paho queues beyond the in-flight window (max_queued 0 = unbounded)
        c.publish(topic, d, qos=1)


async def _js(cluster: NatsCluster, fn: str, *args: object) -> object:
    nc = await nats.connect(servers=cluster.urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=10)
        if fn == "ensure":
            return await nats_source.ensure_stream(js, nats_source.StreamSettings(), cluster.size)
        if fn == "purge":
            await js.purge_stream(nats_source.STREAM)
            return None
        if fn == "drain":
            return await _drain(js, int(str(args[0])))
        raise ValueError(fn)
    finally:
        await nc.close()


async def _drain(js: nats.js.JetStreamContext, n: int) -> float:
    durable = f"bench-raw-{time.monotonic_ns()}"
    await js.add_consumer(nats_source.STREAM, nats_source.consumer_config(
        nats_source.ConsumerSettings(durable=durable), 3))
    psub = await js.pull_subscribe_bind(durable=durable, stream=nats_source.STREAM)
    got = 0
    t0 = time.perf_counter()
    while got < n:
        with contextlib.suppress(nats.errors.TimeoutError):
            for m in await psub.fetch(64, timeout=2):
                await m.ack()
                got += 1
    dt = time.perf_counter() - t0
    await js.delete_consumer(nats_source.STREAM, durable)
    return dt


def _cpu_s(pid: int, children: bool = False) -> float:
    """utime + stime of a running process (+ its reaped children's), from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _pg_cpu_s(pid: int | None) -> float:
    """CPU of a PostgreSQL server: the postmaster, its reaped backends and the ones still running."""
    if pid is None:
        return 0.0
    total = _cpu_s(pid, children=True)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((d / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    total += _cpu_s(int(d.name), children=True)
    return total


def _run_sinks(ctx: BenchContext, cluster: NatsCluster, work: Workload, trust: list[tuple[str, Path]],
               k: int, store_url: str) -> tuple[float, float, float]:
    """(seconds first publish -> all stored, sink CPU seconds spent after they were ready, publish seconds)
    with ``k`` sink processes (start-up and imports are not counted: CPU at "ready" is subtracted)."""
    asyncio.run(_js(cluster, "purge"))
    hosts = ",".join(u[len("nats://"):] for u in cluster.urls)
    durable = f"bench-{k}-{time.monotonic_ns()}"
    sinks = [SinkProcess(ctx.workdir, f"bench-sink-{k}-{i}", f"nats://{hosts}?durable={durable}", store_url, trust,
                         extra=("--count", str(work.readings), "--timeout", "900")) for i in range(k)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for s in sinks:
        s.start()
    for s in sinks:
        s.wait_ready()
    startup = sum(_cpu_s(s.proc.pid) for s in sinks if s.proc is not None)
    t0 = time.perf_counter()
    publish_s = _publish_all(work, cluster.nodes)
    for s in sinks:  # each exits 0 once the shared store holds every reading
        assert s.proc is not None
        s.proc.wait(900)
    total = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    codes = [s.proc.returncode for s in sinks if s.proc is not None]
    if codes != [0] * k:
        raise RuntimeError(f"sinks exited {codes}: {[s.log_tail() for s in sinks]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime) - startup
    return total, cpu, publish_s


def _store_alone(ctx: BenchContext, work: Workload, store_url: str) -> float:
    store = open_store(store_url)
    verified = [(batch.verify(d, key.public_key()), d) for gw, key in work.keys.items() for d in work.batches[gw]]
    t0 = time.perf_counter()
    for b, d in verified:
        store.store_batch(b, d, "bench", int(time.time() * 1000))
    dt = time.perf_counter() - t0
    store.close()
    return dt


def _postgres_cases(ctx: BenchContext, cluster: NatsCluster, work: Workload, trust: list[tuple[str, Path]],
                    note: str) -> list[Figure]:
    """The same with a PostgreSQL store (fsync on, as deployed); one fresh database per case."""
    from lifeline.tools.pgserver import PgServer

    n = work.readings
    out: list[Figure] = []
    base = "baseline: PostgreSQL store_batch alone (1 process)"
    with PgServer(ctx.workdir / "pg-alone", durable=True) as pg:
        from lifeline.tools.platform.store_bench import _copy_baseline

        verified = [(batch.verify(d, key.public_key()), d) for gw, key in work.keys.items() for d in work.batches[gw]]
        copy_rate, _ = _copy_baseline(pg, verified, int(time.time() * 1000), per_batch=True)
        out.append(Figure(BENCH, "baseline: raw COPY, one batch per commit, plain table", copy_rate, "readings/s",
                          note="same rows, no index, no dedupe (platform-store reports its server CPU)"))
        out.append(Figure(BENCH, base, rate(n, _store_alone(ctx, work, pg.url)), "readings/s",
                          baseline="baseline: raw COPY, one batch per commit, plain table"))
    for k in (1, 2, 3):
        with PgServer(ctx.workdir / f"pg-{k}", durable=True) as pg:
            open_store(pg.url).close()  # schema created once, not raced by k sinks
            pg0 = _pg_cpu_s(pg.pid)
            total, cpu, _ = _run_sinks(ctx, cluster, work, trust, k, pg.url)
            pg_cpu = _pg_cpu_s(pg.pid) - pg0
        out.append(Figure(BENCH, f"end to end, {k} sink(s), PostgreSQL", rate(n, total), "readings/s",
                          baseline=base, note=note))
        out.append(Figure(BENCH, f"sink CPU per 1k readings, {k} sink(s), PostgreSQL", cpu / n * 1000 * 1000, "ms",
                          better="lower", note="sink processes only"))
        out.append(Figure(BENCH, f"PostgreSQL CPU per 1k readings, {k} sink(s)", pg_cpu / n * 1000 * 1000, "ms",
                          better="lower", note="postmaster + backends, fsync on"))
    # small batches, as a gateway sends them at 20 ms batch_ms and a few readings/s: the per-batch cost
    small = Workload(len(work.keys), ctx.scale(600, 100), 2)
    small_trust = small.trust_files(ctx.workdir / "small")
    with PgServer(ctx.workdir / "pg-small", durable=True) as pg:
        open_store(pg.url).close()
        pg0 = _pg_cpu_s(pg.pid)
        total, cpu, _ = _run_sinks(ctx, cluster, small, small_trust, 3, pg.url)
        pg_cpu = _pg_cpu_s(pg.pid) - pg0
    nb = sum(len(v) for v in small.batches.values())
    out.append(Figure(BENCH, "end to end, 3 sinks, PostgreSQL, 2-reading batches", rate(nb, total), "batches/s",
                      note=f"{rate(small.readings, total):.0f} readings/s; {nb} batches"))
    out.append(Figure(BENCH, "sink CPU per 1k batches (2 readings each), PostgreSQL", cpu / nb * 1000 * 1000, "ms",
                      better="lower"))
    out.append(Figure(BENCH, "PostgreSQL CPU per 1k batches (2 readings each)", pg_cpu / nb * 1000 * 1000, "ms",
                      better="lower", note="fsync on: one commit per batch"))
    return out


def bench(ctx: BenchContext) -> list[Figure]:
    gateways = 6
    per_batch = 100
    batches = ctx.scale(50, 8)
    work = Workload(gateways, batches, per_batch)
    trust = work.trust_files(ctx.workdir)
    n = work.readings
    figures: list[Figure] = []
    note = f"{gateways} gateways x {batches} batches x {per_batch} readings, 3-node NATS on loopback"
    with NatsCluster(3, workdir=ctx.workdir / "nats") as cluster:
        asyncio.run(_js(cluster, "ensure"))
        asyncio.run(_js(cluster, "purge"))
        pub_s = _publish_all(work, cluster.nodes)
        figures.append(Figure(BENCH, "baseline: MQTT publish -> $MQTT_msgs R3 (no consumer)", rate(n, pub_s),
                              "readings/s", note=f"{rate(len(work.batches) * batches, pub_s):.0f} batches/s"))
        raw_s = float(str(asyncio.run(_js(cluster, "drain", len(work.batches) * batches))))
        figures.append(Figure(BENCH, "baseline: JetStream pull + ack only (no store)", rate(n, raw_s),
                              "readings/s"))
        store_s = _store_alone(ctx, work, f"sqlite:{ctx.workdir / 'alone.db'}")
        figures.append(Figure(BENCH, "baseline: SQLite store_batch alone (1 process)", rate(n, store_s),
                              "readings/s"))
        for k in (1, 2, 3):
            total, cpu, _ = _run_sinks(ctx, cluster, work, trust, k, f"sqlite:{ctx.workdir / f'sinks{k}.db'}")
            figures.append(Figure(BENCH, f"end to end, {k} sink(s), SQLite", rate(n, total), "readings/s",
                                  baseline="baseline: SQLite store_batch alone (1 process)", note=note))
            figures.append(Figure(BENCH, f"sink CPU per 1k readings, {k} sink(s), SQLite",
                                  cpu / n * 1000 * 1000, "ms", better="lower"))
        figures += _postgres_cases(ctx, cluster, work, trust, note)
    figures.append(Figure(BENCH, "signed batch bytes per reading", work.bytes_per_reading, "B", better="lower",
                          note=f"{per_batch} readings per batch, Ed25519 COSE_Sign1"))
    return figures
