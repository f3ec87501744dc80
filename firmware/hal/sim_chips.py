# Chip models for the simulated HAL, each written from its datasheet / manual, driven by sample providers
# (physics lives in sim_devices). MicroPython subset, so CI runs them under real MicroPython too.
#   Lis3dh      I2C register file: WHO_AM_I, CTRL_REG1..6, OUT_X_L.. auto-increment, INT1_SRC latch
#   A02yyuw     UART ranger streaming 0xFF|H|L|SUM frames every 100 ms
#   Sdm120      Modbus RTU slave answering function 0x04 from a register provider
#   Rak3172     RUI3 AT modem in P2P mode; transmissions go to an ``air`` object
# ``air.uplink(hal, payload, params) -> downlink bytes or None`` (params: freq, sf, bw, cr, preamble, power).


def _u16le(v):
    v &= 0xFFFF
    return bytes((v & 0xFF, v >> 8))


class Lis3dh:
    """Acceleration from ``provider(hal, t_ms) -> (x, y, z)`` in mg; 12-bit HR data, 1 mg/digit."""

    def __init__(self, provider, who_am_i=0x33):
        self.provider = provider
        self.regs = bytearray(0x40)
        self.regs[0x0F] = who_am_i
        self.int1_src = 0
        self.reads = 0

    def read(self, hal, reg, n):
        auto = reg & 0x80
        reg &= 0x7F
        out = bytearray()
        for i in range(n):
            r = reg + i if auto else reg
            if r == 0x28:
                x, y, z = self.provider(hal, hal.clock.ms)
                self._sample = _u16le(x << 4) + _u16le(y << 4) + _u16le(z << 4)
                self.reads += 1
            if 0x28 <= r <= 0x2D:
                out.append(self._sample[r - 0x28] if hasattr(self, "_sample") else 0)
            elif r == 0x31:
                out.append(self.int1_src)
                self.int1_src = 0  # read clears the latch (LIR_INT1)
            else:
                out.append(self.regs[r] if r < len(self.regs) else 0)
        return bytes(out)

    def write(self, hal, reg, data):
        reg &= 0x7F
        for i in range(len(data)):
            if reg + i < len(self.regs) and reg + i != 0x0F:
                self.regs[reg + i] = data[i]

    def trigger_motion(self):
        self.int1_src = 0x40 | 0x2A


class A02yyuw:
    """Distance from ``provider(hal, t_ms) -> mm`` (None: no echo, nothing sent); frames every 100 ms
    while powered (the node switches the ranger's supply with the "ranger_power" pin); the UART keeps at
    most RX_FRAMES unread frames (the ESP32 driver's RX ring buffer)."""

    RX_FRAMES = 64

    def __init__(self, provider, period_ms=100, power_pin="ranger_power"):
        self.provider = provider
        self.period_ms = period_ms
        self.power_pin = power_pin
        self._last = None
        self.corrupt = None  # optional callable(frame bytes) -> bytes (line noise)

    def rx(self, hal, data):
        pass

    def tx(self, hal):
        now = hal.clock.ms
        if self.power_pin and not hal.pin(self.power_pin, True).v:
            self._last = None
            return b""
        if self._last is None:
            self._last = now  # first frame one period after power-up
        if now - self._last > self.RX_FRAMES * self.period_ms:
            self._last = now - self.RX_FRAMES * self.period_ms
        out = b""
        while now - self._last >= self.period_ms:
            self._last += self.period_ms
            d = self.provider(hal, self._last)
            if d is None:
                continue
            d = max(0, min(int(d), 0xFFFF))
            f = bytes((0xFF, d >> 8, d & 0xFF, (0xFF + (d >> 8) + (d & 0xFF)) & 0xFF))
            if self.corrupt is not None:
                f = self.corrupt(f)
            out += f
        return out


def _crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


class Sdm120:
    """Modbus RTU slave; ``registers(hal, t_ms) -> {register: 16-bit value}``."""

    def __init__(self, registers, addr=1):
        self.registers = registers
        self.addr = addr
        self._out = b""
        self.requests = 0

    def rx(self, hal, data):
        if len(data) != 8 or _crc16(data[:6]) != int.from_bytes(data[6:], "little") or data[0] != self.addr:
            return  # a slave stays silent on a bad request
        self.requests += 1
        start = int.from_bytes(data[2:4], "big")
        count = int.from_bytes(data[4:6], "big")
        if data[1] != 0x04:
            pdu = bytes((self.addr, data[1] | 0x80, 1))
        else:
            regs = self.registers(hal, hal.clock.ms)
            body = b"".join(regs.get(start + i, 0).to_bytes(2, "big") for i in range(count))
            pdu = bytes((self.addr, 0x04, 2 * count)) + body
        self._out = pdu + _crc16(pdu).to_bytes(2, "little")

    def tx(self, hal):
        out = self._out
        self._out = b""
        return out


class Rak3172:
    """RAK3172 with RUI3 firmware in LoRa P2P mode (the subset of the AT manual the node uses)."""

    def __init__(self, air, airtime_ms=None):
        self.air = air
        self.nwm = 1  # factory default: LoRaWAN
        self.params = None
        self._in = b""
        self._out = []  # (t_ms, bytes)
        self._pending_down = None
        self.airtime_ms = airtime_ms  # callable(n, params) -> ms
        self.sent = []
        self.restarts = 0
        self.dev_id = None

    def _emit(self, t, line):
        self._out.append((t, line.encode() + b"\r\n"))

    def rx(self, hal, data):
        self._in += data
        while b"\r\n" in self._in:
            i = self._in.find(b"\r\n")
            line = self._in[:i].decode()
            self._in = self._in[i + 2:]
            self._command(hal, line)

    def _command(self, hal, line):
        now = hal.clock.ms
        if line == "AT":
            self._emit(now, "OK")
        elif line == "AT+NWM=?":
            self._emit(now, "AT+NWM=%d" % self.nwm)
            self._emit(now, "OK")
        elif line.startswith("AT+NWM="):
            v = line[7:]
            if v not in ("0", "1"):
                self._emit(now, "AT_PARAM_ERROR")
                return
            self._emit(now, "OK")
            if int(v) != self.nwm:
                self.nwm = int(v)
                self.restarts += 1
                self._emit(now + 200, "LoRa P2P" if self.nwm == 0 else "LoRaWAN")  # restart banner
        elif line.startswith("AT+P2P="):
            parts = line[7:].split(":")
            try:
                vals = [int(p) for p in parts]
            except ValueError:
                vals = []
            if len(vals) != 6 or self.nwm != 0 or vals[2] not in (125, 250, 500) or not 5 <= vals[1] <= 12:
                self._emit(now, "AT_PARAM_ERROR")
                return
            self.params = {"freq": vals[0], "sf": vals[1], "bw": vals[2], "cr": vals[3], "preamble": vals[4],
                           "power": vals[5]}
            self._emit(now, "OK")
        elif line.startswith("AT+PSEND="):
            try:
                payload = bytes.fromhex(line[9:])
            except ValueError:
                self._emit(now, "AT_PARAM_ERROR")
                return
            if self.params is None or self.nwm != 0 or not payload:
                self._emit(now, "AT_ERROR")
                return
            self._emit(now, "OK")
            toa = self.airtime_ms(len(payload), self.params) if self.airtime_ms else 100
            self.sent.append(payload)
            hal.tx_log.append((now, len(payload), toa))
            self._emit(now + toa, "+EVT:TXP2P DONE")
            self._pending_down = self.air.uplink(hal, payload, self.params) if self.air else None
        elif line.startswith("AT+PRECV="):
            try:
                ms = int(line[9:])
            except ValueError:
                self._emit(now, "AT_PARAM_ERROR")
                return
            self._emit(now, "OK")
            if ms == 0:
                return
            down = self._pending_down
            self._pending_down = None
            if down is None and self.air is not None and self.dev_id is not None:
                down = self.air.poll(hal, self.dev_id)  # a gateway that knows the node is listening
            if down is not None:
                rssi, snr, payload = down if isinstance(down, tuple) else (-90, 7, down)
                self._emit(now + 50, "+EVT:RXP2P:%d:%d:%s" % (rssi, snr, payload.hex()))
            else:
                self._emit(now + ms, "+EVT:RXP2P RECEIVE TIMEOUT")
        else:
            self._emit(now, "AT_COMMAND_NOT_FOUND")

    def tx(self, hal):
        now = hal.clock.ms
        out = b""
        keep = []
        for t, b in self._out:
            if t <= now:
                out += b
            else:
                keep.append((t, b))
        self._out = keep
        return out
