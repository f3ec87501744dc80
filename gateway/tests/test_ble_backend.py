"""bleak's own API (BleakScanner, BleakClient) on the bumble backend, against bumble node peripherals.

Both sides are real bumble host stacks (HCI, GAP, L2CAP, ATT, GATT); only the controllers and the radio
between them are virtual (sim_devices/ble_node.py). Waits are on events with deadlines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import hci
from bumble.device import Advertisement

from lifeline.gateway.ingress import ble_adv
from lifeline.gateway.ingress.bleak_bumble import (
    BumbleClientBackend,
    BumbleHost,
    BumbleScannerBackend,
    advertisement_data,
    use_host,
)
from lifeline.protocols import frame
from lifeline.sim_devices.ble_node import BleAir, BleNodeSim

NODE = "C0:11:22:33:44:55"
KEYS = frame.derive_keys(bytes(range(32)), bytes.fromhex("70b3d57ed0000002"))
UPLINK = frame.encode(KEYS, KEYS.dev_id, 41, 1000, 9, {1: 7, 2: 0}, frame.FLAG_ACK_REQ)
DOWNLINK = frame.encode(KEYS, KEYS.dev_id, 5, 1001, 64, {1: 41, 2: 7}, frame.FLAG_DOWN)


@pytest.fixture
def air() -> BleAir:
    return BleAir()


@pytest.fixture
async def host(air: BleAir) -> AsyncIterator[BumbleHost]:
    h = BumbleHost(air.central(position=(0.0, 0.0)))
    await h.power_on()
    yield h
    await h.close()


class Heard:
    """Detection callback that records advertisements and signals a wanted address."""

    def __init__(self) -> None:
        self.seen: list[tuple[BLEDevice, AdvertisementData]] = []
        self.events: dict[str, asyncio.Event] = {}

    def __call__(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self.seen.append((device, adv))
        self.event(device.address).set()

    def event(self, address: str) -> asyncio.Event:
        return self.events.setdefault(address, asyncio.Event())

    async def wait(self, address: str, timeout: float = 5.0) -> BLEDevice:
        await asyncio.wait_for(self.event(address).wait(), timeout)
        return next(d for d, _ in self.seen if d.address == address)


async def test_scanner_reports_the_frame_byte_exact_with_modelled_rssi(air: BleAir, host: BumbleHost) -> None:
    heard = Heard()
    async with BleNodeSim(air, NODE, position=(10.0, 0.0), tx_power_dbm=0.0) as node:
        await node.advertise(UPLINK)
        scanner = BleakScanner(detection_callback=heard, scanning_mode="passive", backend=BumbleScannerBackend,
                               bumble=host)
        async with scanner:
            device = await heard.wait(NODE)
        _, adv = next((d, a) for d, a in heard.seen if d.address == NODE)
        assert adv.manufacturer_data == {0xFFFF: bytes((ble_adv.header_byte(ble_adv.SEG_WHOLE),)) + UPLINK}
        # 0 dBm at 10 m: 40.0 + 27 log10(10) = 67 dB path loss
        assert adv.rssi == -67
        assert isinstance(device.details, hci.Address) and device.details == hci.Address(NODE)
        assert scanner.discovered_devices_and_advertisement_data[NODE][0] is device
        assert isinstance(adv.platform_data[0], Advertisement)


async def test_default_host_and_out_of_range_nodes(air: BleAir, host: BumbleHost) -> None:
    """``BleakScanner(detection_callback=..., backend=BumbleScannerBackend)`` inside use_host(); a node
    beyond the receiver sensitivity is never reported while a near one is heard again and again."""
    heard = Heard()
    far, near = "C0:00:00:00:0F:A4", "C0:00:00:00:0E:A4"
    async with (BleNodeSim(air, far, position=(400.0, 0.0)) as n_far,
                BleNodeSim(air, near, position=(3.0, 0.0)) as n_near):
        await n_far.advertise(UPLINK)
        await n_near.advertise(DOWNLINK)
        with use_host(host):
            async with BleakScanner(detection_callback=heard, backend=BumbleScannerBackend):
                for _ in range(5):  # five advertising events of the near node
                    heard.event(near).clear()
                    await heard.wait(near)
    assert {d.address for d, _ in heard.seen} == {near}
    with pytest.raises(BleakError):
        BleakScanner(detection_callback=heard, backend=BumbleScannerBackend)  # no host anywhere


async def test_client_gatt_service_reads_and_writes(air: BleAir, host: BumbleHost) -> None:
    heard = Heard()
    got: list[bytes] = []
    async with BleNodeSim(air, NODE, dev_id=KEYS.dev_id, on_downlink=got.append) as node:
        await node.advertise(UPLINK)
        async with BleakScanner(heard, scanning_mode="passive", backend=BumbleScannerBackend, bumble=host):
            device = await heard.wait(NODE)
        async with BleakClient(device, backend=BumbleClientBackend, bumble=host, timeout=5) as client:
            assert client.mtu_size >= 54
            service = client.services.get_service(ble_adv.UUID_SERVICE)
            assert service is not None
            props = {c.uuid: c.properties for c in service.characteristics}
            assert props == {
                ble_adv.UUID_DOWNLINK: ["write"],
                ble_adv.UUID_STATUS: ["read", "notify"],
                ble_adv.UUID_MAINTENANCE: ["write"],
            }
            status = await client.read_gatt_char(ble_adv.UUID_STATUS)
            assert ble_adv.status_device_id(bytes(status)) == KEYS.dev_id
            assert int.from_bytes(status[9:13], "big") == 41  # the node's last uplink counter

            await client.write_gatt_char(ble_adv.UUID_DOWNLINK, DOWNLINK, response=True)
            assert await node.next_downlink(5) == DOWNLINK
            assert got == [DOWNLINK]

            with pytest.raises(BleakGATTProtocolError) as short:
                await client.write_gatt_char(ble_adv.UUID_DOWNLINK, DOWNLINK[:20], response=True)
            assert short.value.code == 0x0D  # Invalid Attribute Value Length
            with pytest.raises(BleakGATTProtocolError) as maint:
                await client.write_gatt_char(ble_adv.UUID_MAINTENANCE, DOWNLINK, response=True)
            assert maint.value.code == ble_adv.ATT_ERR_NOT_IN_MAINTENANCE
            node.maintenance = True
            await client.write_gatt_char(ble_adv.UUID_MAINTENANCE, DOWNLINK, response=True)
            assert node.maintenance_writes == [DOWNLINK]

            notified: asyncio.Queue[bytearray] = asyncio.Queue()
            await client.start_notify(ble_adv.UUID_STATUS, lambda _c, value: notified.put_nowait(value))
            await node.notify_status()
            value = await asyncio.wait_for(notified.get(), 5)
            assert value[-1] & ble_adv.STATUS_FLAG_MAINTENANCE and bytes(value) == node.status
            await client.stop_notify(ble_adv.UUID_STATUS)
        assert not client.is_connected
        assert node.downlinks == [DOWNLINK]


async def test_connect_to_a_silent_node_times_out_and_the_host_recovers(air: BleAir, host: BumbleHost) -> None:
    async with BleNodeSim(air, NODE) as node:
        client = BleakClient(NODE, backend=BumbleClientBackend, bumble=host, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.connect()
        assert time.monotonic() - t0 < 3.0
        assert not client.is_connected
        # the controller was told to cancel: a later attempt connects once the node advertises
        await node.advertise(UPLINK)
        async with BleakClient(NODE, backend=BumbleClientBackend, bumble=host, timeout=5) as again:
            assert again.is_connected
        assert node.connections == 1


async def test_unsolicited_disconnect_calls_back(air: BleAir, host: BumbleHost) -> None:
    gone = asyncio.Event()
    async with BleNodeSim(air, NODE) as node:
        await node.advertise(UPLINK)
        client = BleakClient(NODE, lambda _c: gone.set(), backend=BumbleClientBackend, bumble=host, timeout=5)
        await client.connect()
        for connection in list(node.device.connections.values()):
            await connection.disconnect()
        await asyncio.wait_for(gone.wait(), 5)
        assert not client.is_connected
        with pytest.raises(BleakError):
            await client.read_gatt_char(ble_adv.UUID_STATUS)


async def test_legacy_node_is_heard_as_two_segments(air: BleAir, host: BumbleHost) -> None:
    first, second = ble_adv.encode_adv(UPLINK, legacy=True, seq=0)
    halves: set[bytes] = set()
    both = asyncio.Event()

    def on_adv(device: BLEDevice, adv: AdvertisementData) -> None:
        if device.address == NODE:
            halves.add(adv.manufacturer_data[0xFFFF])
            if len(halves) == 2:
                both.set()

    async with BleNodeSim(air, NODE, legacy=True) as node:
        await node.advertise(UPLINK)
        async with BleakScanner(on_adv, scanning_mode="passive", backend=BumbleScannerBackend, bumble=host):
            await asyncio.wait_for(both.wait(), 5)
    assert halves == {first[4:], second[4:]}


def test_advertisement_data_conversion() -> None:
    """Every AD type bleak exposes, from raw bytes parsed by bumble."""
    raw = (
        b"\x02\x01\x06"
        + b"\x05\x09node"
        + b"\x02\x0a\xf8"  # TX power -8 dBm
        + b"\x05\x03\x0f\x18\x0a\x18"  # 16-bit service UUIDs 180F, 180A
        + b"\x11\x07" + bytes(reversed(bytes.fromhex(ble_adv.UUID_SERVICE.replace("-", ""))))
        + b"\x05\x16\x0f\x18\x55\x66"  # service data for 180F
        + b"\x06\xff\x4c\x00\x02\x15\x01"
        + ble_adv.manufacturer_ad(b"\x10" + UPLINK)
    )
    adv = advertisement_data(Advertisement(address=hci.Address(NODE), rssi=-71, data_bytes=raw))
    assert adv.local_name == "node" and adv.tx_power == -8 and adv.rssi == -71
    assert adv.manufacturer_data == {0x004C: b"\x02\x15\x01", 0xFFFF: b"\x10" + UPLINK}
    assert adv.service_uuids == ["0000180f-0000-1000-8000-00805f9b34fb", "0000180a-0000-1000-8000-00805f9b34fb",
                                 ble_adv.UUID_SERVICE]
    assert adv.service_data == {"0000180f-0000-1000-8000-00805f9b34fb": b"\x55\x66"}
