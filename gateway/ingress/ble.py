"""BLE ingress: Lifeline frames from node advertisements, downlinks over GATT (docs/ble.md).

The adapter scans passively with bleak (no SCAN_REQ is ever sent, so nodes spend nothing answering),
extracts frames with :class:`~lifeline.gateway.ingress.ble_adv.AdvExtractor` and hands them to the
pipeline as :class:`RawFrame` records with the RSSI of the advertisement. It connects to a node only
to deliver a downlink (the pipeline calls :meth:`BleAdapter.send_downlink` after an ACK_REQ uplink or
when a command is queued for the node): connect, check the node's device id in the status
characteristic, write the protected frame to the downlink characteristic with response, disconnect.

bleak picks the Bluetooth stack: ``backend = "bluez"`` (production on the Pi: BlueZ over D-Bus, passive
scanning through an advertisement monitor) or ``backend = "bumble:<transport>"`` (the bumble host stack
on an HCI controller, e.g. ``bumble:usb:0``; also what the tests use, on virtual controllers).

Config (``[[ingress]] type = "ble"``, options below; :meth:`BleConfig.from_config` validates them)::

    backend = "bluez"            # or "bumble:<bumble transport spec>"
    adapter = "hci0"             # BlueZ controller (bluez only)
    address = "F0:F1:F2:F3:F4:F5"  # static random address of the bumble host (bumble only)
    scanning_mode = "passive"    # or "active"
    company_id = 0xFFFF          # 0xFFFF is the SIG's test id; a product uses its own
    dedupe_window_ms = 10000     # a frame repeated within this window is a duplicate
    segment_timeout_ms = 5000    # legacy segments wait this long for their other half
    connect_timeout_s = 5.0      # LE connection set-up, including GATT discovery
    gatt_timeout_s = 3.0         # status read + downlink write
    verify_device = true         # read the status characteristic and refuse a node with another id
    queue_frames = 1024          # frames buffered towards the pipeline
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError, BleakGATTProtocolError

from lifeline.gateway.clock import Clock, SystemClock
from lifeline.gateway.ingress import ble_adv
from lifeline.gateway.ingress.base import DownlinkRequest, FrameSink, RawFrame, Reception
from lifeline.gateway.tasks import cancel_and_wait
from lifeline.protocols import frame

if TYPE_CHECKING:
    from lifeline.gateway.config import IngressSpec
    from lifeline.gateway.ingress.bleak_bumble import BumbleHost
    from lifeline.gateway.ingress.registry import AdapterContext

RADIO = "ble"
DISCONNECT_TIMEOUT_S = 2.0
GUARD_S = 2.5  # extra time the outer deadline grants the backend to cancel a connection attempt itself
DEVICE_CACHE = 4096  # BLEDevice objects kept for downlinks (bleak connects best with a scanned device)
RSSI_NOT_AVAILABLE = 127  # HCI reports 0x7F when the controller has no RSSI
_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BleConfig:
    """Options of one ``type = "ble"`` ingress. Invalid values raise ValueError("<key>: <reason>")."""

    backend: str = "bluez"
    adapter: str | None = None
    address: str = "F0:F1:F2:F3:F4:F5"
    scanning_mode: str = "passive"
    company_id: int = ble_adv.COMPANY_ID_TEST
    dedupe_window_ms: int = 10_000
    segment_timeout_ms: int = 5_000
    connect_timeout_s: float = 5.0
    gatt_timeout_s: float = 3.0
    verify_device: bool = True
    queue_frames: int = 1024

    def __post_init__(self) -> None:
        def fail(key: str, reason: str) -> None:
            raise ValueError(f"{key}: {reason}")

        if self.backend != "bluez" and not (self.backend.startswith("bumble:") and len(self.backend) > 7):
            fail("backend", f"{self.backend!r} is not 'bluez' or 'bumble:<transport spec>'")
        if self.adapter is not None and (self.backend != "bluez" or not re.fullmatch(r"hci\d{1,3}", self.adapter)):
            fail("adapter", f"{self.adapter!r}: a BlueZ controller name such as 'hci0', with backend 'bluez'")
        if not _ADDRESS.match(self.address) or int(self.address[:2], 16) & 0xC0 != 0xC0:
            fail("address", f"{self.address!r} is not a static random address (AA:BB:CC:DD:EE:FF, top bits 11)")
        if self.scanning_mode not in ("passive", "active"):
            fail("scanning_mode", f"{self.scanning_mode!r} is not 'passive' or 'active'")
        if not 0 <= self.company_id <= 0xFFFF:
            fail("company_id", f"{self.company_id} is not 0..65535")
        if not 100 <= self.dedupe_window_ms <= 3_600_000:
            fail("dedupe_window_ms", "is not 100..3600000")
        if not 100 <= self.segment_timeout_ms <= 600_000:
            fail("segment_timeout_ms", "is not 100..600000")
        for key in ("connect_timeout_s", "gatt_timeout_s"):
            if not 0.05 <= getattr(self, key) <= 120.0:
                fail(key, "is not 0.05..120 s")
        if not 1 <= self.queue_frames <= 1_000_000:
            fail("queue_frames", "is not 1..1000000")

    @classmethod
    def from_config(cls, table: Mapping[str, object]) -> BleConfig:
        """Build from an ``[ingress.options]`` table: unknown keys and wrong types are errors."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            spec = known.get(key)
            if spec is None:
                raise ValueError(f"{key}: unknown option (known: {', '.join(sorted(known))})")
            expected = str(spec.type).replace(" ", "")
            optional = expected.endswith("|None")
            base = expected.removesuffix("|None")
            if value is None and optional:
                kwargs[key] = None
                continue
            if base == "bool":
                ok = isinstance(value, bool)
            elif base == "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif base == "float":
                ok = isinstance(value, int | float) and not isinstance(value, bool)
                value = float(value) if ok else value  # type: ignore[arg-type]
            else:
                ok = isinstance(value, str)
            if not ok:
                raise ValueError(f"{key}: expected {base}, got {type(value).__name__}")
            kwargs[key] = value
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class BleakBackend:
    """Which bleak backend classes to use and the extra keyword arguments they take."""

    name: str
    scanner: type[BaseBleakScanner] | None = None  # None: bleak's platform backend (BlueZ on Linux)
    client: type[BaseBleakClient] | None = None
    scanner_kwargs: Mapping[str, Any] = field(default_factory=dict)
    client_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def bluez(cls, config: BleConfig) -> BleakBackend:
        bluez: dict[str, Any] = {} if config.adapter is None else {"adapter": config.adapter}
        scan: dict[str, Any] = dict(bluez)
        if config.scanning_mode == "passive":
            # BlueZ scans passively only through an advertisement monitor, which needs a pattern:
            # Manufacturer Specific Data starting with our company id (little-endian).
            scan["or_patterns"] = [
                OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, config.company_id.to_bytes(2, "little"))
            ]
        return cls("bluez", scanner_kwargs={"bluez": scan}, client_kwargs={"bluez": bluez})

    @classmethod
    def bumble(cls, host: BumbleHost) -> BleakBackend:
        from lifeline.gateway.ingress.bleak_bumble import BumbleClientBackend, BumbleScannerBackend

        return cls(
            "bumble", scanner=BumbleScannerBackend, client=BumbleClientBackend,
            scanner_kwargs={"bumble": host}, client_kwargs={"bumble": host},
        )


def _context(device: BLEDevice) -> bytes:
    """Downlink routing data for a Reception: the address as bleak names it, ``/P`` for a public one."""
    details = device.details
    public = False
    if hasattr(details, "is_public"):  # bumble hci.Address
        public = bool(details.is_public)
    elif isinstance(details, Mapping):  # BlueZ: {"path": ..., "props": {"AddressType": "public", ...}}
        props = details.get("props")
        public = isinstance(props, Mapping) and props.get("AddressType") == "public"
    return (device.address + ("/P" if public else "")).encode("ascii", "replace")


class BleAdapter:
    """:class:`~lifeline.gateway.ingress.base.IngressAdapter` for Lifeline BLE nodes (see module docstring)."""

    radio = RADIO

    def __init__(
        self,
        name: str,
        config: BleConfig | None = None,
        *,
        clock: Clock | None = None,
        backend: BleakBackend | None = None,
    ) -> None:
        self.name = name
        self.config = config or BleConfig()
        self._clock: Clock = clock or SystemClock()
        self._backend = backend  # None: built from config.backend at start()
        self._owned_host: BumbleHost | None = None
        self._extractor = ble_adv.AdvExtractor(
            company_id=self.config.company_id,
            dedupe_window_ms=self.config.dedupe_window_ms,
            segment_timeout_ms=self.config.segment_timeout_ms,
        )
        self._counts: Counter[str] = Counter()
        self._queue: asyncio.Queue[RawFrame] = asyncio.Queue(self.config.queue_frames)
        self._devices: OrderedDict[str, BLEDevice] = OrderedDict()  # last BLEDevice per address
        self._scanner: BleakScanner | None = None
        self._deliver_task: asyncio.Task[None] | None = None
        self._sink: FrameSink | None = None
        self._downlink_lock = asyncio.Lock()

    @classmethod
    def from_config(cls, name: str, table: Mapping[str, object], *, clock: Clock | None = None) -> BleAdapter:
        """The registry's entry point (called by keyword: ``table=``, ``name=``, ``clock=``)."""
        return cls(name, BleConfig.from_config(table), clock=clock)

    # --- IngressAdapter ----------------------------------------------------------------------------

    async def start(self, sink: FrameSink) -> None:
        if self._scanner is not None:
            return
        self._sink = sink
        backend = await self._open_backend()
        self._extractor.reset()
        scanner = BleakScanner(
            self._on_advertisement,
            None,
            "passive" if self.config.scanning_mode == "passive" else "active",
            backend=backend.scanner,
            **backend.scanner_kwargs,
        )
        try:
            await scanner.start()
        except BaseException:
            await self._close_backend()
            raise
        self._scanner = scanner
        self._deliver_task = asyncio.create_task(self._deliver(), name=f"{self.name}-deliver")

    async def stop(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            with contextlib.suppress(Exception):
                await scanner.stop()
        task, self._deliver_task = self._deliver_task, None
        if task is not None:
            await cancel_and_wait([task])
        async with self._downlink_lock:
            await self._close_backend()

    def counters(self) -> Mapping[str, int]:
        out = dict(self._extractor.counters)
        out.update(self._counts)
        return out

    async def send_downlink(self, request: DownlinkRequest) -> bool:
        reason = await self._send_downlink(request)
        self._counts["downlinks_sent" if reason is None else "downlink_failed." + reason] += 1
        return reason is None

    # --- backend -----------------------------------------------------------------------------------

    async def _open_backend(self) -> BleakBackend:
        if self._backend is not None:
            return self._backend
        spec = self.config.backend
        if spec == "bluez":
            self._backend = BleakBackend.bluez(self.config)
            return self._backend
        from lifeline.gateway.ingress.bleak_bumble import BumbleHost

        host = await BumbleHost.open(spec.removeprefix("bumble:"), address=self.config.address)
        self._owned_host = host
        self._backend = BleakBackend.bumble(host)
        return self._backend

    async def _close_backend(self) -> None:
        host, self._owned_host = self._owned_host, None
        if host is not None:
            self._backend = None
            with contextlib.suppress(Exception):
                await host.close()

    # --- uplinks -----------------------------------------------------------------------------------

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak's detection callback: never raises (a bug here must not stop the scanner)."""
        try:
            mono_ms = int(self._clock.monotonic() * 1000)
            frames = self._extractor.feed(device.address, adv.manufacturer_data, mono_ms)
            if not frames:
                return
            self._devices[device.address] = device
            self._devices.move_to_end(device.address)
            while len(self._devices) > DEVICE_CACHE:
                self._devices.popitem(last=False)
            rssi = adv.rssi if isinstance(adv.rssi, int) and adv.rssi != RSSI_NOT_AVAILABLE else None
            reception = Reception(
                radio=RADIO, adapter=self.name, rx_ms=self._clock.now_ms(), rssi=rssi, context=_context(device)
            )
            for data in frames:
                try:
                    self._queue.put_nowait(RawFrame(data, reception))
                except asyncio.QueueFull:
                    self._extractor.forget(data)  # the node repeats it; let a later copy in
                    self._counts["overflow"] += 1
        except Exception:
            self._counts["callback_errors"] += 1
            log.exception("%s: advertisement callback failed", self.name)

    async def _deliver(self) -> None:
        assert self._sink is not None
        while True:
            raw = await self._queue.get()
            try:
                await self._sink.submit(raw)
            except Exception:  # the pipeline's bug must not stop the radio; the node repeats the frame
                self._extractor.forget(raw.payload)
                self._counts["sink_errors"] += 1
                log.exception("%s: sink.submit failed", self.name)

    # --- downlinks ---------------------------------------------------------------------------------

    async def _send_downlink(self, request: DownlinkRequest) -> str | None:
        """None when the node acknowledged the write, else the failure reason."""
        rx = request.reception
        if rx.radio != RADIO or rx.adapter != self.name:
            return "wrong_adapter"
        if not frame.MIN_FRAME <= len(request.payload) <= frame.MAX_FRAME:
            return "bad_payload"
        address = rx.context.decode("ascii", "replace")
        if not _ADDRESS.match(address.removesuffix("/P")):
            return "no_address"
        if self._scanner is None:
            return "not_running"
        async with self._downlink_lock:  # one LE connection attempt at a time
            remaining = (request.deadline_ms - self._clock.now_ms()) / 1000.0
            if remaining <= 0:
                return "expired"
            return await self._deliver_downlink(address, request, remaining)

    async def _deliver_downlink(self, address: str, request: DownlinkRequest, remaining: float) -> str | None:
        backend = self._backend
        assert backend is not None
        target: BLEDevice | str = self._devices.get(address.removesuffix("/P"), address)
        connect_s = min(self.config.connect_timeout_s, remaining)
        client = BleakClient(target, timeout=connect_s, backend=backend.client, **backend.client_kwargs)
        stage = "connect"
        try:
            async with asyncio.timeout(connect_s + GUARD_S):
                await client.connect()
            stage = "gatt"
            async with asyncio.timeout(min(self.config.gatt_timeout_s, max(0.05, remaining - connect_s))):
                services = client.services
                downlink = services.get_characteristic(ble_adv.UUID_DOWNLINK)
                if downlink is None:
                    return "no_characteristic"
                if self.config.verify_device:
                    status = services.get_characteristic(ble_adv.UUID_STATUS)
                    if status is None:
                        return "no_characteristic"
                    dev_id = ble_adv.status_device_id(bytes(await client.read_gatt_char(status)))
                    if dev_id != request.device_id:
                        return "wrong_device"
                await client.write_gatt_char(downlink, request.payload, response=True)
            return None
        except TimeoutError:
            return f"{stage}_timeout"
        except BleakGATTProtocolError as e:
            self._counts[f"downlink_att_error.{int(e.code):#04x}"] += 1
            return "rejected"
        except BleakError as e:
            log.info("%s: downlink to %s failed at %s: %s", self.name, address, stage, e)
            return f"{stage}_failed"
        except Exception as e:  # backend-specific errors (D-Bus, OS): a failed downlink, not a crash
            log.warning("%s: downlink to %s failed at %s: %r", self.name, address, stage, e)
            return f"{stage}_failed"
        finally:
            if client.is_connected:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.disconnect(), DISCONNECT_TIMEOUT_S)


def create(spec: IngressSpec, context: AdapterContext) -> BleAdapter:
    """Plain factory form of :meth:`BleAdapter.from_config` (raises AdapterOptionError naming the option)."""
    from lifeline.gateway.ingress.registry import AdapterOptionError

    try:
        config = BleConfig.from_config(spec.options)
    except ValueError as e:
        key, _, reason = str(e).partition(": ")
        raise AdapterOptionError(key, reason) from None
    return BleAdapter(spec.name, config, clock=context.clock)
