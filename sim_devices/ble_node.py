"""BLE nodes as bumble peripherals on a virtual air: real host stacks, virtual controllers and radio.

Every device here is a real bumble :class:`~bumble.device.Device` (host, GAP, L2CAP, ATT, GATT) over a
bumble virtual :class:`~bumble.controller.Controller`; the controllers exchange link-layer PDUs over a
:class:`~bumble.link.LocalLink`. Only the radio is modelled (docs/ble.md section 6):

* :class:`BleAir` is a LocalLink with positions and a path-loss model. A receiving
  :class:`RadioController` hears an advertising PDU only when its RSSI is at or above the receiver
  sensitivity, reports that RSSI (bumble's controller reports a fixed -50 dBm), and, as a passive
  scanner, reports no scan responses. Path loss is log-distance, PL(d) = PL(1 m) + 10 n log10(d), with
  PL(1 m) = 40.0 dB (free space at 2.44 GHz) and n = 2.7 (urban/indoor fit); -97 dBm is the ESP32's
  LE 1M sensitivity (ESP32 datasheet, "Bluetooth LE RF receiver"). No fading: the same placement
  gives the same RSSI.
* A :class:`RadioController` also answers LE Create Connection Cancel the way the specification asks
  (Core Vol 4 Part E 7.8.13: an LE Connection Complete event with status Unknown Connection
  Identifier), which bumble's controller leaves out, so a connection attempt to a silent node ends.

:class:`BleNodeSim` is one Lifeline node: it advertises frames (BLE 5 extended advertising, or two
legacy segments sent alternately, like a BLE 4.2 ESP32 on stock MicroPython) and serves the Lifeline
GATT service, recording every downlink the gateway writes::

    air = BleAir()
    async with BleNodeSim(air, "C0:11:22:33:44:55", frames) as node:
        await node.advertise(frame_bytes)
        downlink = await node.next_downlink(timeout=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bumble import att, gatt, hci
from bumble.controller import Controller
from bumble.device import AdvertisingEventProperties, AdvertisingParameters, AdvertisingSet, AdvertisingType, Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from lifeline.gateway.ingress import ble_adv
from lifeline.protocols import frame

PL_1M_DB = 40.0  # free-space path loss at 1 m, 2.44 GHz: 20 log10(4 pi / lambda)
PATH_LOSS_EXPONENT = 2.7
SENSITIVITY_DBM = -97.0  # ESP32 LE 1M receiver sensitivity
DEFAULT_TX_POWER_DBM = 0.0
DEFAULT_INTERVAL_MS = 20.0  # the shortest legal advertising interval; keeps simulated tests quick

Position = tuple[float, float]


class BleAir(LocalLink):
    """A bumble LocalLink that knows where every radio is and how loud it transmits."""

    def __init__(
        self,
        *,
        path_loss_exponent: float = PATH_LOSS_EXPONENT,
        pl_1m_db: float = PL_1M_DB,
        sensitivity_dbm: float = SENSITIVITY_DBM,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path_loss_exponent = path_loss_exponent
        self.pl_1m_db = pl_1m_db
        self.sensitivity_dbm = sensitivity_dbm
        self._radios: dict[bytes, tuple[Position, float]] = {}  # address bytes -> (position, tx dBm)

    def place(self, address: hci.Address, position: Position, tx_power_dbm: float = DEFAULT_TX_POWER_DBM) -> None:
        self._radios[bytes(address.address_bytes)] = (position, tx_power_dbm)

    def rssi_dbm(self, sender: hci.Address, receiver: hci.Address) -> int | None:
        """RSSI of ``sender`` at ``receiver``; None when below sensitivity. Unplaced radios are 1 m apart."""
        s_pos, tx = self._radios.get(bytes(sender.address_bytes), ((0.0, 0.0), DEFAULT_TX_POWER_DBM))
        r_pos, _ = self._radios.get(bytes(receiver.address_bytes), ((1.0, 0.0), DEFAULT_TX_POWER_DBM))
        distance = max(0.1, math.dist(s_pos, r_pos))
        rssi = tx - (self.pl_1m_db + 10.0 * self.path_loss_exponent * math.log10(distance))
        return None if rssi < self.sensitivity_dbm else round(rssi)

    def central(
        self, address: str = "F0:F1:F2:F3:F4:F5", *, position: Position = (0.0, 0.0), name: str = "gateway"
    ) -> Device:
        """A bumble Device (gateway side) on a :class:`RadioController` at ``position``; not powered on."""
        controller = RadioController(name, link=self, public_address=_public_twin(address))
        device = Device(name=name, address=hci.Address(address), host=Host(controller, AsyncPipeSink(controller)))
        self.place(hci.Address(address), position)
        return device


def _public_twin(address: str) -> str:
    """A public address for a controller whose host uses ``address`` as its static random address."""
    return "0" + address[1:] if address[0] != "0" else "1" + address[1:]


class RadioController(Controller):
    """A bumble virtual controller that hears through :class:`BleAir`'s radio model."""

    _rx_rssi: int | None = None
    _passive = False

    def on_advertising_pdu(self, pdu: Any) -> None:
        link = self.link
        if isinstance(link, BleAir):
            rssi = link.rssi_dbm(pdu.advertiser_address, self.random_address)
            if rssi is None:
                return  # below sensitivity: neither reported nor connectable
            self._rx_rssi = rssi
        try:
            super().on_advertising_pdu(pdu)
        finally:
            self._rx_rssi = None

    def on_hci_le_set_extended_scan_parameters_command(self, command: Any) -> Any:
        self._passive = all(t == hci.HCI_LE_Set_Extended_Scan_Parameters_Command.PASSIVE_SCANNING
                            for t in command.scan_types)
        return super().on_hci_le_set_extended_scan_parameters_command(command)

    def on_hci_le_set_scan_parameters_command(self, command: Any) -> Any:
        self._passive = command.le_scan_type == hci.HCI_LE_Set_Scan_Parameters_Command.PASSIVE_SCANNING
        return super().on_hci_le_set_scan_parameters_command(command)

    def on_hci_le_create_connection_cancel_command(self, command: Any) -> Any:
        pending = self.pending_le_connection
        result = super().on_hci_le_create_connection_cancel_command(command)
        if pending is not None:
            self.pending_le_connection = None
            peer = pending.peer_address
            self.send_hci_packet(
                hci.HCI_LE_Connection_Complete_Event(
                    status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
                    connection_handle=0,
                    role=hci.Role.CENTRAL,
                    peer_address_type=peer.address_type,
                    peer_address=peer,
                    connection_interval=0,
                    peripheral_latency=0,
                    supervision_timeout=0,
                    central_clock_accuracy=0,
                )
            )
        return result

    def send_hci_packet(self, packet: Any) -> None:
        if isinstance(packet, hci.HCI_LE_Extended_Advertising_Report_Event):
            scan_rsp = hci.HCI_LE_Extended_Advertising_Report_Event.EventType.SCAN_RESPONSE
            ext_reports = [
                dataclasses.replace(r, rssi=r.rssi if self._rx_rssi is None else self._rx_rssi)
                for r in packet.reports
                if not (self._passive and r.event_type & scan_rsp)
            ]
            if not ext_reports:
                return
            packet = hci.HCI_LE_Extended_Advertising_Report_Event(ext_reports)
        elif isinstance(packet, hci.HCI_LE_Advertising_Report_Event):
            scan_rsp_type = hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP
            reports = [
                dataclasses.replace(r, rssi=r.rssi if self._rx_rssi is None else self._rx_rssi)
                for r in packet.reports
                if not (self._passive and r.event_type == scan_rsp_type)
            ]
            if not reports:
                return
            packet = hci.HCI_LE_Advertising_Report_Event(reports)
        super().send_hci_packet(packet)


class LegacyController(RadioController):
    """A BLE 4.2 controller: no LE Extended Advertising (the original ESP32)."""

    le_features = Controller.le_features & ~(
        hci.LeFeatureMask.LE_EXTENDED_ADVERTISING | hci.LeFeatureMask.LE_PERIODIC_ADVERTISING
    )


class BleNodeSim:
    """One Lifeline node as a bumble peripheral: advertises frames, serves the Lifeline GATT service.

    ``frames_source`` feeds :meth:`advertise` when it is called without a frame. Downlinks written to the
    downlink characteristic land in :attr:`downlinks` (and ``on_downlink``, and :meth:`next_downlink`);
    ``verify`` may refuse one (return an ATT application error code from :mod:`ble_adv`, or 0 to accept).
    """

    def __init__(
        self,
        link: LocalLink,
        address: str,
        frames_source: Iterable[bytes] | None = None,
        *,
        legacy: bool = False,
        interval_ms: float = DEFAULT_INTERVAL_MS,
        position: Position = (5.0, 0.0),
        tx_power_dbm: float = DEFAULT_TX_POWER_DBM,
        company_id: int = ble_adv.COMPANY_ID_TEST,
        dev_id: bytes = bytes(8),
        on_downlink: Callable[[bytes], None] | None = None,
        verify: Callable[[bytes], int] | None = None,
        name: str | None = None,
    ) -> None:
        self.link = link
        self.address = hci.Address(address)
        self.legacy = legacy
        self.interval_ms = interval_ms
        self.position = position
        self.tx_power_dbm = tx_power_dbm
        self.company_id = company_id
        self.dev_id = dev_id
        self.on_downlink = on_downlink
        self.verify = verify
        self.name = name or f"node-{address}"
        self.downlinks: list[bytes] = []
        self.maintenance_writes: list[bytes] = []
        self.connections = 0
        self.maintenance = False
        self.uplink_fcnt = 0
        self.downlink_fcnt = 0
        self.battery_mv = 3600
        self._frames: Iterator[bytes] | None = iter(frames_source) if frames_source is not None else None
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._device: Device | None = None
        self._adv_set: AdvertisingSet | None = None
        self._alternator: tuple[asyncio.Task[None], asyncio.Event] | None = None
        self._adv_lock = asyncio.Lock()
        self._current: tuple[bytes, ...] | None = None  # AD payloads being advertised
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self.advertised: list[bytes] = []

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> BleNodeSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        controller_cls = LegacyController if self.legacy else RadioController
        controller = controller_cls(self.name, link=self.link, public_address=_public_twin(str(self.address)))
        self._controller = controller
        device = Device(name=self.name, address=self.address, host=Host(controller, AsyncPipeSink(controller)))
        device.add_service(self._service())
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        if isinstance(self.link, BleAir):
            self.link.place(self.address, self.position, self.tx_power_dbm)
        await device.power_on()
        self._device = device

    async def close(self) -> None:
        await self.stop_advertising()
        for task in list(self._tasks):
            await task
        device, self._device = self._device, None
        if device is not None:
            for connection in list(device.connections.values()):
                with contextlib.suppress(Exception):
                    await connection.disconnect()
            with contextlib.suppress(Exception):
                self.link.remove_controller(self._controller)

    @property
    def device(self) -> Device:
        if self._device is None:
            raise RuntimeError("node not started")
        return self._device

    # --- advertising -------------------------------------------------------------------------------

    async def advertise(self, frame_bytes: bytes | None = None) -> bytes:
        """Advertise ``frame_bytes`` (or the next frame from ``frames_source``) until the next call or
        :meth:`stop_advertising`, connectable, every ``interval_ms``; advertising resumes after a
        connection ends. Returns the frame."""
        if frame_bytes is None:
            if self._frames is None:
                raise ValueError("no frame given and no frames_source")
            frame_bytes = next(self._frames)
        frame_bytes = bytes(frame_bytes)
        if self.legacy:
            self._current = ble_adv.encode_adv(frame_bytes, legacy=True, seq=self._seq, company_id=self.company_id)
            self._seq = (self._seq + 1) & 3
        else:
            self._current = ble_adv.encode_adv(
                frame_bytes, company_id=self.company_id, flags=ble_adv.FLAGS_LE_GENERAL_NO_BREDR
            )
        if len(frame_bytes) >= frame.HEADER_LEN:
            self.uplink_fcnt = int.from_bytes(frame_bytes[11:15], "big")
        self.advertised.append(frame_bytes)
        async with self._adv_lock:
            await self._apply()
        return frame_bytes

    async def stop_advertising(self) -> None:
        self._current = None
        async with self._adv_lock:
            await self._stop_alternator()
            if self._device is None:
                return
            if self._adv_set is not None and self._adv_set.enabled:
                await self._adv_set.stop()
            if self.legacy:
                await self._device.stop_advertising()

    async def _apply(self) -> None:
        """Make the controller advertise :attr:`_current` (called under ``_adv_lock``)."""
        current = self._current
        if current is None:
            return
        device = self.device
        if self.legacy:
            await self._stop_alternator()
            await device.start_advertising(
                advertising_type=AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE,
                advertising_data=current[0],
                advertising_interval_min=self.interval_ms,
                advertising_interval_max=self.interval_ms,
            )
            stop = asyncio.Event()
            self._alternator = (asyncio.create_task(self._alternate(current, stop), name=f"{self.name}-segments"), stop)
            return
        if self._adv_set is None:
            self._adv_set = await device.create_advertising_set(
                advertising_parameters=AdvertisingParameters(
                    advertising_event_properties=AdvertisingEventProperties(
                        is_connectable=True, is_scannable=False, is_legacy=False
                    ),
                    primary_advertising_interval_min=self.interval_ms,
                    primary_advertising_interval_max=self.interval_ms,
                    advertising_tx_power=round(self.tx_power_dbm),
                ),
                advertising_data=current[0],
            )
            return
        await self._adv_set.set_advertising_data(current[0])
        if not self._adv_set.enabled:
            await self._adv_set.start()

    async def _alternate(self, segments: tuple[bytes, ...], stop: asyncio.Event) -> None:
        """What a BLE 4.2 node does: swap the advertising data between the two segments every event.
        Stopped through ``stop`` (never cancelled inside an HCI command)."""
        i = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_ms / 1000.0)
            if stop.is_set():
                return
            i ^= 1
            command = hci.HCI_LE_Set_Advertising_Data_Command(advertising_data=segments[i])
            with contextlib.suppress(hci.HCI_Error):
                await self.device.send_sync_command(command)

    async def _stop_alternator(self) -> None:
        alternator, self._alternator = self._alternator, None
        if alternator is not None:
            task, stop = alternator
            stop.set()
            await task

    async def _resume(self) -> None:
        async with self._adv_lock:
            if self._current is not None and self._device is not None:
                await self._apply()

    def _on_disconnection(self, reason: int) -> None:
        if self._current is not None:
            task = asyncio.create_task(self._resume(), name=f"{self.name}-resume")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- GATT --------------------------------------------------------------------------------------

    def _service(self) -> gatt.Service:
        props = gatt.Characteristic.Properties
        perms = gatt.Characteristic.Permissions
        self._status_char: gatt.Characteristic[bytes] = gatt.Characteristic(
            ble_adv.UUID_STATUS, props.READ | props.NOTIFY, perms.READABLE,
            gatt.CharacteristicValue(read=self._on_status_read),
        )
        return gatt.Service(
            ble_adv.UUID_SERVICE,
            [
                gatt.Characteristic(
                    ble_adv.UUID_DOWNLINK, props.WRITE, perms.WRITEABLE,
                    gatt.CharacteristicValue(write=self._on_downlink_write),
                ),
                self._status_char,
                gatt.Characteristic(
                    ble_adv.UUID_MAINTENANCE, props.WRITE, perms.WRITEABLE,
                    gatt.CharacteristicValue(write=self._on_maintenance_write),
                ),
            ],
        )

    @property
    def status(self) -> bytes:
        flags = ble_adv.STATUS_FLAG_MAINTENANCE if self.maintenance else 0
        return ble_adv.encode_status(self.dev_id, self.uplink_fcnt, self.downlink_fcnt, self.battery_mv, flags)

    def _on_status_read(self, connection: Any) -> bytes:
        return self.status

    async def notify_status(self) -> None:
        """Notify the current status to every subscribed central."""
        await self.device.notify_subscribers(self._status_char, self.status)

    def _check(self, value: bytes) -> None:
        if not frame.MIN_FRAME <= len(value) <= frame.MAX_FRAME:
            raise att.ATT_Error(att.ErrorCode.INVALID_ATTRIBUTE_LENGTH)
        code = self.verify(value) if self.verify is not None else 0
        if code:
            raise att.ATT_Error(code)

    def _on_downlink_write(self, connection: Any, value: bytes) -> None:
        value = bytes(value)
        self._check(value)
        self.downlinks.append(value)
        self.downlink_fcnt = int.from_bytes(value[11:15], "big")
        self._queue.put_nowait(value)
        if self.on_downlink is not None:
            self.on_downlink(value)

    def _on_maintenance_write(self, connection: Any, value: bytes) -> None:
        value = bytes(value)
        if not self.maintenance:
            raise att.ATT_Error(ble_adv.ATT_ERR_NOT_IN_MAINTENANCE)
        self._check(value)
        self.maintenance_writes.append(value)

    def _on_connection(self, connection: Any) -> None:
        self.connections += 1
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)

    async def next_downlink(self, timeout: float) -> bytes:
        """The next downlink written to this node (waits at most ``timeout`` seconds)."""
        return await asyncio.wait_for(self._queue.get(), timeout)
