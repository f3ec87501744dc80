"""Everything the demo runs besides the district, started in order and stopped in reverse:

* the **site broker** (Mosquitto): the NB-IoT operator's broker the gateway's ``nbiot-mqtt`` radio
  subscribes to, and the site LAN the gateway's rules publish sirens and notices on;
* the **platform broker** (Mosquitto with persistence, its own port): stopped and started again on the
  same port for the outage;
* the **GSM modem** (emulated, on a pty) the gateway's SMS action writes to;
* the **radios in front of the gateway** (``sim_devices.links.GatewayLinks``): the RAK3172 emulator on a
  pty, the packet forwarder over UDP, NB-IoT frames on the site broker, BLE over bumble;
* the **gateway daemon** as a child process (``lifeline gateway run``), its key, status token, rules and
  configuration in the work directory, the devices imported with ``lifeline gateway devices import``;
* the **platform sink** (``PlatformSink``) with a persistent, non-shared subscription, so batches
  published while it reconnects after the broker's restart wait in the broker (docs/protocol.md 7.4).

Every child process is tracked by PID (:meth:`DemoStack.child_pids`); :meth:`DemoStack.stop` is
idempotent and stops each part even when another fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.protocols import keys
from lifeline.tools import demo_story
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.demo_gateway import GatewayError, GatewayProcess, lifeline_executable
from lifeline.tools.platform_sink import PlatformSink

SINK_CLIENT = "lifeline-demo-platform"
Say = Callable[[str], None]


def sim_district() -> Any:
    """The simulator's facade for the demo (imported by name: the simulator is outside the strict set)."""
    return importlib.import_module("lifeline.sim_devices.demo_district")


class StackError(RuntimeError):
    """A part of the demo could not start (exit 3)."""


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


class LanWatcher:
    """Listens to the site LAN (``site/#``) for what the gateway's rules publish."""

    def __init__(self, host: str, port: int, on_message: Callable[[str, str], None]) -> None:
        self._on = on_message
        self.messages: list[tuple[str, str]] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lifeline-demo-lan", protocol=mqtt.MQTTv311)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe("site/#", qos=1)
        self._client.on_message = self._message
        self.host, self.port = host, port
        self._inbox: list[tuple[str, str]] = []

    def _message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        self._inbox.append((msg.topic, bytes(msg.payload).decode("utf-8", "replace")))

    def start(self) -> LanWatcher:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        return self

    def pump(self) -> None:
        """Hand what arrived to the callback (on the caller's thread)."""
        while self._inbox:
            topic, payload = self._inbox.pop(0)
            self.messages.append((topic, payload))
            self._on(topic, payload)

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # first: loop_stop() waits for unacknowledged QoS 1 messages
            self._client.disconnect()
        self._client.loop_stop()


class DemoStack:
    def __init__(self, workdir: Path, fleet: Any, records: list[dict[str, Any]], story: demo_story.Story,
                 *, say: Say, site: tuple[float, float] = (0.0, 0.0), ble: bool = True) -> None:
        self.workdir = workdir
        self.fleet = fleet
        self.records = records
        self.story = story
        self.say = say
        self.site = site
        self.ble = ble
        self.state = workdir / "gateway"
        self.site_broker = MosquittoBroker(workdir=workdir / "site-broker")
        self.platform = MosquittoBroker(workdir=workdir / "platform-broker", persistence=True)
        self.gsm: Any = None
        self.links: Any = None
        self.gateway: GatewayProcess | None = None
        self.sink: PlatformSink | None = None
        self.lan: LanWatcher | None = None
        self.public_key_hex = ""
        self.spawned: list[tuple[str, int]] = []  # every child process ever started: (what, pid)
        self._stopped = False

    # ------------------------------------------------------------------------------------ start

    async def start(self, on_lan: Callable[[str, str], None]) -> None:
        district = sim_district()
        wd = self.workdir
        self.state.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.site_broker.start()
        self._spawned("site-broker", self.site_broker.pid)
        self.start_platform()
        self.say(f"site broker (NB-IoT + LAN) on 127.0.0.1:{self.site_broker.port} pid {self.site_broker.pid}; "
                 f"platform broker on 127.0.0.1:{self.platform.port} pid {self.platform.pid}")
        self.gsm = await district.gsm_modem(wd / "ttyGSM0")
        udp_port = _free_udp_port()
        modem_path = wd / "ttyLORA0"
        self.links = district.links(self.fleet, serial_path=modem_path, udp=("127.0.0.1", udp_port),
                                    broker=(self.site_broker.host, self.site_broker.port), ble=self.ble,
                                    site=self.site)
        await self.links.start_serial()  # the modem's pty exists before the gateway opens it
        ble_port = await self.links.start_ble() if self.ble else None
        if not self.ble:
            self.fleet.ble_delivery = lambda v, payload: False
        key = keys.generate()
        keys.save_private_key(key, self.state / "gateway.key", overwrite=True)
        self.public_key_hex = keys.public_key_hex(key)
        _write_private(self.state / "status.token", secrets.token_urlsafe(24) + "\n")
        rules = wd / "rules.toml"
        rules.write_text(demo_story.rules_toml(self.story, lan=(self.site_broker.host, self.site_broker.port),
                                               sms_port=wd / "ttyGSM0"), encoding="utf-8")
        config = wd / "gateway.toml"
        config.write_text(demo_story.gateway_toml(
            self.state, platform=(self.platform.host, self.platform.port),
            node_broker=(self.site_broker.host, self.site_broker.port), modem=modem_path, udp_port=udp_port,
            ble_port=ble_port, rules=rules), encoding="utf-8")
        devices = district.write_records(wd / "devices.jsonl", self.records)
        await self._import_devices(config, devices)
        self.sink = PlatformSink(self.platform.host, self.platform.port, db=wd / "platform.db",
                                 trust={demo_story.GATEWAY_ID: bytes.fromhex(self.public_key_hex)},
                                 client_id=SINK_CLIENT, share_group=None, session_expiry_s=3600).start()
        self.lan = LanWatcher(self.site_broker.host, self.site_broker.port, on_lan).start()
        self.gateway = GatewayProcess(config, self.state, wd / "gateway.log")
        await self.gateway.start()
        self._spawned("gateway", self.gateway.pid)
        self.say(f"gateway: lifeline {' '.join(self.gateway.argv[1:])} pid {self.gateway.pid}")
        try:
            await self.gateway.wait_ready()
            await self.links.start_udp()  # PULL_DATA until the gateway's UDP port answers
            await self.links.start_broker()
            await self.links.wait_modem_configured()
            sink = self.sink
            await sink.wait_for_async(lambda s: s.presence.get(demo_story.GATEWAY_ID) == "online", 30,
                                      "the gateway online at the platform")
        except (TimeoutError, OSError) as e:
            raise StackError(f"{e}\n{self.gateway.log_tail()}") from None
        self.say(f"gateway online at the platform; metrics {self.gateway.metrics_url}")

    async def _import_devices(self, config: Path, devices: Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            lifeline_executable(), "gateway", "devices", "import", str(devices), "--config", str(config), "--json",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            raise StackError(f"lifeline gateway devices import failed ({proc.returncode}): "
                             f"{err.decode(errors='replace')[-400:]}")
        counts = json.loads(out)["counts"]
        self.say(f"lifeline gateway devices import: {counts['added']} devices added to the registry")

    # ------------------------------------------------------------------------------------ the outage

    def stop_platform(self) -> None:
        self.platform.stop()

    def start_platform(self) -> int | None:
        self.platform.start()
        self._spawned("platform-broker", self.platform.pid)
        return self.platform.pid

    def _spawned(self, what: str, pid: int | None) -> None:
        if pid is not None:
            self.spawned.append((what, pid))

    # ------------------------------------------------------------------------------------ reading

    def sms_since(self, n: int) -> list[tuple[str, str, float]]:
        """(number, text, wall time) of the SMS the modem sent after the first ``n``."""
        if self.gsm is None:
            return []
        offset = time.time() - time.monotonic()
        return [(s.number, s.text, s.at + offset) for s in self.gsm.sent[n:]]

    def child_pids(self) -> dict[str, int]:
        """The child processes running now."""
        out: dict[str, int] = {}
        for name, pid in (("gateway", self.gateway.pid if self.gateway and self.gateway.running() else None),
                          ("site-broker", self.site_broker.pid), ("platform-broker", self.platform.pid)):
            if pid is not None:
                out[name] = pid
        return out

    # ------------------------------------------------------------------------------------ stop

    async def stop(self) -> int | None:
        """Gateway first (it commits what it heard), then the radios, the sink and the brokers.
        Returns the gateway's exit status."""
        if self._stopped:
            return None
        self._stopped = True
        code: int | None = None
        if self.gateway is not None:
            try:
                code = await self.gateway.stop()
            except BaseException:
                self.gateway.kill_now()
                raise
        for part in (self.links, self.gsm):
            if part is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(part.stop(), 10)
        if self.lan is not None:
            with contextlib.suppress(Exception):
                self.lan.stop()
        if self.sink is not None:
            with contextlib.suppress(Exception):
                self.sink.stop()
        for broker in (self.platform, self.site_broker):
            try:
                broker.stop()
            except Exception as e:  # keep stopping the others
                print(f"demo: stopping a broker: {e}", file=sys.stderr)
                with contextlib.suppress(Exception):
                    broker.kill()
        return code


__all__ = ["DemoStack", "GatewayError", "LanWatcher", "StackError"]
