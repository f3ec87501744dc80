# Modbus RTU master (Modbus over Serial Line V1.02 and Application Protocol V1.1b3): function 0x04 Read
# Input Registers over an RS-485 transceiver (DE/RE pin driven around each request). CRC-16/MODBUS
# (poly 0xA001 reflected, init 0xFFFF, low byte first). Every response is checked for address, function,
# length and CRC; exceptions (function | 0x80) and time-outs come back as ModbusError(reason).

READ_INPUT = 0x04


class ModbusError(Exception):
    def __init__(self, reason, detail=""):
        Exception.__init__(self, reason + (": " + detail if detail else ""))
        self.reason = reason


def crc16(data):
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def with_crc(pdu):
    return pdu + crc16(pdu).to_bytes(2, "little")


def read_input_request(addr, start, count):
    return with_crc(bytes((addr, READ_INPUT)) + start.to_bytes(2, "big") + count.to_bytes(2, "big"))


def parse_read_input(addr, count, data):
    """Register values (list of 16-bit ints) from a complete response, or ModbusError."""
    if len(data) < 5:
        raise ModbusError("truncated")
    if crc16(data[:-2]) != int.from_bytes(data[-2:], "little"):
        raise ModbusError("bad_crc")
    if data[0] != addr:
        raise ModbusError("bad_address")
    if data[1] == READ_INPUT | 0x80:
        raise ModbusError("exception", "code %d" % data[2])
    if data[1] != READ_INPUT:
        raise ModbusError("bad_function")
    if data[2] != 2 * count or len(data) != 5 + 2 * count:
        raise ModbusError("bad_length")
    return [int.from_bytes(data[3 + 2 * i:5 + 2 * i], "big") for i in range(count)]


class ModbusRtu:
    def __init__(self, hal, uart, de_pin=None):
        self._hal = hal
        self._uart = uart
        self._de = de_pin
        self.errors = 0

    def read_input(self, addr, start, count, timeout_ms=500):
        hal = self._hal
        while self._uart.read():  # drop stale bytes
            pass
        if self._de is not None:
            self._de.value(1)
        self._uart.write(read_input_request(addr, start, count))
        if self._de is not None:
            self._de.value(0)
        want = 5 + 2 * count
        buf = b""
        t0 = hal.ticks_ms()
        while len(buf) < want:
            data = self._uart.read()
            if data:
                buf += data
                if len(buf) >= 5 and buf[1] == READ_INPUT | 0x80:
                    want = 5
                continue
            if hal.ticks_ms() - t0 >= timeout_ms:
                self.errors += 1
                raise ModbusError("timeout", "%d of %d bytes" % (len(buf), want))
            hal.sleep_ms(5)
        try:
            return parse_read_input(addr, count, buf[:want])
        except ModbusError:
            self.errors += 1
            raise
