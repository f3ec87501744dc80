# LoRa P2P through a RAKwireless RAK3172 (STM32WLE5) running RUI3 firmware, driven over UART with AT
# commands, byte-exact with the "RUI3 AT Command Manual" (RAKwireless documentation, section "P2P
# Instructions"; see docs/firmware.md for the command table):
#   AT                                   -> OK
#   AT+NWM=0                             -> OK (0 = LoRa P2P; the module restarts when the mode changes)
#   AT+P2P=<freq>:<sf>:<bw>:<cr>:<preamble>:<power>   -> OK   (bw in kHz 125/250/500, cr 0..3 = 4/5..4/8)
#   AT+PSEND=<hex payload>               -> OK, then +EVT:TXP2P DONE when the packet has left
#   AT+PRECV=<ms>                        -> OK, then +EVT:RXP2P:<rssi>:<snr>:<hex payload>
#                                           or +EVT:RXP2P RECEIVE TIMEOUT (0 stops listening)
# RUI3 v4 forms (bandwidth in kHz, one +EVT:RXP2P line per packet), as docs/radios.md section 1 fixes for
# the gateway side; the receive window follows the link contract of docs/radios.md section 3.1.
# Errors: AT_ERROR, AT_PARAM_ERROR, AT_BUSY_ERROR, AT_TEST_PARAM_OVERFLOW, AT_NO_NETWORK_JOINED,
# AT_RX_ERROR. Every wait has a deadline; the link never raises on modem trouble.

from lifeline.firmware.radios import airtime

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


OK = "OK"
EVT_TX_DONE = "+EVT:TXP2P DONE"
EVT_RX = "+EVT:RXP2P:"
EVT_RX_TIMEOUT = "+EVT:RXP2P RECEIVE TIMEOUT"
ERRORS = ("AT_ERROR", "AT_PARAM_ERROR", "AT_BUSY_ERROR", "AT_TEST_PARAM_OVERFLOW", "AT_NO_NETWORK_JOINED",
          "AT_RX_ERROR", "AT_COMMAND_NOT_FOUND")
CMD_TIMEOUT_MS = 1000
RESTART_MS = 3000
_POLL_MS = 20  # the UART driver buffers (rxbuf 512), so polling slower only adds latency


def p2p_command(freq, sf, bw, cr, preamble, power):
    return "AT+P2P=%d:%d:%d:%d:%d:%d" % (freq, sf, bw, cr, preamble, power)


def parse_rx(line):
    """(payload bytes, rssi, snr) from '+EVT:RXP2P:<rssi>:<snr>:<hex>', or None if malformed."""
    if not line.startswith(EVT_RX):
        return None
    parts = line[len(EVT_RX):].split(":")
    if len(parts) != 3:
        return None
    try:
        rssi = int(parts[0])
        snr = int(parts[1])
        payload = bytes.fromhex(parts[2])
    except ValueError:
        return None
    return payload, rssi, snr


class Rak3172:
    """AT driver. ``uart`` is a HAL UART (write / non-blocking read), ``hal`` gives ticks and sleep."""

    def __init__(self, hal, uart):
        self._hal = hal
        self._uart = uart
        self._rx = bytearray()
        self.errors = 0
        self.last_error = ""

    # ---- line I/O ----
    def _readline(self, deadline):
        """Next non-empty line (str) or None at the deadline."""
        hal = self._hal
        while True:
            i = self._rx.find(b"\r\n")
            if i >= 0:
                line = bytes(self._rx[:i])
                self._rx = self._rx[i + 2:]
                if line:
                    try:
                        return line.decode()
                    except UnicodeError:
                        continue
                continue
            if len(self._rx) > 1024:  # no line end in a kilobyte: garbage, start over
                self._rx = bytearray()
            data = self._uart.read()
            if data:
                self._rx.extend(data)
                continue
            if hal.ticks_diff(deadline, hal.ticks_ms()) <= 0:
                return None
            hal.sleep_ms(_POLL_MS)

    def command(self, cmd, timeout_ms=CMD_TIMEOUT_MS):
        """Send one command; (ok, lines before OK / the error). Unsolicited lines are kept in ``lines``."""
        self._uart.write(cmd.encode() + b"\r\n")
        deadline = self._hal.ticks_ms() + timeout_ms
        lines = []
        while True:
            line = self._readline(deadline)
            if line is None:
                self._fail(cmd.split("=")[0] + ": timeout")
                return False, lines
            if line == OK:
                return True, lines
            if line in ERRORS:
                self._fail(cmd.split("=")[0] + ": " + line)
                return False, lines
            lines.append(line)

    def wait_event(self, prefixes, timeout_ms):
        deadline = self._hal.ticks_ms() + timeout_ms
        while True:
            line = self._readline(deadline)
            if line is None:
                return None
            for p in prefixes:
                if line.startswith(p):
                    return line

    def _fail(self, why):
        self.errors += 1
        self.last_error = why

    # ---- operations ----
    def setup(self, freq, sf, bw, cr, preamble, power):
        """AT (up to 3 tries: the first may only wake the UART), AT+NWM=0 (the module restarts when the
        mode changes: AT until it answers), AT+PRECV=0 (parameter changes are refused while receiving),
        AT+P2P=... -- the order docs/radios.md section 1.2 gives."""
        ok = False
        for _ in range(3):
            ok, _lines = self.command("AT", 300)
            if ok:
                break
        if not ok:
            return False
        ok, _ = self.command("AT+NWM=0")
        if not ok:
            return False
        deadline = self._hal.ticks_ms() + RESTART_MS
        ok = False
        while not ok and self._hal.ticks_diff(deadline, self._hal.ticks_ms()) > 0:
            ok, _ = self.command("AT", 300)
        if not ok:
            return False
        ok, _ = self.command("AT+PRECV=0")
        if not ok:
            return False
        ok, _ = self.command(p2p_command(freq, sf, bw, cr, preamble, power))
        return ok

    def send(self, payload, tx_timeout_ms):
        ok, _ = self.command("AT+PSEND=" + payload.hex())
        if not ok:
            return False
        if self.wait_event((EVT_TX_DONE,), tx_timeout_ms) is None:
            self._fail("PSEND: no TXP2P DONE")
            return False
        return True

    def receive(self, window_ms):
        """One receive window: (payload, rssi, snr) or None."""
        ok, _ = self.command("AT+PRECV=%d" % window_ms)
        if not ok:
            return None
        line = self.wait_event((EVT_RX,), window_ms + 500)
        if line is None or line == EVT_RX_TIMEOUT or line.startswith(EVT_RX_TIMEOUT):
            return None
        got = parse_rx(line)
        if got is None:
            self._fail("PRECV: malformed RXP2P event")
        return got

    def stop_receive(self):
        self.command("AT+PRECV=0")


_ACK_LEN = const(40)  # the largest ACK downlink (protocols: ack kind at its longest)
_GW_RX_DELAY_MS = const(1050)  # the gateway transmits this long after the uplink ends (docs/radios.md 3.1)
_PAUSE_MARGIN_MS = const(100)


class LoraLink:
    """The node's LoRa P2P link: setup once per wake, duty-cycle checked TX, then a receive window."""

    def __init__(self, hal, cfg, dc_state):
        from lifeline.firmware import config as _config

        region = _config.REGIONS.get(cfg.region, _config.REGIONS["EU868"])
        lo = cfg.lora
        self.freq = lo.get("freq", region[0])
        self.sf = lo.get("sf", 9)
        self.bw = lo.get("bw", 125)
        self.cr = lo.get("cr", 0)
        self.preamble = lo.get("preamble", 8)
        self.power = min(lo.get("power", region[2]), 22)
        self.rx_ms = lo.get("rx_ms", 1500)  # docs/radios.md 3.1: listen at least +1000..+1500 ms
        self.max_dwell_ms = region[3]
        self._hal = hal
        self.modem = Rak3172(hal, hal.uart("lora", 115200))
        self.duty = airtime.DutyCycle(dc_state, region[1])
        # the gateway answers on the same channel under its own duty cycle (per mille): EU868 869.525 MHz 10 %;
        # CN470 has none in law but the gateway applies 1 % by default (docs/radios.md)
        self.gw_duty = lo.get("gw_duty_permille", region[1] or 10)
        self.rssi = None
        self.snr_x10 = None
        self.errors = 0
        self.denied = 0
        self._up = False

    def open(self):
        self._up = self.modem.setup(self.freq, self.sf, self.bw, self.cr, self.preamble, self.power)
        if not self._up:
            self.errors += 1
        return self._up

    def airtime_ms(self, n):
        return airtime.time_on_air_ms(n, self.sf, self.bw, self.cr + 1, self.preamble)

    def ack_pause_ms(self, since_ack_ms, frame_len):
        """Wait before the next frame that asks for an ACK, so that the gateway's duty cycle lets it answer
        in that frame's receive window: after an ACK of ``ack`` ms it must stay silent ack*(1000/duty - 1)
        ms, and its next answer starts about RX delay + the frame's time on air after the frame starts."""
        if not self.gw_duty:
            return 0
        ack = int(self.airtime_ms(_ACK_LEN))
        silent = ack * 1000 // self.gw_duty - ack
        wait = silent - since_ack_ms - int(self.airtime_ms(frame_len)) - _GW_RX_DELAY_MS + _PAUSE_MARGIN_MS
        return wait if wait > 0 else 0

    def send(self, frame, listen):
        if not self._up:
            return False, []
        now = self._hal.time()
        toa = self.airtime_ms(len(frame))
        if (self.max_dwell_ms and toa > self.max_dwell_ms) or not self.duty.allowed(now, toa):
            self.denied += 1
            return False, []
        ok = self.modem.send(frame, toa + 2000)
        self.duty.record(now, toa)
        if not ok:
            self.errors += 1
            return False, []
        downs = []
        if listen and self.rx_ms:
            got = self.modem.receive(self.rx_ms)
            if got is not None:
                payload, rssi, snr = got
                self.rssi = rssi
                self.snr_x10 = snr * 10
                downs.append(payload)
        return True, downs

    def listen(self, window_ms):
        got = self.modem.receive(window_ms) if self._up else None
        if got is None:
            return []
        self.rssi = got[1]
        self.snr_x10 = got[2] * 10
        return [got[0]]

    def close(self):
        self._up = False
