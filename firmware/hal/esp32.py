# ESP32 HAL (MicroPython 1.27, ESP32-WROOM-32E): the only module that imports machine, esp32, network,
# bluetooth and socket. Pinout in docs/firmware.md; config "pins" may override any entry.
# Ticks do not wrap inside one wake (a wake lasts at most minutes; ticks_ms wraps after 2**30 ms).

import time

import esp32
import machine

from lifeline.firmware import bootsel
from lifeline.firmware import hal as _hal

EPOCH_OFFSET = 631152000  # 2020-01-01 - 2000-01-01 (the ESP32 port's time epoch), seconds

PINS = {
    # logical name: GPIO
    "smoke_adc": 34, "smoke_led": 25, "buzzer": 26, "buzzer_loud": 27, "test_button": 33,
    "accel_int": 35, "i2c_sda": 21, "i2c_scl": 22,
    "ranger_tx": 18, "ranger_rx": 19, "ranger_power": 23,
    "rs485_tx": 18, "rs485_rx": 19, "rs485_de": 4,
    "reed_a": 32, "reed_b": 39, "meter_tamper": 27,
    "modem_tx": 17, "modem_rx": 16,
    "battery_adc": 36,
}
ACTIVE_LOW = ("test_button",)  # button to GND, internal pull-up
UARTS = {"lora": (2, "modem_tx", "modem_rx"), "cell": (2, "modem_tx", "modem_rx"),
         "ranger": (1, "ranger_tx", "ranger_rx"), "rs485": (1, "rs485_tx", "rs485_rx")}
BATTERY_DIVIDER = 2  # 1:1 resistor divider in front of the ADC
RESET_MAP = {machine.PWRON_RESET: 0, machine.HARD_RESET: 1, machine.WDT_RESET: 2,
             machine.DEEPSLEEP_RESET: 3, machine.SOFT_RESET: 4}
EDGE_CAPACITY = 64


class _Pin:
    def __init__(self, pin, invert):
        self._p = pin
        self._inv = invert

    def value(self, v=None):
        if v is None:
            x = self._p.value()
            return 1 - x if self._inv else x
        self._p.value(v)
        return None


class _Adc:
    def __init__(self, gpio):
        self._a = machine.ADC(machine.Pin(gpio), atten=machine.ADC.ATTN_11DB)

    def read_uv(self):
        return self._a.read_uv()


class _PulseInput:
    """Edges captured by pin IRQs into a bounded list (channels: 0 reed A, 1 reed B, 2 tamper)."""

    def __init__(self, gpios):
        self._edges = []
        self.overflow = 0
        for ch in range(len(gpios)):
            p = machine.Pin(gpios[ch], machine.Pin.IN)
            p.irq(self._handler(ch, p), machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)

    def _handler(self, ch, pin):
        def irq(_):
            if len(self._edges) < EDGE_CAPACITY:
                self._edges.append((time.ticks_ms(), ch, pin.value()))
            else:
                self.overflow += 1
        return irq

    def take(self):
        e = self._edges
        self._edges = []
        return e


class _Stream:
    def __init__(self, sock):
        self._s = sock

    def write(self, data):
        self._s.write(data)

    def recv(self, n, timeout_ms):
        self._s.settimeout(timeout_ms / 1000)
        try:
            data = self._s.recv(n)
        except OSError as e:
            if e.args and e.args[0] in (110, 116, 11):  # ETIMEDOUT, ETIMEDOUT (lwIP), EAGAIN
                return b""
            raise
        if not data:
            raise OSError(104, "ECONNRESET")
        return data

    def close(self):
        self._s.close()


class _Ble:
    def __init__(self):
        import bluetooth

        self._bt = bluetooth
        self._b = bluetooth.BLE()
        self._b.active(True)
        self._handles = {}
        self._on_write = None

    def advertise(self, adv, rsp, interval_ms, connectable):
        self._b.gap_advertise(interval_ms * 1000, adv_data=adv, resp_data=rsp or None, connectable=connectable)

    def stop(self):
        self._b.gap_advertise(None)

    def serve(self, service_uuid, chars, on_write):
        bt = self._bt
        flags = (bt.FLAG_READ, bt.FLAG_READ, bt.FLAG_WRITE, bt.FLAG_NOTIFY)
        svc = (bt.UUID(service_uuid), tuple((bt.UUID(c), flags[i]) for i, c in enumerate(chars)))
        ((h_info, h_chal, h_cmd, h_status),) = self._b.gatts_register_services((svc,))
        self._handles = {h_info: chars[0], h_chal: chars[1], h_cmd: chars[2], h_status: chars[3]}
        self._by_uuid = {v: k for k, v in self._handles.items()}
        self._on_write = on_write
        self._conn = None
        self._b.irq(self._irq)
        self.advertise(b"\x02\x01\x06", b"", 200, True)

    def set_value(self, char, data):
        self._b.gatts_write(self._by_uuid[char], data)

    def _irq(self, event, data):
        if event == 1:  # _IRQ_CENTRAL_CONNECT
            self._conn = data[0]
        elif event == 3:  # _IRQ_GATTS_WRITE
            _conn, handle = data
            char = self._handles.get(handle)
            if char is not None and self._on_write is not None:
                self._on_write(char, self._b.gatts_read(handle))

    def notify(self, char, data):
        if self._conn is not None:
            self._b.gatts_notify(self._conn, self._by_uuid[char], data)


class Esp32Hal:
    def __init__(self, pins=None):
        self.pins = dict(PINS)
        if pins:
            self.pins.update(pins)
        self.fs = bootsel.OsFs(__import__("os"))
        self._rtc = machine.RTC()
        self._wdt = None
        self._i2c = None
        self._uarts = {}
        self._pulse = None
        self._ble = None
        self._ppp = None

    # time
    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def sleep_us(self, us):
        time.sleep_us(us)

    def time(self):
        t = time.time()
        return t - EPOCH_OFFSET if t >= EPOCH_OFFSET else t

    def set_time(self, s):
        tm = time.gmtime(s + EPOCH_OFFSET)
        self._rtc.datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))

    # RTC memory, resets, sleep
    def rtc_memory(self):
        return self._rtc.memory()

    def set_rtc_memory(self, data):
        self._rtc.memory(data)

    def reset_cause(self):
        return RESET_MAP.get(machine.reset_cause(), 7)

    def wake_reason(self):
        r = machine.wake_reason()
        if r == machine.TIMER_WAKE:
            return _hal.WAKE_TIMER
        if r in (machine.EXT0_WAKE, machine.EXT1_WAKE):
            if self.pin("accel_int").value():
                return _hal.WAKE_MOTION
            return _hal.WAKE_ALARM
        if self.reset_cause() == 3:
            return _hal.WAKE_TIMER
        return _hal.WAKE_POWER

    def deep_sleep(self, ms, wake_pins=()):
        # ext1 wakes on any of several RTC GPIOs going high; an active-low input (the test button) uses
        # ext0, which takes one pin and either level
        high = [machine.Pin(self.pins[n], machine.Pin.IN) for n in wake_pins
                if n in self.pins and n not in ACTIVE_LOW]
        low = [n for n in wake_pins if n in ACTIVE_LOW and n in self.pins]
        if high:
            esp32.wake_on_ext1(pins=high, level=esp32.WAKEUP_ANY_HIGH)
        if low:
            esp32.wake_on_ext0(pin=machine.Pin(self.pins[low[0]], machine.Pin.IN, machine.Pin.PULL_UP),
                               level=esp32.WAKEUP_ALL_LOW)
        machine.deepsleep(ms)

    def reset(self):
        machine.reset()

    def wdt_start(self, ms):
        if self._wdt is None:
            self._wdt = machine.WDT(timeout=ms)

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    # peripherals
    def pin(self, name, out=False):
        g = self.pins[name]
        if out:
            return _Pin(machine.Pin(g, machine.Pin.OUT, value=0), False)
        inv = name in ACTIVE_LOW
        return _Pin(machine.Pin(g, machine.Pin.IN, machine.Pin.PULL_UP if inv else None), inv)

    def adc(self, name):
        return _Adc(self.pins[name])

    def i2c(self):
        if self._i2c is None:
            self._i2c = machine.I2C(0, scl=machine.Pin(self.pins["i2c_scl"]), sda=machine.Pin(self.pins["i2c_sda"]),
                                    freq=400000)
        return self._i2c

    def uart(self, name, baud):
        u = self._uarts.get(name)
        if u is None:
            uid, tx, rx = UARTS[name]
            u = machine.UART(uid, baudrate=baud, tx=self.pins[tx], rx=self.pins[rx], timeout=0, rxbuf=512)
            self._uarts[name] = u
        return u

    def pulse_input(self, name):
        if self._pulse is None:
            self._pulse = _PulseInput((self.pins["reed_a"], self.pins["reed_b"], self.pins["meter_tamper"]))
        return self._pulse

    def battery_mv(self):
        return _Adc(self.pins["battery_adc"]).read_uv() * BATTERY_DIVIDER // 1000

    # cellular data link (PPP over the modem UART) and sockets
    def net_up(self, cfg, timeout_ms):
        import network

        u = self.uart("cell", 115200)
        apn = cfg.get("apn", "")
        for cmd in (b"AT\r\n", b'AT+CGDCONT=1,"IP","' + apn.encode() + b'"\r\n', b"ATD*99#\r\n"):
            u.write(cmd)
            time.sleep_ms(300)
        u.read()
        self._ppp = network.PPP(u)
        self._ppp.active(True)
        self._ppp.connect()
        t0 = time.ticks_ms()
        while not self._ppp.isconnected():
            if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
                return False
            time.sleep_ms(100)
        return True

    def connect(self, host, port, timeout_ms):
        import socket

        addr = socket.getaddrinfo(host, port)[0][-1]
        s = socket.socket()
        s.settimeout(timeout_ms / 1000)
        try:
            s.connect(addr)
        except OSError:
            s.close()
            raise
        return _Stream(s)

    def ble(self):
        if self._ble is None:
            self._ble = _Ble()
        return self._ble
