"""In-process stand-ins for tests of the gateway's own logic (not for end-to-end tests, which use the
real MqttUplink against a real Mosquitto, and the real daemon: :mod:`lifeline.gateway.testing_proc`).

:class:`MemoryPublisher` satisfies AckedPublisher: it records what was published and can be switched
offline, or told to hold PUBACKs, to exercise the forwarder's retry and outbox paths.
:class:`MemoryAdapter` is an ingress adapter without a radio: tests feed frames through the pipeline's
real entry point and read the downlinks the gateway sent back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.gateway.clock import ManualClock
from lifeline.gateway.config import GatewayConfig, load
from lifeline.gateway.daemon import Gateway
from lifeline.gateway.ingress.base import DownlinkRequest, FrameSink, RawFrame, Reception
from lifeline.gateway.registry import Registry
from lifeline.gateway.tasks import cancel_and_wait
from lifeline.gateway.testing_proc import LIFELINE
from lifeline.gateway.uplink_api import UplinkUnavailable
from lifeline.protocols import batch, frame, keys, schema, suites


class MemoryPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self.online = True
        self.hold = False  # when True, publish waits until release() (PUBACK delayed)
        self._released = asyncio.Event()
        self.handler: object = None

    async def publish(self, topic: str, payload: bytes) -> None:
        if not self.online:
            raise UplinkUnavailable("offline")
        if self.hold:
            await self._released.wait()
            if not self.online:
                raise UplinkUnavailable("connection lost before PUBACK")
        self.published.append((topic, payload))

    def release(self) -> None:
        self.hold = False
        self._released.set()

    def is_connected(self) -> bool:
        return self.online

    def endpoint_states(self) -> Mapping[str, str]:
        return {"memory": "connected" if self.online else "down"}

    def topics(self, suffix: str) -> list[bytes]:
        return [p for t, p in self.published if t.endswith(suffix)]


class MemoryAdapter:
    """An IngressAdapter with no hardware: ``hear()`` delivers bytes as if received on air."""

    def __init__(self, name: str = "mem0", radio: str = "lora-udp", accept_downlinks: bool = True) -> None:
        self.name = name
        self.radio = radio
        self.accept_downlinks = accept_downlinks
        self.sink: FrameSink | None = None
        self.downlinks: list[DownlinkRequest] = []
        self.heard = 0

    async def start(self, sink: FrameSink) -> None:
        self.sink = sink

    async def stop(self) -> None:
        self.sink = None

    async def hear(self, payload: bytes, rx_ms: int, rssi: int | None = -80, snr_x10: int | None = 75) -> None:
        assert self.sink is not None, "adapter not started"
        self.heard += 1
        await self.sink.submit(RawFrame(payload, Reception(self.radio, self.name, rx_ms, rssi, snr_x10)))

    async def send_downlink(self, request: DownlinkRequest) -> bool:
        self.downlinks.append(request)
        return self.accept_downlinks

    def counters(self) -> Mapping[str, int]:
        return {"heard": self.heard, "downlinks": len(self.downlinks)}


# ---------------------------------------------------------------------------------------------- helpers

def free_udp_port() -> int:
    """A loopback UDP port that was free a moment ago (for a packet forwarder's gateway port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_cli(*args: str) -> str:
    """Run `lifeline gateway ARGS...`; its stdout, or an AssertionError with its stderr."""
    r = subprocess.run([LIFELINE, "gateway", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"lifeline gateway {' '.join(args)}: {r.stderr}"
    return r.stdout


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait for ``condition`` with a deadline (never a fixed sleep for correctness)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------- fixtures

def config_text(state_dir: Path, gateway_id: str = "gw-test", extra: str = "",
                sections: Mapping[str, Mapping[str, object]] | None = None,
                gateway_keys: Mapping[str, object] | None = None) -> str:
    """A complete gateway TOML for tests (no uplink endpoints, metrics on a free loopback port);
    ``gateway_keys`` are more keys of the [gateway] table (e.g. node_suites)."""
    lines = [
        "[gateway]",
        f'id = "{gateway_id}"',
        f'state_dir = "{state_dir}"',
        f'key_file = "{state_dir / "gateway.key"}"',
        *(f"{k} = {json.dumps(v)}" for k, v in (gateway_keys or {}).items()),
        "[metrics]",
        'listen = "127.0.0.1"',
        "port = 0",
    ]
    for name, values in (sections or {}).items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n" + extra


def make_config(state_dir: Path, gateway_id: str = "gw-test", extra: str = "",
                sections: Mapping[str, Mapping[str, object]] | None = None,
                gateway_keys: Mapping[str, object] | None = None) -> GatewayConfig:
    path = state_dir / "gateway.toml"
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text(state_dir, gateway_id, extra, sections, gateway_keys), encoding="utf-8")
    return load(path)


class TestNode:
    """A provisioned node as the firmware would be: its root key, counters, and real encoded frames."""

    __test__ = False  # not a pytest class

    def __init__(self, device_id: bytes, kind: str = "smoke", root_key: bytes | None = None,
                 suite: str = "intl") -> None:
        self.device_id = device_id
        self.kind = kind
        self.suite = suite  # the node's frame crypto suite: intl | sm
        self.root_key = root_key if root_key is not None else hashlib.sha256(b"test-root" + device_id).digest()
        self.keys = frame.derive_keys(self.root_key, device_id, suites.suite_id(suite))
        self.fcnt = 0

    @property
    def hex(self) -> str:
        return self.device_id.hex()

    def record(self, **overrides: object) -> dict[str, object]:
        rec: dict[str, object] = {
            "device_id": self.hex, "root_key": self.root_key.hex(), "kind": self.kind,
            "location": {"address": "1 Test Street", "lat_udeg": 31230416, "lon_udeg": 121473701,
                         "spatial_unit": "district-7"},
            "data_class": "sensitive", "install_date": "2025-03-01", "design_life_years": 10,
            "tags": ["test"], "technician": "t1"}
        if self.suite != "intl":
            rec["suite"] = self.suite
        rec.update(overrides)
        return rec

    def uplink(self, kind: int, fields: dict[int, int | bytes], *, fcnt: int | None = None, flags: int = 0,
               time: int = 100_000) -> bytes:
        if fcnt is None:
            self.fcnt += 1
            fcnt = self.fcnt
        return frame.encode(self.keys, self.device_id, fcnt, time, kind, fields, flags)

    def smoke(self, alarm_state: int = 0, **kw: Any) -> bytes:
        return self.uplink(schema.K_SMOKE, {1: alarm_state, 5: 215, 15: 3000}, **kw)

    def decode_downlink(self, data: bytes) -> frame.Frame:
        return frame.decode(data, self.keys, downlink=True)


def provision(registry_db: Path, nodes: Sequence[TestNode], now_ms: int = 1_700_000_000_000) -> None:
    with Registry(registry_db) as reg:
        report = reg.import_lines([json.dumps(n.record()) for n in nodes], now_ms=now_ms)
        assert report.rejected == 0, report


def write_signing_key(path: Path) -> Ed25519PrivateKey:
    key = keys.generate()
    keys.save_private_key(key, path, overwrite=True)
    return key


# ---------------------------------------------------------------------------------------------- harness


@dataclass
class Harness:
    """A started in-process gateway with a memory publisher, one memory adapter and a manual clock."""

    gw: Gateway
    pub: MemoryPublisher
    adapter: MemoryAdapter
    key: Ed25519PrivateKey
    clock: ManualClock
    config: GatewayConfig
    nodes: list[TestNode]

    async def hear(self, payload: bytes, adapter: MemoryAdapter | None = None, *, flush: bool = True,
                   rssi: int | None = -80) -> None:
        await (adapter or self.adapter).hear(payload, self.clock.now_ms(), rssi=rssi)
        if flush:
            await self.gw.flush()

    def batches(self) -> list[batch.Batch]:
        return [batch.verify(p, self.key.public_key()) for t, p in self.pub.published if "/up/" in t]

    def records(self) -> list[batch.BatchRecord]:
        return [r for b in self.batches() for r in b.records]

    def rejects(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (reason, _radio), n in self.gw.stats.rejects.values.items():
            out[reason] = out.get(reason, 0) + n
        return out

    async def stop(self) -> None:
        await self.gw.stop()

    async def crash(self) -> None:
        """Simulate kill -9: stop every task without a flush; uncommitted transactions roll back."""
        gw = self.gw
        gw._stopped = True
        await cancel_and_wait(gw._tasks.values())
        await cancel_and_wait([task for _, task in list(gw.forwarder._inflight.values())])
        if gw._metrics_server is not None:
            await gw._metrics_server.close()
        await gw.close_state()


async def start_harness(state_dir: Path, nodes: Sequence[TestNode] = (), *, clock: ManualClock | None = None,
                        publisher: MemoryPublisher | None = None, adapters: Sequence[MemoryAdapter] | None = None,
                        extra: str = "", run_forwarder: bool = False, serve_metrics: bool = False,
                        rules: Any = None, provision_nodes: bool = True, fast_alarms: bool = False,
                        sections: Mapping[str, Mapping[str, object]] | None = None,
                        gateway_keys: Mapping[str, object] | None = None) -> Harness:
    config = make_config(state_dir, extra=extra, sections=sections, gateway_keys=gateway_keys)
    if config.gateway.key_file.exists():
        key = keys.load_private_key(config.gateway.key_file)
    else:
        key = write_signing_key(config.gateway.key_file)
    if nodes and provision_nodes:
        provision(config.gateway.registry_db, nodes)
    clock = clock or ManualClock()
    pub = publisher or MemoryPublisher()
    ads = list(adapters) if adapters is not None else [MemoryAdapter()]
    gw = Gateway(config, publisher=pub, adapters=ads, clock=clock, run_forwarder=run_forwarder,
                 serve_metrics=serve_metrics, rules=rules, fast_alarms=fast_alarms)
    await gw.start()
    return Harness(gw, pub, ads[0], key, clock, config, list(nodes))
