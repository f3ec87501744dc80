"""End to end over all four radios: one node frame (same device, same counter, same bytes) is heard by the
gateway's RAK3172 modem (emulated on a pty, ``lora-serial``), by a concentrator behind a Semtech UDP packet
forwarder (emulated on loopback UDP, ``lora-udp``), by its BLE controller (a bumble virtual controller owned
by this test and served over real HCI-over-TCP, ``ble``) and through the NB-IoT node broker (a real
Mosquitto, ``nbiot-mqtt``). The real daemon (``lifeline gateway run``, a subprocess) keeps the first copy,
attaches the other three receptions to it, and the reference platform sink on a second real Mosquitto
stores the reading once with all four receptions listed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bumble import hci
from bumble.transport.tcp_server import open_tcp_server_transport_with_socket

from lifeline.gateway.clock import EPOCH_UNIX
from lifeline.gateway.metrics import parse_text
from lifeline.gateway.testing import TestNode, free_udp_port, until
from lifeline.gateway.testing import gateway_cli as cli
from lifeline.gateway.testing_proc import LIFELINE
from lifeline.sim_devices.air import AirChannel, LoraParams, VirtualClock
from lifeline.sim_devices.ble_node import BleAir, BleNodeSim, RadioController
from lifeline.sim_devices.lora_modem_emulator import Rak3172Emulator
from lifeline.sim_devices.packet_forwarder_emulator import PacketForwarderEmulator
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.nbiot_sim import NbiotNodeSim
from lifeline.tools.platform_sink import PlatformSink, SinkTimeout

GW = "gw-four-radios"
CHANNEL = LoraParams(869_525_000, 9, 125)  # the EU868 Lifeline channel both LoRa adapters default to
GW_BLE_ADDRESS = "F0:0A:0B:0C:0D:0E"  # the static random address the gateway's bumble host takes
NODE_BLE_ADDRESS = "C0:11:22:33:44:66"
NODE_BLE_POSITION = (10.0, 0.0)  # gateway at the origin, node at 0 dBm: 40.0 + 27 log10(10) = 67 dB path loss
BLE_RSSI = -67
Metrics = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture
def nodes_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """The NB-IoT operator's broker the node publishes to (the platform broker is ``mosquitto``)."""
    with MosquittoBroker(workdir=tmp_path / "nodes-broker") as b:
        yield b


def write_config(tmp: Path, *, platform: MosquittoBroker, nodes: MosquittoBroker, modem_path: Path, udp_port: int,
                 hci_port: int) -> Path:
    state = tmp / "state"
    state.mkdir()
    config = tmp / "gateway.toml"
    config.write_text("\n".join([
        "[gateway]", f'id = "{GW}"', f'state_dir = "{state}"', f'key_file = "{state / "gateway.key"}"',
        "[metrics]", 'listen = "127.0.0.1"', "port = 0",
        # Widened from the defaults (2000/200): collect_ms is how long the first copy waits unbatched for the
        # others, measured from its own reception. Here the four copies reach the gateway within a few ms of
        # each other, but BLE depends on the advertising interval and the scan, and NB-IoT on two broker
        # hops; 3 s keeps a loaded machine from turning a slow copy into a late "receptions" event record
        # (a failure here). window_ms (duplicate vs replay) must be >= collect_ms.
        "[dedupe]", "window_ms = 10000", "collect_ms = 3000",
        "[uplink]", "keepalive_s = 5", "connect_timeout_s = 2", "publish_timeout_s = 3",
        "[[uplink.endpoints]]", 'name = "platform"', 'host = "127.0.0.1"', f"port = {platform.port}",
        "[[ingress]]", 'type = "lora-serial"', 'name = "lora0"', "[ingress.options]",
        f'port = "{modem_path}"', 'region = "EU868"', "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
        "[[ingress]]", 'type = "lora-udp"', 'name = "udp0"', "[ingress.options]",
        'bind = "127.0.0.1"', f"port = {udp_port}", 'region = "EU868"',
        "[[ingress]]", 'type = "ble"', 'name = "ble0"', "[ingress.options]",
        f'backend = "bumble:tcp-client:127.0.0.1:{hci_port}"', f'address = "{GW_BLE_ADDRESS}"',
        "[[ingress]]", 'type = "nbiot-mqtt"', 'name = "nb0"', "[ingress.options]",
        'host = "127.0.0.1"', f"port = {nodes.port}", f'client_id = "{GW}-nb0"',
        "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
    ]) + "\n")
    return config


def read_metrics(state: Path) -> Metrics:
    """The daemon's Prometheus metrics (its address is in ``state/metrics.addr``); empty before it is up."""
    try:
        addr = (state / "metrics.addr").read_text().strip()
    except FileNotFoundError:
        return {}
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as resp:
        return parse_text(resp.read().decode())


def metric(m: Metrics, name: str, **labels: str) -> float:
    return sum(v for lab, v in m.get(f"lifeline_gateway_{name}", []) if all(lab.get(k) == x for k, x in labels.items()))


def stored_json(db: Path, device: bytes) -> list[dict[str, Any]]:
    """Every record of ``device`` in the sink's database, as the sink rendered it (read-only open)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT record_json FROM records WHERE device=? ORDER BY id", (device,)).fetchall()
    finally:
        conn.close()
    return [json.loads(r[0]) for r in rows]


async def reap(proc: subprocess.Popen[bytes]) -> None:
    """The daemon must not outlive the test: SIGTERM, then SIGKILL if it hangs. Waits off the event loop,
    which keeps serving the HCI socket the daemon's BLE adapter closes on its way out."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)


@contextlib.contextmanager
def explained(log: Path) -> Iterator[None]:
    """A sink wait that times out shows what the gateway logged (its output goes to a file)."""
    try:
        yield
    except SinkTimeout as e:
        raise AssertionError(f"{e}\n--- gateway log tail ---\n{log.read_text(errors='replace')[-3000:]}") from None


async def test_one_reading_over_four_radios_arrives_once_with_all_receptions(
    tmp_path: Path, mosquitto: MosquittoBroker, nodes_broker: MosquittoBroker
) -> None:
    node = TestNode(bytes.fromhex("70ad000000000004"), kind="smoke")
    async with contextlib.AsyncExitStack() as stack:
        await run_four_radios(tmp_path, mosquitto, nodes_broker, node, stack)
    assert not (tmp_path / "ttyLORA0").exists()  # the modem emulator removed its pty link


async def run_four_radios(tmp_path: Path, mosquitto: MosquittoBroker, nodes_broker: MosquittoBroker, node: TestNode,
                          stack: contextlib.AsyncExitStack) -> None:
    """The scenario; every resource it starts is registered on ``stack``, which closes them in reverse."""
    # LoRa: one virtual air, the gateway's modem and a concentrator hear the node's transmission
    clock = VirtualClock()
    air = AirChannel(clock, seed=44)
    modem = Rak3172Emulator(air, "gw-modem", tmp_path / "ttyLORA0", work_mode=0)
    await modem.start()
    stack.push_async_callback(modem.stop)
    udp_port = free_udp_port()
    fwd = PacketForwarderEmulator(air, "concentrator", bytes.fromhex("b827ebfffe00e2e4"), ("127.0.0.1", udp_port),
                                  x_m=20.0)
    stack.push_async_callback(fwd.stop)
    lora_node = air.add_radio("node", 50.0, 30.0)

    # BLE: the gateway's controller lives here, on the test's air; the daemon's host reaches it over TCP
    ble_air = BleAir()
    hci_sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    hci_sock.bind(("127.0.0.1", 0))
    hci_port = int(hci_sock.getsockname()[1])
    hci_server = await open_tcp_server_transport_with_socket(hci_sock)
    stack.push_async_callback(hci_server.close)
    gw_controller = RadioController("gw-hci", host_source=hci_server.source, host_sink=hci_server.sink, link=ble_air)
    ble_air.place(hci.Address(GW_BLE_ADDRESS), (0.0, 0.0))
    ble_node = BleNodeSim(ble_air, NODE_BLE_ADDRESS, dev_id=node.device_id, position=NODE_BLE_POSITION)
    await ble_node.start()
    stack.push_async_callback(ble_node.close)

    # NB-IoT: the node's modem publishes to the node broker
    nb_node = NbiotNodeSim(nodes_broker.host, nodes_broker.port, node.device_id, node.root_key)
    stack.push_async_callback(asyncio.to_thread, nb_node.disconnect)  # joins paho's network thread if started

    config = write_config(tmp_path, platform=mosquitto, nodes=nodes_broker, modem_path=modem.path, udp_port=udp_port,
                          hci_port=hci_port)
    state = tmp_path / "state"
    public = cli("keygen", "--out", str(state / "gateway.key")).strip()
    devices = tmp_path / "devices.jsonl"
    devices.write_text(json.dumps(node.record()) + "\n")
    cli("devices", "import", str(devices), "--config", str(config))

    log = tmp_path / "gateway.log"
    platform_db = tmp_path / "platform.db"
    sink = PlatformSink(mosquitto.host, mosquitto.port, db=platform_db, trust={GW: bytes.fromhex(public)}).start()
    stack.callback(sink.stop)
    with open(log, "ab") as out:
        proc = subprocess.Popen([LIFELINE, "gateway", "run", "--config", str(config)], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    stack.push_async_callback(reap, proc)  # runs first: the daemon lets go of the pty, the HCI socket and the brokers

    async def gateway_metrics() -> Metrics:
        return await asyncio.to_thread(read_metrics, state)

    with explained(log):
        await sink.wait_for_async(lambda s: s.presence.get(GW) == "online", 30, "gateway online")
        # The forwarder marks "uplink back" up to 0.2 s after the connection; a reading committed before
        # that mark would be sent on the backlog lane without waiting for its other receptions.
        await until(lambda: b"uplink back" in log.read_bytes(), 30, "the forwarder to see the uplink")
        await until(lambda: modem.rx_mode == 65534, 30, "the gateway configured the modem")
        await until(lambda: bool(gw_controller.le_scan_enable), 30, "the gateway's BLE adapter scanning")
        deadline = time.monotonic() + 30
        # the nbiot adapter counts a connect once it has subscribed to nodes/+/up
        while metric(await gateway_metrics(), "adapter_counter", adapter="nb0", counter="connects") < 1:
            assert time.monotonic() < deadline, "the NB-IoT adapter did not subscribe"
            await asyncio.sleep(0.05)
        for _ in range(100):  # the forwarder's PULL_DATA until the gateway's UDP port answers
            try:
                await fwd.start()
                break
            except TimeoutError:
                await fwd.stop()
        else:
            raise AssertionError("no PULL_ACK from the gateway")
        await asyncio.to_thread(nb_node.connect)

        # One periodic (non-alarm) smoke report, fcnt 1, node clock set: the same bytes on every radio.
        data = node.smoke(time=int(time.time()) - EPOCH_UNIX)
        assert await ble_node.advertise(data) == data  # repeated every 20 ms until stopped
        await asyncio.to_thread(nb_node.publish_raw, data)  # returns after the node broker's PUBACK
        tx = lora_node.transmit(data, CHANNEL)
        clock.advance(tx.toa_ms)  # the modem prints +EVT:RXP2P, the forwarder sends PUSH_DATA
        assert {d.receiver for d in air.deliveries if d.ok} == {"gw-modem", "concentrator"}

        await sink.wait_for_async(lambda s: (node.device_id, 1) in s.record_keys(), 30, "the reading")
        await ble_node.stop_advertising()
        await until(lambda: fwd.counters["push_ack"] == 1, 10, "PUSH_ACK")

        (rec,) = stored_json(platform_db, node.device_id)
        assert (rec["type"], rec["fcnt"], rec["kind"], rec["flags"]) == ("reading", 1, "smoke", []), rec
        receptions = {r["radio"]: r for r in rec["receptions"]}
        assert len(rec["receptions"]) == 4, rec["receptions"]
        assert {radio: r["adapter"] for radio, r in receptions.items()} == {
            "lora-serial": "lora0", "lora-udp": "udp0", "ble": "ble0", "nbiot": "nb0"}
        for radio in ("lora-serial", "lora-udp"):
            assert -130 < receptions[radio]["rssi_dbm"] < -60, receptions[radio]
            assert receptions[radio]["snr_db"] is not None
        assert receptions["ble"]["rssi_dbm"] == BLE_RSSI  # the BLE air's path loss, through HCI over TCP
        assert receptions["nbiot"]["rssi_dbm"] is None  # the node broker carries no radio measurement
        first = min(r["rx_ms"] for r in rec["receptions"])
        assert rec["rx_ms"] == first
        assert max(r["rx_ms"] for r in rec["receptions"]) - first < 3000  # all inside collect_ms

        # The gateway's view: each radio handed the frame over once, one reading accepted, three
        # duplicates attached before signing, nothing late, nothing rejected.
        m = await gateway_metrics()
        for radio, adapter in (("lora-serial", "lora0"), ("lora-udp", "udp0"), ("ble", "ble0"), ("nbiot", "nb0")):
            assert metric(m, "frames_in_total", radio=radio, adapter=adapter) == 1, radio
        assert metric(m, "readings_accepted_total") == 1
        assert metric(m, "duplicate_receptions_total") == 3
        assert metric(m, "late_receptions_total") == 0
        assert metric(m, "rejects_total") == 0
        assert metric(m, "adapter_counter", adapter="ble0", counter="duplicate") >= 1  # repeats held back
        nb_outcomes = [metric(m, "adapter_counter", adapter="nb0", counter=f"outcome.{o}")
                       for o in ("accepted", "duplicate")]
        assert sum(nb_outcomes) == 1  # PUBACKed to the node broker after its outcome was durable

        # Clean stop: the gateway publishes "offline" after its last batch, so once the sink has seen it
        # nothing more can arrive, and the sink still holds exactly one record of the device, stored once.
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text(errors="replace")[-3000:]
        await sink.wait_for_async(lambda s: s.presence.get(GW) == "offline", 10, "offline presence after SIGTERM")
        assert [(r["type"], r["fcnt"]) for r in stored_json(platform_db, node.device_id)] == [("reading", 1)]
        assert sink.counters["records_duplicate"] == 0 and sink.counters["rejected"] == 0
