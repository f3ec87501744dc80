"""A whole deployment on one machine for running scenarios against the real gateway: the gateway daemon
(``lifeline.gateway.daemon.Gateway`` in-process, built from a TOML config exactly as ``lifeline gateway
run`` builds it: real adapters, real MqttUplink, real SQLite), the RAK3172 emulator on a pty and the
packet forwarder emulator on UDP in front of it, a node broker for NB-IoT, a platform broker (its own
Mosquitto, with persistence so a stopped platform broker keeps the sink's session) and the reference
platform sink (``lifeline.tools.platform_sink.PlatformSink``).

Used by the scenario tests and by ``lifeline sim run --testbed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path
from typing import Any

from lifeline.gateway.config import load as load_config
from lifeline.gateway.daemon import Gateway
from lifeline.gateway.registry import Registry
from lifeline.protocols import keys
from lifeline.sim_devices import faults as faultmod
from lifeline.sim_devices.fleet import Fleet
from lifeline.sim_devices.links import GatewayLinks
from lifeline.sim_devices.provision import write_records
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.platform_sink import PlatformSink

GATEWAY_ID = "gw-sim"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_toml(state: Path, *, modem: Path, udp_port: int, node_broker: MosquittoBroker,
                 platform: MosquittoBroker, ble_port: int | None = None) -> str:
    lines = [
        "[gateway]", f'id = "{GATEWAY_ID}"', f'state_dir = "{state}"', f'key_file = "{state / "gateway.key"}"',
        "[metrics]", 'listen = "127.0.0.1"', "port = 0",
        "[dedupe]", "window_ms = 2000", "collect_ms = 200",
        "[forwarder]", "retry_initial_ms = 100", "retry_max_ms = 1000",
        "[uplink]", "keepalive_s = 5", "connect_timeout_s = 2", "publish_timeout_s = 3",
        "[[uplink.endpoints]]", 'name = "platform"', 'host = "127.0.0.1"', f"port = {platform.port}",
        "[[ingress]]", 'type = "lora-serial"', 'name = "lora0"', "[ingress.options]",
        f'port = "{modem}"', 'region = "EU868"', "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
        "[[ingress]]", 'type = "lora-udp"', 'name = "udp0"', "[ingress.options]",
        'bind = "127.0.0.1"', f"port = {udp_port}", 'region = "EU868"',
        "[[ingress]]", 'type = "nbiot-mqtt"', 'name = "nb0"', "[ingress.options]",
        'host = "127.0.0.1"', f"port = {node_broker.port}", 'client_id = "lifeline-gw-sim-nb0"',
        "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
    ]
    if ble_port is not None:
        lines += ["[[ingress]]", 'type = "ble"', 'name = "ble0"', "[ingress.options]",
                  f'backend = "bumble:tcp-client:127.0.0.1:{ble_port}"', 'address = "F0:0A:0B:0C:0D:0E"',
                  "dedupe_window_ms = 5000"]
    return "\n".join(lines) + "\n"


async def _until(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


class Testbed:
    def __init__(self, workdir: Path, fleet: Fleet, records: list[dict[str, Any]], *,
                 node_broker: MosquittoBroker | None = None, ble: bool = False) -> None:
        self.workdir = workdir
        self.fleet = fleet
        self.records = records
        self._own_node_broker = node_broker is None
        self.node_broker = node_broker or MosquittoBroker(workdir=workdir / "node-broker")
        self.platform = MosquittoBroker(workdir=workdir / "platform-broker", persistence=True)
        self.ble = ble
        self.gw: Gateway | None = None
        self.sink: PlatformSink | None = None
        self.links: GatewayLinks | None = None
        self.env = faultmod.Environment()

    async def start(self) -> Testbed:
        wd = self.workdir
        wd.mkdir(parents=True, exist_ok=True)
        if self._own_node_broker:
            self.node_broker.start()
        self.platform.start()
        state = wd / "state"
        state.mkdir(exist_ok=True)
        key = keys.generate()
        keys.save_private_key(key, state / "gateway.key", overwrite=True)
        public = keys.public_key_hex(key)
        udp_port = free_udp_port()
        modem_path = wd / "ttyLORA0"
        self.links = GatewayLinks(self.fleet, serial_path=modem_path, udp=("127.0.0.1", udp_port),
                                  broker=(self.node_broker.host, self.node_broker.port), ble=self.ble)
        # the modem exists before the gateway opens it; the forwarder needs the gateway's UDP port
        await self.links.start_serial()
        ble_port = await self.links.start_ble() if self.ble else None
        if not self.ble:
            self.fleet.ble_delivery = lambda v, payload: False  # no BLE radio at this gateway
        cfg_path = wd / "gateway.toml"
        cfg_path.write_text(gateway_toml(state, modem=modem_path, udp_port=udp_port, node_broker=self.node_broker,
                                         platform=self.platform, ble_port=ble_port), encoding="utf-8")
        config = load_config(cfg_path)
        records_file = write_records(wd / "devices.jsonl", self.records)
        lines = records_file.read_text(encoding="utf-8").splitlines()
        with Registry(config.gateway.registry_db) as reg:  # what `lifeline gateway devices import` does
            report = reg.import_lines(lines, now_ms=time.time_ns() // 1_000_000)
        if report.rejected:
            raise RuntimeError(f"registry import rejected records: {report}")
        self.sink = PlatformSink(self.platform.host, self.platform.port, db=wd / "platform.db",
                                 trust={GATEWAY_ID: bytes.fromhex(public)}, client_id="lifeline-sim-sink",
                                 # a plain (not shared) subscription in a persistent session: Mosquitto 2.0
                                 # does not restore shared subscriptions after a restart, so batches sent
                                 # before the sink re-subscribed were dropped (docs/protocol.md 7.4)
                                 share_group=None, session_expiry_s=3600).start()
        self.gw = Gateway(config)
        await self.gw.start()
        await self.links.start_udp()
        await self.links.start_broker()
        sink = self.sink
        await _until(lambda: sink.presence.get(GATEWAY_ID) == "online", 30, "the gateway online at the platform")
        await self.links.wait_modem_configured()
        await asyncio.sleep(0.3)  # the forwarder marks the uplink up shortly after the connection
        self.env.stop_platform = self.platform.stop
        self.env.start_platform = self.platform.start
        modem = self.links.modem
        self.env.unplug_modem = modem.unplug
        self.env.replug_modem = modem.replug
        bridge = self.links.bridge
        if bridge is not None:
            self.env.publish_raw = bridge.raw
        return self

    def rejects(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.gw is not None:
            for (reason, _radio), n in self.gw.stats.rejects.values.items():
                out[reason] = out.get(reason, 0) + int(n)
        return out

    async def drain(self, expected: int, timeout_s: float = 60.0, settle_s: float = 1.0) -> None:
        """Wait until the sink holds at least ``expected`` readings and nothing new arrived for
        ``settle_s`` (or the timeout)."""
        sink = self.sink
        assert sink is not None
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = sink.record_count()
            if n != last:
                last, since = n, time.monotonic()
            elif n >= expected and time.monotonic() - since >= settle_s:
                return
            await asyncio.sleep(0.05)

    def sink_records(self) -> list[Any]:
        assert self.sink is not None
        return self.sink.records()

    async def stop(self) -> None:
        if self.gw is not None:
            with contextlib.suppress(Exception):
                await self.gw.stop()
        if self.links is not None:
            with contextlib.suppress(Exception):
                await self.links.stop()
        if self.sink is not None:
            self.sink.stop()
        self.platform.close()
        if self._own_node_broker:
            self.node_broker.close()


async def run_scenario(sc: Any, workdir: Path, *, duration_s: float | None = None, speed: float | None = 600.0,
                       node_broker: MosquittoBroker | None = None, ble: bool = False,
                       progress: Any = None, drain_timeout_s: float = 60.0) -> tuple[Any, Any, dict[str, Any]]:
    """Build ``sc``'s fleet, start a testbed, run, wait until the platform has everything, judge.
    Returns (fleet, outcome, summary)."""
    from lifeline.sim_devices import runner

    fleet, records = runner.build(sc)
    bed = Testbed(workdir, fleet, records, node_broker=node_broker, ble=ble)
    wall0 = time.monotonic()
    try:
        await bed.start()
        attacker = runner.schedule_faults(sc, fleet, bed.env)
        fleet.start()
        cpu = await runner.run(fleet, duration_s if duration_s is not None else sc.duration_s, speed=speed,
                               progress=progress, cooperative=True)
        if not bed.platform.is_running():
            bed.platform.start()
        expected = len({(r.device, r.fcnt) for r in runner.readings(fleet) if r.heard and r.valid})
        await bed.drain(expected, timeout_s=drain_timeout_s)
        outcome = runner.judge(sc, fleet, sink_records=bed.sink_records(), gateway_rejects=bed.rejects(),
                               attacker=attacker)
        extra: dict[str, Any] = {"links": bed.links.counters() if bed.links else {},
                                 "chain_intact": all(r.intact for r in bed.sink.chain_report())
                                 if bed.sink else None}
        summary = runner.summarize(fleet, outcome, cpu, time.monotonic() - wall0, extra)
        return fleet, outcome, summary
    finally:
        await bed.stop()
