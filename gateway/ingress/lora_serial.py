"""LoRa ingress through a serial LoRa modem: a RAK3172 with RUI3 firmware (v4.0.x or later) in P2P mode.

The port is opened with pyserial (settings, exclusive lock) and then read without threads: its file
descriptor joins the event loop with ``loop.add_reader``; writes are non-blocking with ``add_writer``
back-pressure. A supervisor task owns the modem's life cycle:

    open port -> configure (AT, AT+NWM=0, AT, AT+PRECV=0, AT+P2P=..., AT+PRECV=65534)
      -> receiving: +EVT:RXP2P lines become RawFrames for the sink
      -> port lost (read error, EOF, write error): close, poll for the device path with exponential
         backoff, reopen, reconfigure; counted as ``disconnects`` / ``reconnects``
      -> modem rebooted (banner outside configuration) or receive stopped: reconfigure; ``modem_resets``

Downlinks go out in the node's receive window (lora_p2p: they start 1050 ms after the uplink ended):
stop receive just before (AT+PRECV=0), wait for the start time, AT+PSEND, wait for +EVT:TXP2P DONE,
then AT+PRECV=65534 again. The regional duty cycle is checked before,
and accounted after, every transmission. The command set is in docs/radios.md section 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import serial

from lifeline.gateway.clock import Clock, SystemClock
from lifeline.gateway.ingress import lora_p2p
from lifeline.gateway.ingress.at_parser import (
    AtError,
    AtEvent,
    AtLineParser,
    AtReply,
    Banner,
    Ok,
    Reject,
    RxPacket,
    RxTimeout,
    TxDone,
    Value,
)
from lifeline.gateway.ingress.base import DownlinkRequest, FrameSink, RawFrame, Reception
from lifeline.gateway.ingress.duty_cycle import DutyCycleTracker
from lifeline.gateway.tasks import cancel_and_wait
from lifeline.protocols import lora_phy

log = logging.getLogger(__name__)

RADIO = "lora-serial"
PRECV_CONTINUOUS = 65534  # RUI3: receive continuously until AT+PRECV=0
PRECV_STOP = 0
PREP_MS = 50  # stop receive this long before a downlink starts
_CONTEXT = struct.Struct(">q")  # estimated uplink end, Unix ms
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
_FREQ_RANGES = {"EU868": (863_000_000, 870_000_000), "CN470": (470_000_000, 510_000_000)}


class ModemGone(Exception):
    """The port closed or the modem rebooted while we waited for it."""


class CommandFailed(Exception):
    def __init__(self, command: str, code: str) -> None:
        super().__init__(f"{command.split('=')[0]}: {code}")
        self.code = code


@dataclass(frozen=True, slots=True)
class LoraSerialConfig:
    """Options of one ``type = "lora-serial"`` ingress (docs/radios.md section 1.3)."""

    name: str
    port: str  # e.g. /dev/ttyUSB0, or a udev symlink such as /dev/lifeline-lora
    region: str = "EU868"
    freq_hz: int | None = None  # None: the region's Lifeline channel (lora_p2p.REGION_DEFAULTS)
    sf: int | None = None
    bw_khz: int | None = None
    cr: int = 1  # 1..4 = 4/5..4/8
    preamble: int = 8
    tx_power_dbm: int | None = None
    duty_cycle: float | None = None  # only where the region has no sub-band limit (CN470); None = 1 %
    baudrate: int = 115200
    command_timeout_s: float = 2.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    health_interval_s: float = 60.0  # send AT when the modem has been silent this long
    queue_frames: int = 1024  # frames buffered towards the pipeline

    def __post_init__(self) -> None:
        def fail(key: str, reason: str) -> None:
            raise ValueError(f"{key}: {reason}")

        if not _NAME.match(self.name):
            fail("name", f"{self.name!r} must be 1-32 of A-Z a-z 0-9 _ -")
        if not self.port:
            fail("port", "empty device path")
        if self.region not in lora_p2p.REGION_DEFAULTS:
            fail("region", f"{self.region!r} is not one of {', '.join(lora_p2p.REGION_DEFAULTS)}")
        lo, hi = _FREQ_RANGES[self.region]
        if self.freq_hz is not None and not lo <= self.freq_hz <= hi:
            fail("freq_hz", f"{self.freq_hz} is outside {self.region} ({lo}..{hi} Hz)")
        if self.sf is not None and not lora_phy.SF_MIN <= self.sf <= lora_phy.SF_MAX:
            fail("sf", f"{self.sf} is not 7..12")
        if self.bw_khz is not None and self.bw_khz not in lora_phy.BANDWIDTHS_KHZ:
            fail("bw_khz", f"{self.bw_khz} is not one of 125, 250, 500")
        if self.cr not in lora_phy.CODING_RATES:
            fail("cr", f"{self.cr} is not 1..4 (4/5..4/8)")
        if not 6 <= self.preamble <= 65535:
            fail("preamble", f"{self.preamble} is not 6..65535")
        if self.tx_power_dbm is not None and not 5 <= self.tx_power_dbm <= 22:
            fail("tx_power_dbm", f"{self.tx_power_dbm} is not 5..22 (RAK3172)")
        if self.duty_cycle is not None and not 0.0 < self.duty_cycle <= 1.0:
            fail("duty_cycle", f"{self.duty_cycle} is not in (0, 1]")
        if self.baudrate not in _BAUDS:
            fail("baudrate", f"{self.baudrate} is not one of {_BAUDS}")
        for key in ("command_timeout_s", "reconnect_min_s", "reconnect_max_s", "health_interval_s"):
            if not getattr(self, key) > 0:
                fail(key, "must be > 0")
        if self.reconnect_max_s < self.reconnect_min_s:
            fail("reconnect_max_s", "is below reconnect_min_s")
        if not 1 <= self.queue_frames <= 1_000_000:
            fail("queue_frames", "is not 1..1000000")

    @classmethod
    def from_config(cls, table: Mapping[str, object], **overrides: object) -> LoraSerialConfig:
        return lora_p2p.options_from_table(cls, table, **overrides)

    @property
    def channel(self) -> lora_p2p.ChannelDefaults:
        d = lora_p2p.REGION_DEFAULTS[self.region]
        return lora_p2p.ChannelDefaults(
            freq_hz=d.freq_hz if self.freq_hz is None else self.freq_hz,
            sf=d.sf if self.sf is None else self.sf,
            bw_khz=d.bw_khz if self.bw_khz is None else self.bw_khz,
            tx_power_dbm=d.tx_power_dbm if self.tx_power_dbm is None else self.tx_power_dbm,
        )

    def p2p_command(self) -> str:
        """``AT+P2P=<freq Hz>:<SF>:<BW kHz>:<CR 0..3>:<preamble>:<power dBm>`` (RUI3 v4 kHz form)."""
        ch = self.channel
        return (f"AT+P2P={ch.freq_hz}:{ch.sf}:{ch.bw_khz}:{self.cr - 1}:{self.preamble}:"
                f"{ch.tx_power_dbm}")


class LoraSerialAdapter:
    """:class:`~lifeline.gateway.ingress.base.IngressAdapter` for a RAK3172 RUI3 modem in P2P mode."""

    radio = RADIO

    def __init__(
        self,
        config: LoraSerialConfig,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.name = config.name
        self._ch = config.channel
        self._clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self._parser = AtLineParser()
        self._counts: Counter[str] = Counter()
        self._duty = DutyCycleTracker(lora_phy.region(config.region), config.duty_cycle)
        self._serial: serial.Serial | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: FrameSink | None = None
        self._queue: asyncio.Queue[RawFrame] = asyncio.Queue(config.queue_frames)
        self._tasks: list[asyncio.Task[None]] = []
        self._radio_lock = asyncio.Lock()
        self._pending: asyncio.Future[AtEvent] | None = None
        self._tx_done: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._lost = asyncio.Event()
        self._reset = asyncio.Event()
        self._activity = asyncio.Event()
        self._configuring = False
        self._in_banner = False
        self._stopping = False
        self._configured_once = False
        self._was_lost = False
        self.connected = asyncio.Event()  # set while the modem is configured and receiving

    @classmethod
    def from_config(cls, table: Mapping[str, object], **kwargs: object) -> LoraSerialAdapter:
        """Validate an ``[ingress.options]`` table (``name`` may be in it or given as a keyword)."""
        name = kwargs.pop("name", None)
        config = LoraSerialConfig.from_config(table, **({} if name is None else {"name": name}))
        return cls(config, **kwargs)  # type: ignore[arg-type]

    # --- IngressAdapter ----------------------------------------------------------------------------

    async def start(self, sink: FrameSink) -> None:
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._supervise(), name=f"{self.name}-supervisor"),
            asyncio.create_task(self._deliver(), name=f"{self.name}-deliver"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self._close()
        self.connected.clear()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    def counters(self) -> Mapping[str, int]:
        out = dict(self._counts)
        out.update(self._parser.counters)
        return out

    async def send_downlink(self, request: DownlinkRequest) -> bool:
        ok, reason = await self._send_downlink(request)
        self._counts["downlinks_sent" if ok else "downlink_failed." + reason] += 1
        return ok

    # --- downlinks ---------------------------------------------------------------------------------

    async def _send_downlink(self, request: DownlinkRequest) -> tuple[bool, str]:
        rx = request.reception
        if rx.radio != RADIO or rx.adapter != self.name:
            return False, "wrong_adapter"
        payload = request.payload
        if not 1 <= len(payload) <= lora_phy.MAX_PHY_PAYLOAD:
            return False, "bad_payload"
        if len(rx.context) == _CONTEXT.size:
            (uplink_end,) = _CONTEXT.unpack(rx.context)
        else:
            uplink_end = rx.rx_ms
        ch = self._ch
        start = lora_p2p.downlink_start_ms(uplink_end)
        t_sym = lora_phy.symbol_time_ms(ch.sf, ch.bw_khz)
        window_end = uplink_end + lora_p2p.RX1_DELAY_MS + lora_p2p.RX_WINDOW_MS
        latest = min(window_end - 5 * t_sym, request.deadline_ms)
        command = "AT+PSEND=" + payload.hex().upper()
        cmd_ms = self._line_ms(len(command))
        toa = lora_phy.time_on_air_ms(len(payload), ch.sf, ch.bw_khz, self.config.cr, self.config.preamble)
        if self._duty.wait_ms(ch.freq_hz, ch.bw_khz, start) > 0:
            return False, "duty_cycle"
        async with self._radio_lock:
            if not self.connected.is_set():
                return False, "not_connected"
            start = max(start, self._clock.now_ms() + PREP_MS + cmd_ms)
            if start > latest:
                return False, "too_late"
            await self._sleep_until(start - PREP_MS - cmd_ms)
            try:
                await self._expect_ok(f"AT+PRECV={PRECV_STOP}")
                await self._sleep_until(start - cmd_ms)
                if self._clock.now_ms() + cmd_ms > latest:
                    return False, "too_late"
                assert self._loop is not None
                self._tx_done = self._loop.create_future()
                await self._expect_ok(command)
                self._duty.record(ch.freq_hz, ch.bw_khz, self._clock.now_ms(), toa)
                await self._sleep(toa / 1000.0)
                await asyncio.wait_for(self._tx_done, self.config.command_timeout_s)
                return True, ""
            except ModemGone:
                return False, "modem_gone"
            except CommandFailed as exc:
                return False, exc.code.lower()
            except TimeoutError:
                return False, "timeout"
            finally:
                self._tx_done = None
                await self._resume_rx()

    async def _resume_rx(self) -> None:
        if self._lost.is_set() or self._reset.is_set() or self._fd is None:
            return
        try:
            await self._expect_ok(f"AT+PRECV={PRECV_CONTINUOUS}")
        except (ModemGone, CommandFailed, TimeoutError):
            self._counts["rx_resume_failed"] += 1
            self._reset.set()  # the supervisor reconfigures from scratch

    async def _sleep_until(self, at_ms: float) -> None:
        delay = at_ms - self._clock.now_ms()
        if delay > 0:
            await self._sleep(delay / 1000.0)

    def _line_ms(self, chars: int) -> int:
        """Milliseconds to move a line of ``chars`` plus CRLF over the UART (10 bits per byte)."""
        return -(-(chars + 2) * 10_000 // self.config.baudrate)

    # --- supervisor --------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = self.config.reconnect_min_s
        absent_reported = False
        while not self._stopping:
            if self._fd is None:
                if not os.path.exists(self.config.port):
                    if not absent_reported:
                        self._counts["port_absent"] += 1
                        log.warning("%s: %s is absent; polling", self.name, self.config.port)
                        absent_reported = True
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.config.reconnect_max_s)
                    continue
                try:
                    self._open()
                except (OSError, serial.SerialException) as exc:
                    self._counts["open_failed"] += 1
                    log.warning("%s: cannot open %s: %s", self.name, self.config.port, exc)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.config.reconnect_max_s)
                    continue
                absent_reported = False
            try:
                async with self._radio_lock:
                    await self._configure()
            except (ModemGone, CommandFailed, TimeoutError) as exc:
                self._counts["configure_failed"] += 1
                log.warning("%s: configuring the modem failed: %s", self.name, exc)
                if isinstance(exc, CommandFailed) or self._lost.is_set() or isinstance(exc, TimeoutError):
                    self._close()
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_s)
                continue
            backoff = self.config.reconnect_min_s
            if self._was_lost:
                self._counts["reconnects"] += 1
            elif self._configured_once:
                self._counts["reconfigures"] += 1
            self._configured_once = True
            self._was_lost = False
            self.connected.set()
            log.info("%s: modem on %s receiving (%s)", self.name, self.config.port, self.config.p2p_command())
            await self._watch()
            self.connected.clear()
            if self._lost.is_set():
                self._counts["disconnects"] += 1
                self._was_lost = True
                log.warning("%s: lost %s", self.name, self.config.port)
                self._close()

    async def _watch(self) -> None:
        """Wait until the port is lost or the modem needs reconfiguring; probe it when silent."""
        silent_probes = 0
        while not (self._lost.is_set() or self._reset.is_set()):
            self._activity.clear()
            waiters = [asyncio.ensure_future(e.wait()) for e in (self._lost, self._reset, self._activity)]
            done, pending = await asyncio.wait(waiters, timeout=self.config.health_interval_s,
                                               return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()
            if done:
                silent_probes = 0
                continue
            self._counts["health_probes"] += 1
            try:
                async with self._radio_lock:
                    await self._expect_ok("AT")
                silent_probes = 0
            except (ModemGone, CommandFailed, TimeoutError):
                silent_probes += 1
                if silent_probes >= 2:
                    self._counts["modem_unresponsive"] += 1
                    self._port_lost("modem does not answer AT")
        self._reset.clear()

    def _open(self) -> None:
        assert self._loop is not None
        port = serial.Serial(self.config.port, self.config.baudrate, timeout=0, write_timeout=0,
                             exclusive=True)
        with contextlib.suppress(serial.SerialException, OSError):
            port.reset_input_buffer()
        fd = port.fileno()
        os.set_blocking(fd, False)
        self._serial, self._fd = port, fd
        self._parser.reset()
        self._lost.clear()
        self._reset.clear()
        self._loop.add_reader(fd, self._on_readable)

    def _close(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
        self._serial = None
        self._fd = None
        self._parser.reset()

    async def _configure(self) -> None:
        """Bring the modem to continuous P2P receive with this adapter's channel (docs/radios.md 1.2)."""
        self._configuring = True
        try:
            await self._expect_ok_retry("AT", attempts=3)
            await self._expect_ok("AT+NWM=0")
            # If the work mode changed, RUI3 restarts the module; it answers AT again once booted.
            await self._expect_ok_retry("AT", attempts=5)
            await self._expect_ok(f"AT+PRECV={PRECV_STOP}")
            await self._expect_ok(self.config.p2p_command())
            await self._expect_ok(f"AT+PRECV={PRECV_CONTINUOUS}")
            self._reset.clear()
        finally:
            self._configuring = False
            self._in_banner = False

    # --- commands ----------------------------------------------------------------------------------

    async def _expect_ok_retry(self, command: str, attempts: int) -> None:
        for attempt in range(attempts):
            try:
                await self._expect_ok(command, timeout=min(1.0, self.config.command_timeout_s))
                return
            except (TimeoutError, CommandFailed):
                if attempt == attempts - 1:
                    raise

    async def _expect_ok(self, command: str, timeout: float | None = None) -> None:
        event = await self._command(command, timeout or self.config.command_timeout_s)
        if isinstance(event, AtError):
            raise CommandFailed(command, event.code)

    async def _command(self, command: str, timeout: float) -> AtEvent:
        if self._fd is None or self._lost.is_set() or self._loop is None:
            raise ModemGone("port closed")
        future: asyncio.Future[AtEvent] = self._loop.create_future()
        self._pending = future
        try:
            await self._write((command + "\r\n").encode("ascii"))
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._counts["command_timeout"] += 1
            raise
        finally:
            self._pending = None

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self._fd
            if fd is None or self._loop is None:
                raise ModemGone("port closed")
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                self._writable = self._loop.create_future()
                self._loop.add_writer(fd, self._on_writable)
                await self._writable
                continue
            except OSError as exc:
                self._port_lost(f"write: {exc}")
                raise ModemGone(str(exc)) from None
            view = view[written:]

    def _on_writable(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # --- reading -----------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._port_lost(f"read: {exc}")
            return
        if not data:
            self._port_lost("end of file")
            return
        self._activity.set()
        for event in self._parser.feed(data):
            self._dispatch(event)

    def _port_lost(self, why: str) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        log.debug("%s: port lost: %s", self.name, why)
        self._lost.set()
        self._fail_waiters(ModemGone(why))

    def _fail_waiters(self, exc: Exception) -> None:
        for future in (self._pending, self._tx_done, self._writable):
            if future is not None and not future.done():
                future.set_exception(exc)

    def _dispatch(self, event: AtEvent) -> None:
        if isinstance(event, RxPacket):
            self._on_packet(event)
        elif isinstance(event, Ok | AtError):
            if self._pending is not None and not self._pending.done():
                self._pending.set_result(event)
            else:
                self._counts["unsolicited_response"] += 1
        elif isinstance(event, TxDone):
            if self._tx_done is not None and not self._tx_done.done():
                self._tx_done.set_result(None)
            else:
                self._counts["unsolicited_txdone"] += 1
        elif isinstance(event, Banner):
            self._in_banner = not event.final
            if not self._configuring:
                if not event.final or not self._reset.is_set():
                    self._counts["modem_resets"] += 1
                    log.warning("%s: modem restarted (%s); reconfiguring", self.name, event.text)
                self._reset.set()
                self._fail_waiters(ModemGone("modem restarted"))
        elif isinstance(event, RxTimeout):
            if not self._configuring:
                self._counts["rx_stopped"] += 1
                self._reset.set()
        elif isinstance(event, AtReply | Value):
            if not self._in_banner:
                self._counts["unsolicited_line"] += 1
        elif isinstance(event, Reject):
            log.debug("%s: rejected modem line: %s %s", self.name, event.reason, event.detail)

    def _on_packet(self, event: RxPacket) -> None:
        now = self._clock.now_ms()
        line_chars = 22 + 2 * len(event.payload)  # "+EVT:RXP2P:-nnn:-nn:" + hex
        uplink_end = now - self._line_ms(line_chars)
        reception = Reception(
            radio=RADIO,
            adapter=self.name,
            rx_ms=now,
            rssi=event.rssi,
            snr_x10=event.snr * 10,
            freq_hz=self._ch.freq_hz,
            sf=self._ch.sf,
            context=_CONTEXT.pack(uplink_end),
        )
        self._counts["frames"] += 1
        try:
            self._queue.put_nowait(RawFrame(event.payload, reception))
        except asyncio.QueueFull:
            self._counts["dropped_queue_full"] += 1

    async def _deliver(self) -> None:
        assert self._sink is not None
        while True:
            frame = await self._queue.get()
            await self._sink.submit(frame)
