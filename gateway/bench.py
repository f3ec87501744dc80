"""Gateway figures for `lifeline bench`: end-to-end throughput, alarm latency, backlog drain and memory.

Everything runs on the real parts: the gateway's own pipeline, commit stage and forwarder in this
process, real SQLite files, the real MQTT uplink to a real Mosquitto on a free loopback port, real
Ed25519 signatures; a reading counts as done when the broker has PUBACKed the batch that carries it.
The gateway process is pinned to one core (the broker to another where there is one), as the budgets
are stated for one core. Each figure is printed next to baselines measured in the same run: a raw paho
QoS 1 publish loop and raw SQLite commits on the same disk.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cbor2

from lifeline.gateway import testing
from lifeline.gateway.clock import SystemClock
from lifeline.gateway.config import GatewayConfig
from lifeline.gateway.daemon import Gateway
from lifeline.gateway.ingress.base import RawFrame, Reception
from lifeline.gateway.uplink import MqttUplink
from lifeline.protocols import frame, keys, schema
from lifeline.tools.bench import BenchContext, Figure, bench_baselines
from lifeline.tools.bench_mqtt import raw_paho_qos1_rate
from lifeline.tools.broker import MosquittoBroker

B = "gateway"


def _pin(pid: int, cpu: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if cpu < len(cpus):
        os.sched_setaffinity(pid, {cpus[cpu]})


def _nodes(n: int, kind: str, offset: int = 0, suite: str = "intl") -> list[testing.TestNode]:
    return [testing.TestNode((0x4C4C000000000000 + offset + i).to_bytes(8, "big"), kind=kind, suite=suite)
            for i in range(n)]


def _config(state: Path, broker: MosquittoBroker | None, suite: str = "intl") -> GatewayConfig:
    sections: dict[str, dict[str, object]] = {}
    extra = ""
    if broker is not None:
        extra = (f'[[uplink.endpoints]]\nname = "bench"\nhost = "{broker.host}"\nport = {broker.port}\n')
    return testing.make_config(state, gateway_id="gw-bench", extra=extra, sections=sections,
                               gateway_keys={"suite": suite} if suite != "intl" else None)


class Timed:
    """AckedPublisher wrapper: notes the PUBACK time of every live batch and the alarms inside it."""

    def __init__(self, inner: MqttUplink) -> None:
        self.inner = inner
        self.alarm_done: dict[tuple[bytes, int], float] = {}

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.inner.publish(topic, payload)
        t = time.perf_counter()
        if topic.endswith("/up/live"):
            cose = cbor2.loads(payload)
            for r in cbor2.loads(cose.value[2])[7]:
                if r[5] == schema.K_ALARM_RAISED and r[10] == 0:
                    self.alarm_done.setdefault((r[1], r[2]), t)

    def is_connected(self) -> bool:
        return self.inner.is_connected()

    def endpoint_states(self) -> Mapping[str, str]:
        return self.inner.endpoint_states()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def set_command_handler(self, handler: Any) -> None:
        self.inner.set_command_handler(handler)


async def _start(state: Path, broker: MosquittoBroker | None, nodes: Sequence[testing.TestNode],
                 *, timed: bool = False, suite: str = "intl") -> tuple[Gateway, Timed | None]:
    cfg = _config(state, broker, suite)
    if not cfg.gateway.key_file.exists():
        keys.save_private_key(keys.generate_for(suite), cfg.gateway.key_file)
    if nodes and not cfg.gateway.registry_db.exists():
        testing.provision(cfg.gateway.registry_db, nodes)
    publisher: Any = None
    wrapper = None
    if broker is not None:
        uplink = MqttUplink.from_config(cfg.gateway.id, cfg.uplink, clock=SystemClock())
        publisher = wrapper = Timed(uplink) if timed else None
        publisher = publisher or uplink
    gw = Gateway(cfg, publisher=publisher, adapters=[], serve_metrics=False, run_forwarder=broker is not None)
    await gw.start()
    if broker is not None:
        inner = wrapper.inner if wrapper is not None else publisher
        if not await inner.wait_connected(30):
            raise RuntimeError("uplink did not connect to the bench broker")
    return gw, wrapper


def _frames(nodes: Sequence[testing.TestNode], n: int) -> list[bytes]:
    out = []
    for i in range(n):
        node = nodes[i % len(nodes)]
        out.append(node.uplink(schema.K_WATER_LEVEL, {1: 300 + i % 97, 2: 12, 15: 3400}, time=200_000_000))
    return out


def _settled(gw: Gateway) -> bool:
    return sum(gw.buffer.pending) == 0 and gw.buffer.outbox_count == 0 and gw.forwarder.inflight == 0


async def _wait_settled(gw: Gateway, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _settled(gw):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not drained in {timeout_s:.0f}s: pending={gw.buffer.pending} "
                               f"outbox={gw.buffer.outbox_count}")
        await asyncio.sleep(0.005)


async def _submit(gw: Gateway, frames: Sequence[bytes], chunk: int = 1000) -> None:
    sink = gw.sink
    for i in range(0, len(frames), chunk):
        rx = Reception("lora-udp", "bench", int(time.time() * 1000), -90, 50)
        await sink.submit_many([RawFrame(f, rx) for f in frames[i:i + chunk]])


async def throughput(ctx: BenchContext, broker: MosquittoBroker, suite: str = "intl",
                     n: int | None = None) -> float:
    """Readings/s from ingest to PUBACK; ``suite`` is both the nodes' frame suite and the batch signature's."""
    nodes = _nodes(10_000, "water_level", suite=suite)
    n = n or ctx.scale(300_000, 40_000)
    frames = _frames(nodes, n)
    gw, _ = await _start(ctx.workdir / f"throughput-{suite}", broker, nodes, suite=suite)
    try:
        t0 = time.perf_counter()
        await _submit(gw, frames)
        await gw.flush()
        await _wait_settled(gw, 600)
        elapsed = time.perf_counter() - t0
        accepted = sum(v for v in gw.stats.accepted.values.values())
        if accepted != n:
            raise RuntimeError(f"accepted {accepted} of {n}")
    finally:
        await gw.stop()
    return n / elapsed


async def alarm_latency(ctx: BenchContext, broker: MosquittoBroker) -> list[float]:
    background = _nodes(1000, "water_level")
    alarmers = _nodes(500, "smoke", offset=100_000)
    gw, timed = await _start(ctx.workdir / "latency", broker, background + alarmers, timed=True)
    assert timed is not None
    seconds = ctx.scale(30, 6)
    sent: dict[tuple[bytes, int], float] = {}
    try:
        sink = gw.sink
        bg = _frames(background, 1000 * seconds)
        start = time.perf_counter()
        tick = 0
        a = 0
        while tick < seconds * 100:  # 10 ms ticks: 10 background readings each = 1,000/s
            due = start + tick * 0.01
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            rx = Reception("lora-udp", "bench", int(time.time() * 1000), -90, 50)
            await sink.submit_many([RawFrame(f, rx) for f in bg[tick * 10:(tick + 1) * 10]])
            if tick % 5 == 2:  # an alarm every 50 ms
                node = alarmers[a % len(alarmers)]
                a += 1
                data = node.uplink(schema.K_ALARM_RAISED, {1: a % 65536, 2: 0, 3: 1500},
                                   flags=frame.FLAG_ACK_REQ, time=200_000_000)
                sent[(node.device_id, node.fcnt)] = time.perf_counter()
                await sink.submit(RawFrame(data, rx))
            tick += 1
        await gw.flush()
        await _wait_settled(gw, 60)
    finally:
        await gw.stop()
    lat = [(timed.alarm_done[k] - t) * 1000 for k, t in sent.items() if k in timed.alarm_done]
    if len(lat) != len(sent):
        raise RuntimeError(f"{len(sent) - len(lat)} alarms never PUBACKed on the live lane")
    return lat


async def fill_backlog(ctx: BenchContext, state: Path, nodes: Sequence[testing.TestNode], n: int,
                       expect: int | None = None) -> None:
    """Add ``n`` readings to the buffer at ``state`` (no uplink); it must then hold ``expect`` (default n)."""
    gw, _ = await _start(state, None, nodes)
    try:
        for i in range(0, n, 50_000):
            await _submit(gw, _frames(nodes, min(50_000, n - i)))
        await gw.flush()
        want = n if expect is None else expect
        if sum(gw.buffer.pending) != want:
            raise RuntimeError(f"backlog holds {sum(gw.buffer.pending)} of {want}")
    finally:
        await gw.stop()


async def drain(state: Path, broker: MosquittoBroker) -> tuple[float, int]:
    gw, _ = await _start(state, broker, ())
    try:
        n = sum(gw.buffer.pending)
        t0 = time.perf_counter()
        await _wait_settled(gw, 1200)
        return time.perf_counter() - t0, n
    finally:
        await gw.stop()


def _push_data(token: int, frames: Sequence[bytes]) -> bytes:
    rxpk = [{"tmst": 1000 + i, "chan": 0, "rfch": 0, "freq": 868.1, "stat": 1, "modu": "LORA",
             "datr": "SF9BW125", "codr": "4/5", "rssi": -97, "lsnr": 5.5, "size": len(f),
             "data": base64.b64encode(f).decode()} for i, f in enumerate(frames)]
    return (bytes((2,)) + token.to_bytes(2, "big") + b"\x00" + bytes.fromhex("aa555a0000000101")
            + json.dumps({"rxpk": rxpk}).encode())


def _proc_status(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines()
            if line.startswith(("VmHWM:", "VmRSS:"))}


def daemon_rss(state: Path, n_frames: int) -> dict[str, int]:
    """Start the real daemon (`lifeline gateway run`) on a filled state dir, send it frames as a Semtech
    packet forwarder would, and read its peak RSS from /proc once every frame is acknowledged."""
    port = testing.free_udp_port()
    cfg = state / "gateway.toml"
    daemon_cfg = state / "daemon.toml"
    daemon_cfg.write_text(cfg.read_text() + f'\n[[ingress]]\ntype = "lora-udp"\nname = "udp0"\n'
                          f"[ingress.options]\nport = {port}\n")
    notify_path = state / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(120)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), MALLOC_ARENA_MAX=os.environ.get("MALLOC_ARENA_MAX", "2"))
    proc = subprocess.Popen([sys.executable, "-c", "from lifeline.tools.cli import main; main()", "gateway", "run",
                             "--config", str(daemon_cfg)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        _pin(proc.pid, 0)
        ready_rss = _proc_status(proc.pid)["VmRSS"]
        nodes = _nodes(10_000, "water_level")
        for node in nodes:
            node.fcnt = 10_000_000  # beyond what the fill used
        frames = _frames(nodes, n_frames)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            for token, i in enumerate(range(0, len(frames), 20)):
                udp.sendto(_push_data(token & 0xFFFF, frames[i:i + 20]), ("127.0.0.1", port))
                udp.recvfrom(64)  # PUSH_ACK: the adapter took the datagram
        time.sleep(1.0)  # let the last groups commit before reading the peak
        values = _proc_status(proc.pid)
        return {"vm_hwm": values["VmHWM"], "vm_rss": values["VmRSS"], "ready_rss": ready_rss,
                "devices": len(nodes)}
    finally:
        proc.terminate()
        proc.wait(60)
        notify.close()


def _percentile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def bench(ctx: BenchContext) -> list[Figure]:
    figures: list[Figure] = []
    logging.getLogger("lifeline").setLevel(logging.ERROR)  # the bench's own traffic is not news
    _pin(0, 0)
    if not ctx.baselines:  # run alone: measure the same-run baselines here
        figures.extend(bench_baselines(ctx))
    with MosquittoBroker() as broker:
        if broker._proc is not None:
            _pin(broker._proc.pid, 1)
        paho = raw_paho_qos1_rate(broker.host, broker.port, ctx.scale(50_000, 10_000), size=1024)
        figures.append(Figure(B, "paho_qos1_publish_rate", paho, "msgs/s",
                              note="raw paho, 1 KiB QoS 1, 100 in flight"))

        rate = asyncio.run(throughput(ctx, broker))
        figures.append(Figure(B, "e2e_throughput", rate, "readings/s", budget=50_000,
                              baseline="sqlite_group_commit_rows",
                              note="ingest → verify → commit (fsync) → sign → PUBACK, one core, 10,000 devices"))

        lat = asyncio.run(alarm_latency(ctx, broker))
        for q in (50, 95, 99):
            figures.append(Figure(B, f"alarm_latency_p{q}", _percentile(lat, q), "ms", better="lower",
                                  budget=10.0 if q == 99 else None, baseline="sqlite_commit_rate",
                                  note=f"ingest → PUBACK, {len(lat)} alarms over 1,000 readings/s"))

        # the RSS budget is stated for 1 M buffered readings, the drain budget for 1.44 M: measure RSS on a
        # 1 M backlog, then top the same backlog up to 1.44 M (the 50 k frames of the RSS run count) and drain
        n_rss = ctx.scale(1_000_000, 70_000)
        n = ctx.scale(1_440_000, 100_000)
        rss_frames = ctx.scale(50_000, 10_000)
        nodes = _nodes(10_000, "water_level")
        state = ctx.workdir / "backlog"
        asyncio.run(fill_backlog(ctx, state, nodes, n_rss))
        rss = daemon_rss(state, rss_frames)
        for node in nodes:
            node.fcnt = 20_000_000  # beyond what the fill and the RSS run used
        asyncio.run(fill_backlog(ctx, state, nodes, n - n_rss - rss_frames, expect=n))
        figures.append(Figure(B, "daemon_rss_peak", rss["vm_hwm"] / 2**20, "MiB", better="lower",
                              budget=None if ctx.quick else 60e6 / 2**20,
                              note=f"lifeline gateway run: {rss['devices']:,} devices, {n_rss:,} buffered readings "
                                   f"+ {rss_frames:,} frames over the Semtech UDP adapter; budget 60 MB = 57.2 MiB"))
        seconds, drained = asyncio.run(drain(state, broker))
        figures.append(Figure(B, "backlog_drain_rate", drained / seconds, "readings/s",
                              baseline="paho_qos1_publish_rate", note=f"{drained:,} readings in {seconds:.1f} s"))
        figures.append(Figure(B, "backlog_drain_1.44M", 1_440_000 / (drained / seconds), "s", better="lower",
                              budget=60.0, note="time for 24 h of 5,000 nodes at 5-minute reports"))
    return figures


if __name__ == "__main__":
    _ctx = BenchContext(quick="--quick" in sys.argv, workdir=Path(tempfile.mkdtemp(prefix="lifeline-gw-bench-")))
    for _f in bench(_ctx):
        print(f"{_f.name:28} {_f.value:14,.2f} {_f.unit}")
