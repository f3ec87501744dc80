"""A bleak backend on the bumble Bluetooth host stack: bleak's API over any HCI controller bumble can open.

bleak's own backends talk to an operating-system stack (BlueZ over D-Bus on the Pi). This one drives a
bumble :class:`~bumble.device.Device` instead, so the same adapter code runs against a USB dongle or
serial HCI controller without BlueZ (``backend = "bumble:usb:0"``), and against bumble's virtual
controllers in tests: real advertising reports, ATT and GATT built and parsed by bumble, only the
radio is simulated.

    host = await BumbleHost.open("usb:0")            # or BumbleHost(device) for a Device you built
    scanner = BleakScanner(on_adv, scanning_mode="passive", backend=BumbleScannerBackend, bumble=host)
    client = BleakClient(ble_device, backend=BumbleClientBackend, bumble=host)

``bumble=`` may be left out inside ``with use_host(host):``. One :class:`BumbleHost` serves any number of
scanners and clients; it scans while at least one scanner runs and makes one LE connection attempt at a
time (controllers queue at most one LE Create Connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CHARACTERISTIC_PROPERTIES, CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bleak.uuids import normalize_uuid_str
from bumble import att, core, hci
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import AttributeProxy, CharacteristicProxy
from bumble.transport import open_transport
from bumble.transport.common import Transport

DEFAULT_ADDRESS = "F0:F1:F2:F3:F4:F5"  # static random address of the gateway's bumble host
CANCEL_GRACE_S = 2.0  # how long a controller may take to confirm LE Create Connection Cancel
REQUEST_MTU = 247  # a Lifeline frame (51 bytes) fits one ATT write at any MTU >= 54

AdvertisementListener = Callable[[Advertisement], None]

_default_host: ContextVar[BumbleHost | None] = ContextVar("lifeline_bumble_host", default=None)


@contextlib.contextmanager
def use_host(host: BumbleHost) -> Iterator[BumbleHost]:
    """Make ``host`` the one the backends use when they get no ``bumble=`` argument."""
    token = _default_host.set(host)
    try:
        yield host
    finally:
        _default_host.reset(token)


def _resolve(host: object) -> BumbleHost:
    if host is None:
        host = _default_host.get()
    if not isinstance(host, BumbleHost):
        raise BleakError("bumble backend: pass bumble=<BumbleHost> or run inside use_host(host)")
    return host


class BumbleHost:
    """One bumble Device shared by the scanner and client backends."""

    def __init__(self, device: Device, *, transport: Transport | None = None) -> None:
        self.device = device
        self._transport = transport
        self._power_lock = asyncio.Lock()
        self._scan_lock = asyncio.Lock()
        self.connect_lock = asyncio.Lock()
        self._listeners: dict[AdvertisementListener, bool] = {}  # listener -> wants active scanning
        self._scanning_active: bool | None = None  # None: not scanning
        device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)

    @classmethod
    async def open(cls, spec: str, *, address: str = DEFAULT_ADDRESS, name: str = "lifeline-gateway") -> BumbleHost:
        """Open a bumble transport (``usb:0``, ``serial:/dev/ttyACM0,1000000``, ``tcp-client:host:port``,
        ``hci-socket:0``, ...) and power the host on."""
        transport = await open_transport(spec)
        try:
            device = Device.with_hci(name, hci.Address(address), transport.source, transport.sink)
            host = cls(device, transport=transport)
            await host.power_on()
        except BaseException:
            await transport.close()
            raise
        return host

    async def power_on(self) -> None:
        async with self._power_lock:
            if not self.device.powered_on:
                await self.device.power_on()

    async def close(self) -> None:
        """Stop scanning and close the transport if this host opened it."""
        with contextlib.suppress(Exception):
            if self._scanning_active is not None:
                await self.device.stop_scanning()
        self._scanning_active = None
        self._listeners.clear()
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.close()

    async def add_scanner(self, listener: AdvertisementListener, *, active: bool) -> None:
        async with self._scan_lock:
            await self.power_on()
            self._listeners[listener] = active
            await self._update_scan()

    async def remove_scanner(self, listener: AdvertisementListener) -> None:
        async with self._scan_lock:
            self._listeners.pop(listener, None)
            await self._update_scan()

    async def _update_scan(self) -> None:
        want: bool | None = any(self._listeners.values()) if self._listeners else None
        if want == self._scanning_active:
            return
        if self._scanning_active is not None:
            await self.device.stop_scanning()
            self._scanning_active = None
        if want is not None:
            await self.device.start_scanning(active=want, filter_duplicates=False)
            self._scanning_active = want

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        for listener in list(self._listeners):
            listener(advertisement)


def _uuid_str(uuid: core.UUID) -> str:
    return normalize_uuid_str(uuid.to_hex_str("-"))


def advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    """bleak's view of one advertisement bumble parsed (manufacturer data keyed by company id, as BlueZ
    reports it; the bumble :class:`Advertisement` rides along in ``platform_data``)."""
    data = advertisement.data
    manufacturer: dict[int, bytes] = {}
    for raw in data.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA, raw=True):
        if len(raw) >= 2:
            manufacturer[raw[0] | raw[1] << 8] = bytes(raw[2:])
    service_data: dict[str, bytes] = {}
    for ad_type, size in (
        (AdvertisingData.SERVICE_DATA_16_BIT_UUID, 2),
        (AdvertisingData.SERVICE_DATA_32_BIT_UUID, 4),
        (AdvertisingData.SERVICE_DATA_128_BIT_UUID, 16),
    ):
        for raw in data.get_all(ad_type, raw=True):
            if len(raw) >= size:
                service_data[_uuid_str(core.UUID.from_bytes(raw[:size]))] = bytes(raw[size:])
    service_uuids: list[str] = []
    for ad_type, size in (
        (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, 2),
        (AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, 2),
        (AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS, 4),
        (AdvertisingData.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS, 4),
        (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, 16),
        (AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, 16),
    ):
        for raw in data.get_all(ad_type, raw=True):
            service_uuids.extend(
                _uuid_str(core.UUID.from_bytes(raw[i : i + size])) for i in range(0, len(raw) - size + 1, size)
            )
    name: str | None = None
    for ad_type in (AdvertisingData.COMPLETE_LOCAL_NAME, AdvertisingData.SHORTENED_LOCAL_NAME):
        names = data.get_all(ad_type, raw=True)
        if names:
            name = bytes(names[0]).decode("utf-8", "replace")
            break
    tx_levels = data.get_all(AdvertisingData.TX_POWER_LEVEL, raw=True)
    tx_power = int.from_bytes(tx_levels[0][:1], "big", signed=True) if tx_levels and tx_levels[0] else None
    return AdvertisementData(
        local_name=name,
        manufacturer_data=manufacturer,
        service_data=service_data,
        service_uuids=service_uuids,
        tx_power=tx_power,
        rssi=advertisement.rssi,
        platform_data=(advertisement,),
    )


class BumbleScannerBackend(BaseBleakScanner):
    """``BleakScanner(..., backend=BumbleScannerBackend, bumble=host)``."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        *,
        bumble: BumbleHost | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        if scanning_mode not in ("active", "passive"):
            raise BleakError(f"scanning_mode must be 'active' or 'passive', not {scanning_mode!r}")
        self._host = _resolve(bumble)
        self._active = scanning_mode == "active"

    async def start(self) -> None:
        self.seen_devices = {}
        await self._host.add_scanner(self._on_advertisement, active=self._active)

    async def stop(self) -> None:
        await self._host.remove_scanner(self._on_advertisement)

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        adv = advertisement_data(advertisement)
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = advertisement.address
        device = self.create_or_update_device(
            address.to_string(True), address.to_string(False), adv.local_name, address, adv
        )
        self.call_detection_callbacks(device, adv)


def _peer_address(target: BLEDevice | str) -> hci.Address:
    """A bumble address from a scanned device (its ``details``) or from ``"AA:BB:..:FF"`` (random) /
    ``"AA:BB:..:FF/P"`` (public)."""
    if isinstance(target, BLEDevice):
        if isinstance(target.details, hci.Address):
            return target.details
        target = target.address
    text = target.strip()
    public = text.upper().endswith("/P")
    try:
        return hci.Address(
            text[:-2] if public else text,
            hci.Address.PUBLIC_DEVICE_ADDRESS if public else hci.Address.RANDOM_DEVICE_ADDRESS,
        )
    except (ValueError, core.InvalidArgumentError) as e:
        raise BleakError(f"not a Bluetooth address: {target!r}") from e


def _protocol_error(error: att.ATT_Error) -> BleakGATTProtocolError:
    return BleakGATTProtocolError(int(error.error_code))


class BumbleClientBackend(BaseBleakClient):
    """``BleakClient(ble_device_or_address, backend=BumbleClientBackend, bumble=host)``."""

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        services: set[str] | None = None,
        bumble: BumbleHost | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout)
        self._host = _resolve(bumble)
        self._target = _peer_address(address_or_ble_device)
        self._service_filter = services
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._disconnecting = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    @property
    def name(self) -> str:
        return self._target.to_string(False)

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else att.ATT_DEFAULT_MTU

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        """Connect, exchange the ATT MTU and discover services, characteristics and descriptors.
        Raises :class:`TimeoutError` when the peer is not reached within the client's timeout."""
        if self._connection is not None:
            return
        await self._host.power_on()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline + CANCEL_GRACE_S), self._host.connect_lock:
                # bumble's own timeout sends LE Create Connection Cancel, so the controller does not
                # complete the connection later behind our back; the outer guard covers a controller
                # that never confirms the cancel.
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                connection = await self._host.device.connect(self._target, timeout=remaining)
        except (TimeoutError, core.TimeoutError):
            raise TimeoutError(f"no connection to {self.name} within {self._timeout} s") from None
        except core.BaseBumbleError as e:
            raise BleakError(f"connecting to {self.name}: {e}") from e
        self._connection = connection
        self._disconnecting = False
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            async with asyncio.timeout_at(deadline):
                peer = Peer(connection)
                self._peer = peer
                await peer.request_mtu(REQUEST_MTU)
                if pair:
                    await connection.pair()
                await self._discover(peer)
        except BaseException as e:
            await self._drop()
            if isinstance(e, TimeoutError):
                raise TimeoutError(f"GATT discovery on {self.name} took over {self._timeout} s") from None
            if isinstance(e, att.ATT_Error):
                raise _protocol_error(e) from e
            if isinstance(e, core.BaseBumbleError):
                raise BleakError(f"setting up {self.name}: {e}") from e
            raise

    async def _discover(self, peer: Peer) -> None:
        uuids = [core.UUID(u) for u in self._service_filter] if self._service_filter else []
        collection = BleakGATTServiceCollection()
        for service in await peer.discover_services(uuids):
            bleak_service = BleakGATTService(service, service.handle, _uuid_str(service.uuid))
            collection.add_service(bleak_service)
            for characteristic in await peer.discover_characteristics(service=service):
                bleak_char = BleakGATTCharacteristic(
                    characteristic,
                    characteristic.handle,
                    _uuid_str(characteristic.uuid),
                    _properties(characteristic),
                    self._max_write_without_response,
                    bleak_service,
                )
                collection.add_characteristic(bleak_char)
                for descriptor in await peer.discover_descriptors(characteristic):
                    collection.add_descriptor(
                        BleakGATTDescriptor(descriptor, descriptor.handle, _uuid_str(descriptor.type), bleak_char)
                    )
        self.services = collection

    def _max_write_without_response(self) -> int:
        return self.mtu_size - 3

    def _on_disconnection(self, reason: int) -> None:
        solicited = self._disconnecting
        self._connection = None
        self._peer = None
        self._subscribers.clear()
        if not solicited and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def _drop(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._disconnecting = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.disconnect(), self._timeout)
        self._connection = None
        self._peer = None

    async def disconnect(self) -> None:
        await self._drop()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        connection = self._require()
        try:
            await connection.pair()
        except core.BaseBumbleError as e:
            raise BleakError(f"pairing with {self.name}: {e}") from e

    async def unpair(self) -> None:
        raise BleakError("unpair is not supported by the bumble backend (Lifeline does not bond)")

    def _require(self) -> Connection:
        if self._connection is None:
            raise BleakError(f"not connected to {self.name}")
        return self._connection

    def _peer_or_fail(self) -> Peer:
        self._require()
        assert self._peer is not None
        return self._peer

    async def _read(self, attribute: AttributeProxy[Any]) -> bytearray:
        peer = self._peer_or_fail()
        try:
            value = await peer.read_value(attribute)
        except att.ATT_Error as e:
            raise _protocol_error(e) from e
        except core.BaseBumbleError as e:
            raise BleakError(f"read from {self.name}: {e}") from e
        return bytearray(value)

    async def _write(self, attribute: AttributeProxy[Any], data: SizedBuffer, response: bool) -> None:
        peer = self._peer_or_fail()
        try:
            await peer.write_value(attribute, bytes(data), with_response=response)
        except att.ATT_Error as e:
            raise _protocol_error(e) from e
        except core.BaseBumbleError as e:
            raise BleakError(f"write to {self.name}: {e}") from e

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(characteristic.obj)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(descriptor.obj)

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool) -> None:
        await self._write(characteristic.obj, data, response)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        await self._write(descriptor.obj, data, True)

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        peer = self._peer_or_fail()

        def subscriber(value: bytes) -> None:
            callback(bytearray(value))

        try:
            await peer.subscribe(characteristic.obj, subscriber, prefer_notify=True)
        except att.ATT_Error as e:
            raise _protocol_error(e) from e
        self._subscribers[characteristic.handle] = subscriber

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._peer_or_fail()
        subscriber = self._subscribers.pop(characteristic.handle, None)
        try:
            await peer.unsubscribe(characteristic.obj, subscriber)
        except att.ATT_Error as e:
            raise _protocol_error(e) from e


def _properties(characteristic: CharacteristicProxy[Any]) -> list[CharacteristicPropertyName]:
    flags = int(characteristic.properties)
    return [name for bit, name in CHARACTERISTIC_PROPERTIES.items() if flags & bit]


__all__ = [
    "BumbleClientBackend",
    "BumbleHost",
    "BumbleScannerBackend",
    "advertisement_data",
    "use_host",
]
