# Simulated HAL: pins, ADC, I2C, UART, RTC (time + memory), deep sleep, WDT and flash, all on an injected
# virtual clock. Pure MicroPython subset: the same code runs under CPython (tests, fleet simulator) and under
# real MicroPython (WebAssembly build in CI). Stimuli come from sample providers: callables
# ``provider(hal, t_ms) -> int`` (an ADC voltage in uV, a pin level, an acceleration vector ...); physics
# models for them live in sim_devices. Chips that talk a protocol (LIS3DH, A02YYUW, SDM120, RAK3172) are
# modelled in sim_chips.py from their datasheets and attached to a bus here.

from lifeline.firmware import hal as _hal

RTC_MEMORY_MAX = 2048


class PowerCut(BaseException):
    """Power was lost in the middle of a flash operation (raised by SimFlash when armed)."""


class DeepSleep(BaseException):
    """machine.deepsleep() was called: the chip resets when it wakes. ``ms`` is the timer."""

    def __init__(self, ms, wake_pins):
        BaseException.__init__(self, ms)
        self.ms = ms
        self.wake_pins = wake_pins


class Reset(BaseException):
    """machine.reset() or a watchdog reset."""

    def __init__(self, cause):
        BaseException.__init__(self, cause)
        self.cause = cause


class SimClock:
    """Virtual time in milliseconds. Shared by every device of one simulation."""

    def __init__(self, ms=0):
        self.ms = ms

    def advance(self, ms):
        if ms > 0:
            self.ms += ms


class _Reader:
    def __init__(self, data):
        self._data = data
        self._pos = 0

    def read(self, n=-1):
        if n is None or n < 0:
            n = len(self._data) - self._pos
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Writer:
    def __init__(self, flash, path):
        self._flash = flash
        self._path = path
        self._buf = bytearray()
        self._closed = False

    def write(self, data):
        self._flash._op(self._path, bytes(self._buf) + bytes(data))
        self._buf.extend(data)
        return len(data)

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._flash._op(self._path, bytes(self._buf))
        self._flash.files[self._path] = bytes(self._buf)
        self._flash.writes += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SimFlash:
    """LittleFS-like flash: a file written is committed on close; rename is atomic and replaces.

    ``arm_cut(n)`` makes the n-th following operation (write, close, rename, remove) lose power: the file
    being written is left holding a prefix of its new content (the worst a real filesystem may leave),
    then PowerCut is raised.
    """

    def __init__(self, seed=1):
        self.files = {}
        self.dirs = {"/": True}
        self.ops = 0
        self.writes = 0
        self._cut_at = -1
        self._seed = seed or 1

    def arm_cut(self, n_ops):
        self._cut_at = self.ops + n_ops

    def disarm(self):
        self._cut_at = -1

    def _rand(self, n):
        x = self._seed
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._seed = x & 0xFFFFFFFF
        return self._seed % (n + 1) if n > 0 else 0

    def _op(self, path, new_content):
        self.ops += 1
        if self.ops == self._cut_at:
            self._cut_at = -1
            if path is not None and new_content is not None:
                self.files[path] = new_content[:self._rand(len(new_content))]
            raise PowerCut("power cut at flash op %d" % self.ops)

    def open(self, path, mode="rb"):
        if "w" in mode:
            self._op(path, b"")
            self.files[path] = b""
            return _Writer(self, path)
        if path not in self.files:
            raise OSError(2, "ENOENT")
        return _Reader(self.files[path])

    def rename(self, a, b):
        if a not in self.files:
            raise OSError(2, "ENOENT")
        self._op(None, None)
        self.files[b] = self.files.pop(a)

    def remove(self, path):
        if path not in self.files:
            raise OSError(2, "ENOENT")
        self._op(None, None)
        del self.files[path]

    def exists(self, path):
        return path in self.files or path in self.dirs

    def mkdir(self, path):
        self.dirs[path] = True

    def listdir(self, path):
        pre = path.rstrip("/") + "/"
        names = []
        for p in list(self.files) + list(self.dirs):
            if p.startswith(pre) and p != pre:
                name = p[len(pre):].split("/")[0]
                if name and name not in names:
                    names.append(name)
        return names


class SimPin:
    def __init__(self, hal, name, provider):
        self._hal = hal
        self.name = name
        self._provider = provider
        self.v = 0
        self.log = None  # list of (t_ms, v) when recording outputs (buzzer, LED)

    def value(self, v=None):
        if v is None:
            if self._provider is not None:
                return self._provider(self._hal, self._hal.clock.ms)
            return self.v
        v = 1 if v else 0
        if v != self.v and self.log is not None:
            self.log.append((self._hal.clock.ms, v))
        self.v = v
        return None


class SimAdc:
    def __init__(self, hal, name, provider):
        self._hal = hal
        self.name = name
        self._provider = provider

    def read_uv(self):
        if self._provider is None:
            return 0
        v = int(self._provider(self._hal, self._hal.clock.ms))
        if v < 0:
            v = 0
        if v > 3300000:  # ADC full scale with 11 dB attenuation, clipped like the real converter
            v = 3300000
        return v


class SimI2C:
    """I2C bus with chip models keyed by 7-bit address (see sim_chips)."""

    def __init__(self, hal, devices):
        self._hal = hal
        self.devices = devices

    def _dev(self, addr):
        d = self.devices.get(addr)
        if d is None:
            raise OSError(19, "ENODEV")  # NACK on the address, like machine.I2C
        return d

    def readfrom_mem(self, addr, reg, n):
        return self._dev(addr).read(self._hal, reg, n)

    def writeto_mem(self, addr, reg, buf):
        self._dev(addr).write(self._hal, reg, bytes(buf))


class SimUart:
    """UART connected to a chip model with ``rx(hal, data)`` and ``tx(hal) -> bytes`` (may be empty)."""

    def __init__(self, hal, name, device, baud):
        self._hal = hal
        self.name = name
        self.device = device
        self.baud = baud

    def write(self, data):
        if self.device is not None:
            self.device.rx(self._hal, bytes(data))
        return len(data)

    def read(self):
        if self.device is None:
            return None
        out = self.device.tx(self._hal)
        return out if out else None


class SimPulseInput:
    """Raw reed/hall edges from a provider ``provider(hal, t_from, t_to) -> [(t_ms, channel, level)]``."""

    def __init__(self, hal, name, provider):
        self._hal = hal
        self.name = name
        self._provider = provider
        self._last = hal.clock.ms

    def take(self):
        now = self._hal.clock.ms
        if self._provider is None:
            self._last = now
            return []
        edges = self._provider(self._hal, self._last, now)
        self._last = now
        return edges


class SimBle:
    """Records advertisements; a test plays the technician by calling ``write(handle, data)``."""

    def __init__(self, hal):
        self._hal = hal
        self.adverts = []  # (t_ms, adv bytes, rsp bytes, connectable)
        self.advertising = False
        self.service = None
        self.chars = None
        self._on_write = None
        self.notified = []
        self.results = []

    def advertise(self, adv, rsp, interval_ms, connectable):
        self.adverts.append((self._hal.clock.ms, bytes(adv), bytes(rsp or b""), connectable))
        self.advertising = True

    def stop(self):
        self.advertising = False

    def serve(self, service_uuid, chars, on_write):
        self.service = service_uuid
        self.chars = chars
        self._on_write = on_write
        pending = self._hal.ble_pending
        while pending:  # a central that connects and writes as soon as the service is up
            char, data = pending.pop(0)
            self.results.append(self.write(char, data))

    def notify(self, handle, data):
        self.notified.append((handle, bytes(data)))

    def write(self, handle, data):
        if self._on_write is None:
            raise OSError(107, "not serving")
        return self._on_write(handle, bytes(data))


class SimHal:
    """One simulated node's hardware. Everything that survives a reset lives in ``flash`` (always) and in
    ``rtc_mem``/``rtc_base`` (deep sleep, watchdog and soft resets; lost on power loss)."""

    def __init__(self, clock=None, flash=None, providers=None, i2c_devices=None, uart_devices=None,
                 pulse_providers=None, net=None, battery_mv=3600):
        self.clock = clock if clock is not None else SimClock()
        self.fs = flash if flash is not None else SimFlash()
        self.providers = providers or {}
        self.i2c_devices = i2c_devices or {}
        self.uart_devices = uart_devices or {}
        self.pulse_providers = pulse_providers or {}
        self.net = net  # object with up(cfg) -> bool and connect(host, port, timeout_ms) -> stream
        self.battery = battery_mv
        self.rtc_mem = b""
        self.rtc_base = None  # RTC seconds at clock.ms == _rtc_at (None: lost, counts from 0)
        self._rtc_at = self.clock.ms
        self._us = 0
        self.cause = 0  # power_on
        self.wake = _hal.WAKE_POWER
        self.boot_ms = self.clock.ms
        self._pins = {}
        self._adcs = {}
        self._uarts = {}
        self._pulses = {}
        self._i2c = None
        self._ble = None
        self.wdt_ms = 0
        self._wdt_fed = 0
        self.awake_ms = 0  # accounting for the power model
        self.sleeps = 0
        self.tx_log = []
        self.ble_pending = []  # (characteristic uuid, bytes) written by a central once the node serves

    # ---- time ----
    def ticks_ms(self):
        return self.clock.ms - self.boot_ms

    def ticks_diff(self, a, b):
        return a - b

    def sleep_ms(self, ms):
        self.clock.advance(ms)
        self._check_wdt()

    def sleep_us(self, us):
        self._us += us
        if self._us >= 1000:
            self.sleep_ms(self._us // 1000)
            self._us %= 1000

    def time(self):
        if self.rtc_base is None:
            self.rtc_base = 0
            self._rtc_at = self.clock.ms
        return self.rtc_base + (self.clock.ms - self._rtc_at) // 1000

    def set_time(self, s):
        self.rtc_base = s
        self._rtc_at = self.clock.ms

    # ---- RTC memory, resets, sleep ----
    def rtc_memory(self):
        return self.rtc_mem

    def set_rtc_memory(self, data):
        if len(data) > RTC_MEMORY_MAX:
            raise ValueError("RTC memory holds 2048 bytes")
        self.rtc_mem = bytes(data)

    def reset_cause(self):
        return self.cause

    def wake_reason(self):
        return self.wake

    def deep_sleep(self, ms, wake_pins=()):
        raise DeepSleep(ms, wake_pins)

    def reset(self):
        raise Reset(4)

    def wdt_start(self, ms):
        self.wdt_ms = ms
        self._wdt_fed = self.clock.ms

    def wdt_feed(self):
        self._check_wdt()
        self._wdt_fed = self.clock.ms

    def _check_wdt(self):
        if self.wdt_ms and self.clock.ms - self._wdt_fed > self.wdt_ms:
            raise Reset(2)  # watchdog

    # The harness calls these between wakes (the node's code never does).
    def resume(self, cause, wake, sleep_ms=0):
        """Start the next boot after a reset (cause: schema.RESET_CAUSES index)."""
        self.clock.advance(sleep_ms)
        self.cause = cause
        self.wake = wake
        self.boot_ms = self.clock.ms
        self._wdt_fed = self.clock.ms
        self.wdt_ms = 0
        self._pins = {}
        self._uarts = {}
        self._i2c = None
        self._ble = None

    def power_loss(self, off_ms=0):
        """Battery removed and replaced: RTC memory and RTC time are lost."""
        self.rtc_mem = b""
        self.rtc_base = None
        self.resume(0, _hal.WAKE_POWER, off_ms)

    # ---- peripherals ----
    def pin(self, name, out=False):
        p = self._pins.get(name)
        if p is None:
            p = SimPin(self, name, None if out else self.providers.get(name))
            self._pins[name] = p
        return p

    def adc(self, name):
        a = self._adcs.get(name)
        if a is None:
            a = SimAdc(self, name, self.providers.get(name))
            self._adcs[name] = a
        return a

    def i2c(self):
        if self._i2c is None:
            self._i2c = SimI2C(self, self.i2c_devices)
        return self._i2c

    def uart(self, name, baud):
        u = self._uarts.get(name)
        if u is None:
            u = SimUart(self, name, self.uart_devices.get(name), baud)
            self._uarts[name] = u
        return u

    def pulse_input(self, name):
        p = self._pulses.get(name)
        if p is None:
            p = SimPulseInput(self, name, self.pulse_providers.get(name))
            self._pulses[name] = p
        return p

    def battery_mv(self):
        b = self.battery
        return b(self, self.clock.ms) if callable(b) else b

    def net_up(self, cfg, timeout_ms):
        if self.net is None:
            return False
        return self.net.up(self, cfg, timeout_ms)

    def connect(self, host, port, timeout_ms):
        if self.net is None:
            raise OSError(113, "EHOSTUNREACH")
        return self.net.connect(self, host, port, timeout_ms)

    def ble(self):
        if self._ble is None:
            self._ble = SimBle(self)
        return self._ble
