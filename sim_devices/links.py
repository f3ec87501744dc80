"""Where the fleet's frames go: the gateway side of each radio.

* :class:`VirtualReceivers` (frames-only mode): a concentrator-like receiver (8 EU868 channels x SF7-12)
  and a modem-like receiver (869.525 MHz SF9) at the gateway site on the virtual air; frames are judged
  (path loss, sensitivity, collisions, capture) and counted, nothing else runs. For capacity planning and
  the bench.
* :class:`GatewayLinks` (against a real gateway): the RAK3172 emulator on a pty (``lora-serial``), the
  Semtech UDP packet forwarder emulator (``lora-udp``), the node broker over MQTT for NB-IoT frames
  (``lifeline/v1/nodes/<dev>/up``, QoS 1, exactly as a node publishes) and, optionally, BLE through bumble
  peripherals (:class:`BleBridge`, a few nodes: each is a full bumble host).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.sim_devices.air import Delivery, LoraParams, Radio
from lifeline.sim_devices.fleet import LORA_CHANNEL, Fleet, VirtualNode
from lifeline.sim_devices.packet_forwarder_emulator import EU868_CHANNELS, PacketForwarderEmulator


def hook_receiver(fleet: Fleet, radio: Radio) -> None:
    """Tell the fleet which of its transmissions ``radio`` received (keeps the radio's own handler)."""
    original = radio.on_delivery

    def on_delivery(d: Delivery) -> None:
        if d.ok:
            fleet.lora_heard(d.tx.seq, d.rssi_dbm, d.snr_db)
        if original is not None:
            original(d)

    radio.on_delivery = on_delivery


class VirtualReceivers:
    def __init__(self, fleet: Fleet, x_m: float = 0.0, y_m: float = 0.0, antenna_gain_db: float = 0.0) -> None:
        self.fleet = fleet
        self.received = 0
        conc = fleet.air.add_radio("gw-concentrator", x_m, y_m, antenna_gain_db=antenna_gain_db, duty_cycle=False)
        conc.listen([LoraParams(f, sf, 125) for f in EU868_CHANNELS for sf in range(7, 13)])
        hook_receiver(fleet, conc)
        self.radios = [conc]


class NodeBrokerBridge:
    """Publishes NB-IoT frames to the node broker as the node's modem would (QoS 1 on the node's topic)."""

    def __init__(self, host: str, port: int, client_id: str = "lifeline-fleet-sim") -> None:
        self.host = host
        self.port = port
        self.published = 0
        self.failed = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)

    def start(self) -> NodeBrokerBridge:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        return self

    def publish(self, v: VirtualNode, payload: bytes) -> bool:
        info = self._client.publish(f"lifeline/v1/nodes/{v.dev_id.hex()}/up", payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.failed += 1
            return False
        self.published += 1
        return True

    def raw(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

    def stop(self) -> None:
        # disconnect first: paho's loop_stop() joins a network thread that only ends once every QoS 1
        # message is acknowledged, so with one PUBACK outstanding it waited forever (a scenario test hung)
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()


class BleBridge:
    """BLE nodes as bumble peripherals on a BleAir; the gateway's BLE adapter reaches the air through a
    virtual controller served over HCI-over-TCP (``backend = "bumble:tcp-client:127.0.0.1:<port>"``)."""

    def __init__(self, fleet: Fleet, max_nodes: int = 8) -> None:
        from lifeline.sim_devices.ble_node import BleAir

        self.fleet = fleet
        self.max_nodes = max_nodes
        self.air = BleAir()
        self.nodes: dict[str, Any] = {}
        self.port = 0
        self._server: Any = None
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self.advertised = 0
        self.hold_s = 0.25  # real seconds each frame is advertised before the node's next one (a burst)

    async def start(self, gateway_address: str = "F0:0A:0B:0C:0D:0E") -> int:
        from bumble import hci
        from bumble.transport.tcp_server import open_tcp_server_transport_with_socket

        from lifeline.sim_devices.ble_node import BleNodeSim, RadioController

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self._server = await open_tcp_server_transport_with_socket(sock)
        RadioController("gw-hci", host_source=self._server.source, host_sink=self._server.sink, link=self.air)
        self.air.place(hci.Address(gateway_address), self.fleet.ble_gateway_xy)
        ble_nodes = [v for v in self.fleet.nodes if v.spec.radio == "ble"][: self.max_nodes]
        for i, v in enumerate(ble_nodes):
            address = "C0:%02X:%02X:%02X:%02X:%02X" % (0x10, (i >> 8) & 0xFF, i & 0xFF, v.dev_id[6], v.dev_id[7])
            node = BleNodeSim(self.air, address, dev_id=v.dev_id, legacy=not v.spec.ble_extended,
                              position=(v.spec.x_m, v.spec.y_m), name=v.name)
            await node.start()
            self.nodes[v.name] = node
        self.fleet.ble_delivery = self.deliver
        return self.port

    def deliver(self, v: VirtualNode, payload: bytes) -> bool:
        node = self.nodes.get(v.name)
        if node is None:
            return False  # beyond max_nodes: counted as not heard
        q = self._queues.get(v.name)
        if q is None:
            q = self._queues[v.name] = asyncio.Queue()
            task = asyncio.get_running_loop().create_task(self._advertiser(node, q))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        q.put_nowait(payload)
        self.advertised += 1
        return True

    async def _advertiser(self, node: Any, q: asyncio.Queue[bytes]) -> None:
        """One node's frames in order, each advertised for a burst before the next replaces it."""
        while True:
            payload = await q.get()
            await node.advertise(payload)
            await asyncio.sleep(self.hold_s)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                await node.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.close()
        if self._sock is not None:
            self._sock.close()


class GatewayLinks:
    """The real radios in front of a gateway: pty modem, UDP forwarder, node broker, BLE."""

    def __init__(self, fleet: Fleet, *, serial_path: Path | None = None, udp: tuple[str, int] | None = None,
                 broker: tuple[str, int] | None = None, ble: bool = False, site: tuple[float, float] = (0.0, 0.0)):
        self.fleet = fleet
        self.serial_path = serial_path
        self.udp = udp
        self.broker = broker
        self.ble = ble
        self.site = site
        self.modem: Any = None
        self.forwarder: PacketForwarderEmulator | None = None
        self.bridge: NodeBrokerBridge | None = None
        self.ble_bridge: BleBridge | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Everything configured (against an already running gateway)."""
        await self.start_serial()
        if self.ble:
            await self.start_ble()
        await self.start_udp(timeout_s)
        await self.start_broker()

    async def start_serial(self) -> None:
        if self.serial_path is not None and self.modem is None:
            from lifeline.sim_devices.lora_modem_emulator import Rak3172Emulator

            x, y = self.site
            self.modem = Rak3172Emulator(self.fleet.air, "gw-modem", self.serial_path, x_m=x, y_m=y, work_mode=0)
            await self.modem.start()
            hook_receiver(self.fleet, self.modem.radio)

    async def start_udp(self, timeout_s: float = 30.0) -> None:
        if self.udp is None or self.forwarder is not None:
            return
        x, y = self.site
        fwd = PacketForwarderEmulator(self.fleet.air, "concentrator", bytes.fromhex("b827ebfffe5113e0"), self.udp,
                                      x_m=x + 5.0, y_m=y, seed=self.fleet.seed)
        self.forwarder = fwd
        hook_receiver(self.fleet, fwd.radio)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:  # PULL_DATA until the gateway's UDP port answers
            try:
                await fwd.start(keepalive_s=10.0)
                return
            except TimeoutError:
                await fwd.stop()
                if loop.time() > deadline:
                    raise

    async def start_broker(self) -> None:
        if self.broker is not None and self.bridge is None:
            self.bridge = NodeBrokerBridge(*self.broker).start()
            self.fleet.nbiot_delivery = self.bridge.publish

    async def start_ble(self) -> int:
        if self.ble_bridge is None:
            self.ble_bridge = BleBridge(self.fleet)
            await self.ble_bridge.start()
        return self.ble_bridge.port

    async def wait_modem_configured(self, timeout_s: float = 30.0) -> None:
        if self.modem is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.modem.rx_mode != 65534:
            if loop.time() > deadline:
                raise TimeoutError("the gateway did not configure the LoRa modem")
            await asyncio.sleep(0.02)

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.modem is not None:
            out["modem"] = dict(self.modem.counters)
        if self.forwarder is not None:
            out["forwarder"] = dict(self.forwarder.counters)
        if self.bridge is not None:
            out["nbiot_published"] = self.bridge.published
        if self.ble_bridge is not None:
            out["ble_advertised"] = self.ble_bridge.advertised
        return out

    async def stop(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.stop()
        if self.modem is not None:
            await self.modem.stop()
        if self.bridge is not None:
            self.bridge.stop()
        if self.ble_bridge is not None:
            await self.ble_bridge.stop()


__all__ = ["LORA_CHANNEL", "BleBridge", "GatewayLinks", "NodeBrokerBridge", "VirtualReceivers", "hook_receiver"]
