"""The BLE ingress adapter end to end: bumble node peripherals -> bleak (bumble backend) -> adapter -> sink,
and downlinks back through BleakClient to the node's GATT characteristic. Also the config path, including
``backend = "bumble:tcp-client:..."`` against a virtual controller served over real HCI-over-TCP."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from bumble import hci
from bumble.transport.tcp_server import open_tcp_server_transport_with_socket

from lifeline.gateway.clock import ManualClock
from lifeline.gateway.config import IngressSpec
from lifeline.gateway.ingress import ble_adv, registry
from lifeline.gateway.ingress.base import DownlinkRequest, RawFrame, Reception
from lifeline.gateway.ingress.ble import BleAdapter, BleakBackend, BleConfig, create
from lifeline.gateway.ingress.bleak_bumble import BumbleHost
from lifeline.gateway.ingress.registry import AdapterContext, AdapterOptionError
from lifeline.protocols import frame
from lifeline.sim_devices.ble_node import BleAir, BleNodeSim, RadioController

NODE = "C0:11:22:33:44:55"
KEYS = frame.derive_keys(bytes(range(32)), bytes.fromhex("70b3d57ed0000003"))


def uplink(fcnt: int, *, ack: bool = True) -> bytes:
    return frame.encode(KEYS, KEYS.dev_id, fcnt, 5000 + fcnt, 9 if ack else 3, {1: fcnt, 2: 0} if ack else {1: fcnt},
                        frame.FLAG_ACK_REQ if ack else 0)


def ack_for(fcnt: int) -> bytes:
    return frame.encode(KEYS, KEYS.dev_id, 100 + fcnt, 6000, 64, {1: fcnt, 2: fcnt}, frame.FLAG_DOWN)


class CollectSink:
    def __init__(self) -> None:
        self.frames: asyncio.Queue[RawFrame] = asyncio.Queue()
        self.gate = asyncio.Event()
        self.gate.set()

    async def submit(self, raw: RawFrame) -> None:
        await self.gate.wait()
        await self.frames.put(raw)

    async def next(self, timeout: float = 5.0) -> RawFrame:
        return await asyncio.wait_for(self.frames.get(), timeout)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded, real time) for something another task does; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def air() -> BleAir:
    return BleAir()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def host(air: BleAir) -> AsyncIterator[BumbleHost]:
    h = BumbleHost(air.central(position=(0.0, 0.0)))
    yield h
    await h.close()


@pytest.fixture
async def adapter(host: BumbleHost, clock: ManualClock) -> AsyncIterator[BleAdapter]:
    a = BleAdapter("ble0", BleConfig(connect_timeout_s=2.0, gatt_timeout_s=2.0), clock=clock,
                   backend=BleakBackend.bumble(host))
    yield a
    await a.stop()


def request(raw: RawFrame, payload: bytes, clock: ManualClock, *, within_ms: int = 5000,
            device_id: bytes = KEYS.dev_id) -> DownlinkRequest:
    return DownlinkRequest(device_id=device_id, payload=payload, reception=raw.reception,
                           deadline_ms=clock.now_ms() + within_ms)


async def test_advertised_frame_reaches_the_sink_byte_exact_with_rssi(
    air: BleAir, adapter: BleAdapter, clock: ManualClock
) -> None:
    sink = CollectSink()
    await adapter.start(sink)
    async with BleNodeSim(air, NODE, position=(20.0, 0.0), tx_power_dbm=4.0) as node:
        sent = await node.advertise(uplink(1))
        raw = await sink.next()
        assert raw.payload == sent
        # +4 dBm at 20 m: 40.0 + 27 log10(20) = 75.1 dB path loss
        assert raw.reception == Reception(radio="ble", adapter="ble0", rx_ms=clock.now_ms(), rssi=-71,
                                          context=NODE.encode())
        assert frame.decode(raw.payload, KEYS).fields == {1: 1, 2: 0}
        # the node keeps advertising the same frame: duplicates are counted, not delivered
        await eventually(lambda: adapter.counters().get("duplicate", 0) >= 3)
        assert sink.frames.empty()
        second = await node.advertise(uplink(2, ack=False))
        assert (await sink.next()).payload == second
    counters = adapter.counters()
    assert counters["frames"] == 2 and counters["adv.seen"] >= 5
    assert not [k for k in counters if k.startswith("reject.")]


async def test_legacy_node_frames_are_reassembled(air: BleAir, adapter: BleAdapter) -> None:
    sink = CollectSink()
    await adapter.start(sink)
    async with BleNodeSim(air, NODE, (uplink(n) for n in range(10, 13)), legacy=True) as node:
        for _ in range(3):
            sent = await node.advertise()
            assert (await sink.next()).payload == sent
    assert adapter.counters()["frames"] == 3 and adapter.counters()["segment.stored"] >= 6


async def test_ack_downlink_is_written_to_the_node_byte_exact(
    air: BleAir, adapter: BleAdapter, clock: ManualClock
) -> None:
    sink = CollectSink()
    await adapter.start(sink)
    async with BleNodeSim(air, NODE, dev_id=KEYS.dev_id) as node:
        await node.advertise(uplink(7))
        raw = await sink.next()
        header = frame.parse_header(raw.payload)
        assert header.flags & frame.FLAG_ACK_REQ  # what makes the pipeline answer
        ack = ack_for(header.fcnt)
        assert await adapter.send_downlink(request(raw, ack, clock))
        assert await node.next_downlink(5) == ack
        assert frame.decode(node.downlinks[0], KEYS, downlink=True).fields == {1: 7, 2: 7}
        # the adapter disconnects after the write; the node advertises again and a second downlink works
        assert await adapter.send_downlink(request(raw, ack_for(8), clock))
        assert await node.next_downlink(5) == ack_for(8)
        assert node.connections == 2
    assert adapter.counters()["downlinks_sent"] == 2


async def test_downlink_failures_are_counted(air: BleAir, adapter: BleAdapter, clock: ManualClock) -> None:
    sink = CollectSink()
    await adapter.start(sink)
    refuse = {"code": ble_adv.ATT_ERR_REPLAY}
    async with BleNodeSim(air, NODE, dev_id=KEYS.dev_id, verify=lambda _v: refuse["code"]) as node:
        await node.advertise(uplink(3))
        raw = await sink.next()
        ack = ack_for(3)

        assert not await adapter.send_downlink(request(raw, ack, clock))  # the node refuses the frame
        assert not await adapter.send_downlink(request(raw, ack, clock, device_id=bytes(8)))  # another node
        assert not await adapter.send_downlink(request(raw, ack, clock, within_ms=0))
        assert not await adapter.send_downlink(request(raw, ack[:20], clock))
        foreign = DownlinkRequest(KEYS.dev_id, ack, Reception("lora-udp", "lora0", 0), clock.now_ms() + 5000)
        assert not await adapter.send_downlink(foreign)
        nowhere = DownlinkRequest(KEYS.dev_id, ack, Reception("ble", "ble0", 0, context=b"?"), clock.now_ms() + 5000)
        assert not await adapter.send_downlink(nowhere)

        await node.stop_advertising()  # the node's receive window closed: nobody to connect to
        t0 = time.monotonic()
        assert not await adapter.send_downlink(request(raw, ack, clock))
        assert time.monotonic() - t0 < 2.0 + 3.0

        refuse["code"] = 0
        await node.advertise(uplink(4))
        assert await adapter.send_downlink(request(raw, ack, clock))
        assert node.downlinks == [ack]
    c = adapter.counters()
    assert c["downlink_failed.rejected"] == 1 and c["downlink_att_error.0x81"] == 1
    assert c["downlink_failed.wrong_device"] == 1
    assert c["downlink_failed.expired"] == 1
    assert c["downlink_failed.bad_payload"] == 1
    assert c["downlink_failed.wrong_adapter"] == 1
    assert c["downlink_failed.no_address"] == 1
    assert c["downlink_failed.connect_timeout"] == 1
    assert c["downlinks_sent"] == 1


async def test_back_pressure_loses_no_frame(air: BleAir, host: BumbleHost, clock: ManualClock) -> None:
    """With the pipeline stalled and the queue full, a frame is left for the node's next repeat."""
    adapter = BleAdapter("ble0", BleConfig(queue_frames=1), clock=clock, backend=BleakBackend.bumble(host))
    sink = CollectSink()
    sink.gate.clear()
    await adapter.start(sink)
    try:
        addresses = [f"C0:00:00:00:00:{i:02X}" for i in range(1, 5)]
        nodes = [BleNodeSim(air, a, position=(2.0 + i, 0.0)) for i, a in enumerate(addresses)]
        for node in nodes:
            await node.start()
        sent = {await node.advertise(uplink(20 + i, ack=False)) for i, node in enumerate(nodes)}
        await eventually(lambda: adapter.counters().get("overflow", 0) >= 2)
        sink.gate.set()
        got = {(await sink.next()).payload for _ in sent}
        assert got == sent
        for node in nodes:
            await node.close()
    finally:
        await adapter.stop()
    assert adapter.counters()["frames"] >= len(sent)


async def test_a_failing_sink_does_not_stop_the_radio(air: BleAir, adapter: BleAdapter) -> None:
    class FlakySink(CollectSink):
        failures = 1

        async def submit(self, raw: RawFrame) -> None:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("pipeline bug")
            await super().submit(raw)

    sink = FlakySink()
    await adapter.start(sink)
    async with BleNodeSim(air, NODE) as node:
        sent = await node.advertise(uplink(40))
        assert (await sink.next()).payload == sent  # the repeat after the failure got through
    assert adapter.counters()["sink_errors"] == 1 and adapter.counters()["frames"] == 2


async def test_stop_and_restart(air: BleAir, adapter: BleAdapter) -> None:
    sink = CollectSink()
    await adapter.start(sink)
    await adapter.stop()
    async with BleNodeSim(air, NODE) as node:
        await node.advertise(uplink(30))
        await adapter.start(sink)  # a new scan: the same frame is new again
        assert (await sink.next()).payload == uplink(30)
        await adapter.stop()
        await adapter.start(sink)
        assert (await sink.next()).payload == uplink(30)
    assert adapter.counters()["frames"] == 2


async def test_configured_bumble_transport_over_hci_tcp(air: BleAir, clock: ManualClock) -> None:
    """``backend = "bumble:tcp-client:..."``: the adapter opens the transport itself; the controller is a
    virtual one served over a real TCP socket, so every HCI packet crosses it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = await open_tcp_server_transport_with_socket(sock)
    RadioController("gw-hci", host_source=server.source, host_sink=server.sink, link=air)
    config = {"backend": f"bumble:tcp-client:127.0.0.1:{port}", "address": "F0:0A:0B:0C:0D:0E",
              "connect_timeout_s": 2, "dedupe_window_ms": 2000}
    air.place(hci.Address("F0:0A:0B:0C:0D:0E"), (0.0, 0.0))
    adapter = BleAdapter.from_config("ble1", config, clock=clock)
    sink = CollectSink()
    try:
        await adapter.start(sink)
        async with BleNodeSim(air, NODE, dev_id=KEYS.dev_id, position=(1.0, 0.0)) as node:
            await node.advertise(uplink(50))
            raw = await sink.next()
            assert raw.payload == uplink(50) and raw.reception.rssi == -40 and raw.reception.adapter == "ble1"
            assert await adapter.send_downlink(request(raw, ack_for(50), clock))
            assert await node.next_downlink(5) == ack_for(50)
    finally:
        await adapter.stop()
        await server.close()
        sock.close()


def test_config_defaults_and_validation() -> None:
    assert BleConfig.from_config({}) == BleConfig()
    c = BleConfig.from_config({"backend": "bumble:usb:0", "connect_timeout_s": 3, "verify_device": False,
                               "company_id": 0x0A1B})
    assert c.connect_timeout_s == 3.0 and isinstance(c.connect_timeout_s, float) and c.company_id == 0x0A1B
    bad: list[tuple[dict[str, object], str]] = [
        ({"backnd": "bluez"}, "backnd"),
        ({"backend": "winrt"}, "backend"),
        ({"backend": "bumble:"}, "backend"),
        ({"backend": 3}, "backend"),
        ({"adapter": "wlan0"}, "adapter"),
        ({"backend": "bumble:usb:0", "adapter": "hci0"}, "adapter"),
        ({"address": "00:11:22:33:44:55"}, "address"),  # not a static random address
        ({"scanning_mode": "aggressive"}, "scanning_mode"),
        ({"company_id": 0x10000}, "company_id"),
        ({"company_id": True}, "company_id"),
        ({"dedupe_window_ms": 1.5}, "dedupe_window_ms"),
        ({"segment_timeout_ms": 0}, "segment_timeout_ms"),
        ({"connect_timeout_s": "5"}, "connect_timeout_s"),
        ({"gatt_timeout_s": 0}, "gatt_timeout_s"),
        ({"verify_device": 1}, "verify_device"),
        ({"queue_frames": 0}, "queue_frames"),
    ]
    for table, key in bad:
        with pytest.raises(ValueError) as e:
            BleConfig.from_config(table)
        assert str(e.value).startswith(key + ":"), (table, str(e.value))


@pytest.mark.parametrize("factory", [registry.create, create])
def test_registry_factory(tmp_path: Path, factory: Callable[[IngressSpec, AdapterContext], object]) -> None:
    """The gateway builds the adapter from ``[[ingress]] type = "ble"`` (registry: BleAdapter.from_config
    by keyword); ``ble.create`` is the same as a plain factory."""
    clock = ManualClock()
    ctx = AdapterContext(gateway_id="gw-1", state_dir=tmp_path, clock=clock)
    adapter = factory(IngressSpec(type="ble", name="ble0", options={"scanning_mode": "active"}), ctx)
    assert isinstance(adapter, BleAdapter) and adapter.name == "ble0" and adapter.radio == "ble"
    assert adapter.config.scanning_mode == "active" and adapter._clock is clock
    with pytest.raises(AdapterOptionError) as e:
        factory(IngressSpec(type="ble", name="ble0", options={"queue_frames": -1}), ctx)
    assert e.value.option == "queue_frames"


def test_bluez_backend_arguments() -> None:
    """Production runs BlueZ: passive scanning needs an advertisement-monitor pattern on our company id."""
    passive = BleakBackend.bluez(BleConfig(adapter="hci1", company_id=0x0A1B))
    assert passive.scanner is None and passive.client is None  # bleak's platform backend
    (pattern,) = passive.scanner_kwargs["bluez"]["or_patterns"]
    assert (pattern.start_position, int(pattern.ad_data_type), pattern.content_of_pattern) == (0, 0xFF, b"\x1b\x0a")
    assert passive.scanner_kwargs["bluez"]["adapter"] == "hci1"
    assert passive.client_kwargs == {"bluez": {"adapter": "hci1"}}
    active = BleakBackend.bluez(BleConfig(scanning_mode="active"))
    assert active.scanner_kwargs == {"bluez": {}}
