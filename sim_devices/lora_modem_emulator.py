"""A RAK3172 (RUI3 v4, LoRa P2P) emulator on a real pseudo-terminal, with the virtual air behind it.

The gateway opens :attr:`Rak3172Emulator.path` with pyserial exactly as it would open /dev/ttyUSB0. The
path is a symlink to the pty slave; :meth:`unplug` closes the pty and removes the symlink (the device
node disappears, as a USB serial adapter's does), :meth:`replug` makes a new pty and points the symlink
at it. The AT command set is the one docs/radios.md section 1 documents; what the module "hears" comes
from :class:`~lifeline.sim_devices.air.AirChannel`, in virtual time.

Fault injection for tests: :meth:`inject` (raw bytes: garbage, partial or overlong lines, unsolicited
responses), :meth:`reset` (the module reboots mid-stream and prints its banner), :meth:`unplug` and
:meth:`replug`, and :attr:`hung` (the firmware locks up: commands get no answer, nothing is received).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from lifeline.sim_devices.air import AirChannel, Delivery, LoraParams, RadioBusy, Timer, VirtualClock
from lifeline.sim_devices.pty_cable import PtyCable

FIRMWARE = "RUI_4.0.6_RAK3172-E"
BANNER = (
    "RAKwireless RAK3172-E Example",
    "------------------------------------------------------",
    f"Version: {FIRMWARE}",
)
PRECV_CONTINUOUS = 65534
PRECV_ONE_PACKET = 65535
_CR_INDEX = (0, 1, 2, 3)  # AT+P2P coding rate field: 0..3 = 4/5..4/8


class Rak3172Emulator:
    def __init__(
        self,
        air: AirChannel,
        name: str,
        path: str | Path,
        *,
        x_m: float = 0.0,
        y_m: float = 0.0,
        work_mode: int = 1,
        max_line: int = 1024,
    ) -> None:
        self.air = air
        self.clock: VirtualClock = air.clock
        self.name = name
        self.path = Path(path)
        self.radio = air.add_radio(name, x_m, y_m, on_delivery=self._on_delivery, duty_cycle=False)
        # Kept in the module's flash, so they survive reboots and replugs (as RUI3 does).
        self.work_mode = work_mode  # 0 = LoRa P2P, 1 = LoRaWAN (factory default)
        self.p2p = (868_000_000, 7, 125, 0, 8, 14)  # freq, sf, bw kHz, cr index, preamble, power
        self.iq_inverted = False
        # Volatile state.
        self.rx_mode = 0
        self._rx_timer: Timer | None = None
        self._tx_end_ms = -1.0
        self.hung = False  # firmware lock-up: the module reads but answers nothing
        self.commands: list[str] = []  # every command line received, for assertions
        self.transmissions: list[tuple[float, bytes, LoraParams]] = []  # (start ms, payload, params)
        self.counters: Counter[str] = Counter()
        self.max_line = max_line
        self._cable = PtyCable(self.path, self._on_data)
        self._inbuf = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the USB cable ---------------------------------------------------------------------------

    @property
    def plugged(self) -> bool:
        return self._cable.plugged

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.replug(banner=False)

    def replug(self, banner: bool = True) -> None:
        """Power the module up on a fresh pty and (re)create the device path."""
        assert self._loop is not None, "call start() first"
        self._cable.plug(self._loop)
        self._power_on()
        if banner:
            self._banner()

    def unplug(self) -> None:
        """Pull the cable: the pty closes (the gateway's reads fail) and the device path disappears."""
        if not self._cable.plugged:
            return
        self._cable.unplug()
        self._inbuf.clear()
        self._stop_rx()

    async def stop(self) -> None:
        self.unplug()

    def reset(self) -> None:
        """The module reboots (brown-out, watchdog): receive stops, the banner is printed."""
        self._power_on()
        self._banner()

    def inject(self, data: bytes) -> None:
        """Send raw bytes to the gateway as if the module had printed them."""
        self._write(data)

    def _power_on(self) -> None:
        self.hung = False
        self._stop_rx()
        self.iq_inverted = False
        self._tx_end_ms = -1.0

    @property
    def banner_count(self) -> int:
        return self.counters["banners"]

    def _banner(self) -> None:
        self.counters["banners"] += 1
        for line in BANNER:
            self._line(line)
        self._line("Current Work Mode: " + ("LoRa P2P." if self.work_mode == 0 else "LoRaWAN."))

    # --- pty I/O ---------------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self._inbuf += data
        while True:
            cut = [i for i in (self._inbuf.find(b"\r"), self._inbuf.find(b"\n")) if i >= 0]
            if not cut:
                if len(self._inbuf) > self.max_line:
                    self._inbuf.clear()
                    self.counters["overlong_command"] += 1
                    self._line("AT_PARAM_ERROR")
                return
            end = min(cut)
            raw = bytes(self._inbuf[:end])
            del self._inbuf[: end + 1]
            if raw.strip():
                self._command(raw.decode("ascii", "replace").strip())

    def _write(self, data: bytes) -> None:
        self._cable.write(data)

    def _line(self, text: str) -> None:
        self._write(text.encode("ascii") + b"\r\n")

    # --- AT commands (docs/radios.md section 1) -----------------------------------------------------

    def _command(self, line: str) -> None:
        self.commands.append(line)
        self.counters["commands"] += 1
        if self.hung:
            return
        upper = line.upper()
        if upper == "AT":
            return self._line("OK")
        if not upper.startswith("AT+"):
            return self._line("AT_ERROR")
        name, sep, arg = line[3:].partition("=")
        handler = getattr(self, "_cmd_" + name.upper(), None)
        if handler is None or not sep:
            return self._line("AT_COMMAND_NOT_FOUND" if handler is None else "AT_PARAM_ERROR")
        for out in handler(arg):
            self._line(out)

    def _cmd_VER(self, arg: str) -> list[str]:
        return [f"AT+VER={FIRMWARE}", "OK"] if arg == "?" else ["AT_PARAM_ERROR"]

    def _cmd_NWM(self, arg: str) -> list[str]:
        if arg == "?":
            return [f"AT+NWM={self.work_mode}", "OK"]
        if arg not in ("0", "1"):
            return ["AT_PARAM_ERROR"]
        if int(arg) == self.work_mode:
            return ["OK"]
        self.work_mode = int(arg)
        self._line("OK")
        self.reset()  # RUI3 restarts the module to change the work mode
        return []

    def _busy(self) -> bool:
        return self.rx_mode != 0 or self.clock.now() < self._tx_end_ms

    def _cmd_P2P(self, arg: str) -> list[str]:
        if self.work_mode != 0:
            return ["AT_MODE_NO_SUPPORT"]
        if arg == "?":
            return ["AT+P2P=" + ":".join(str(v) for v in self.p2p), "OK"]
        parts = arg.split(":")
        if len(parts) != 6 or not all(p.isdigit() for p in parts):
            return ["AT_PARAM_ERROR"]
        freq, sf, bw, cr, pre, pwr = (int(p) for p in parts)
        if not (150_000_000 <= freq <= 960_000_000 and 5 <= sf <= 12 and bw in (125, 250, 500)
                and cr in _CR_INDEX and 5 <= pre <= 65535 and 5 <= pwr <= 22):
            return ["AT_PARAM_ERROR"]
        if self._busy():
            return ["AT_BUSY_ERROR"]
        self.p2p = (freq, sf, bw, cr, pre, pwr)
        return ["OK"]

    def _cmd_IQINVER(self, arg: str) -> list[str]:
        if arg == "?":
            return [f"AT+IQINVER={int(self.iq_inverted)}", "OK"]
        if arg not in ("0", "1"):
            return ["AT_PARAM_ERROR"]
        if self._busy():
            return ["AT_BUSY_ERROR"]
        self.iq_inverted = arg == "1"
        return ["OK"]

    def params(self) -> LoraParams:
        freq, sf, bw, cr, pre, _ = self.p2p
        return LoraParams(freq, sf, bw, cr + 1, pre, self.iq_inverted)

    def _cmd_PRECV(self, arg: str) -> list[str]:
        if self.work_mode != 0:
            return ["AT_MODE_NO_SUPPORT"]
        if not arg.isdigit() or int(arg) > 65535:
            return ["AT_PARAM_ERROR"]
        value = int(arg)
        if self.clock.now() < self._tx_end_ms:
            return ["AT_BUSY_ERROR"]
        self._stop_rx()
        if value:
            self.rx_mode = value
            now = self.clock.now()
            if value in (PRECV_CONTINUOUS, PRECV_ONE_PACKET):
                self.radio.listen(self.params(), now)
            else:
                self.radio.listen(self.params(), now, now + value)
                self._rx_timer = self.clock.call_at(now + value, self._rx_timeout)
        return ["OK"]

    def _stop_rx(self) -> None:
        if self.rx_mode:
            self.radio.stop_listening()
        self.rx_mode = 0
        if self._rx_timer is not None:
            self._rx_timer.cancel()
            self._rx_timer = None

    def _rx_timeout(self) -> None:
        self._rx_timer = None
        self._stop_rx()
        self._line("+EVT:RXP2P RECEIVE TIMEOUT")

    def _cmd_PSEND(self, arg: str) -> list[str]:
        if self.work_mode != 0:
            return ["AT_MODE_NO_SUPPORT"]
        try:
            payload = bytes.fromhex(arg)
        except ValueError:
            return ["AT_PARAM_ERROR"]
        if not 1 <= len(payload) <= 255 or len(arg) != 2 * len(payload):
            return ["AT_PARAM_ERROR"]
        if self._busy():
            return ["AT_BUSY_ERROR"]
        params = self.params()
        try:
            tx = self.radio.transmit(payload, params, power_dbm=self.p2p[5])
        except RadioBusy:
            return ["AT_BUSY_ERROR"]
        self._tx_end_ms = tx.end_ms
        self.transmissions.append((tx.start_ms, payload, params))
        self.clock.call_at(tx.end_ms, lambda: self._line("+EVT:TXP2P DONE"))
        return ["OK"]

    # --- the air -----------------------------------------------------------------------------------

    def _on_delivery(self, delivery: Delivery) -> None:
        if not delivery.ok or not self.rx_mode or not self._cable.plugged or self.hung:
            return
        self.counters["received"] += 1
        self._line(f"+EVT:RXP2P:{round(delivery.rssi_dbm)}:{round(delivery.snr_db)}:"
                   + delivery.tx.payload.hex().upper())
        if self.rx_mode == PRECV_ONE_PACKET:
            self._stop_rx()
