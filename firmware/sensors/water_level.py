# Flood water level from a downward-looking ultrasonic ranger mounted `mount_mm` above the channel bottom:
# level = mount_mm - distance. A burst of readings is median-filtered; the rate of rise (mm/h) comes from
# the previous level kept in RTC memory. Reporting speeds up while the water rises or stands high.
#
# Sensor faults: no valid frames (no echo / wiring), distance inside the blind zone (blocked: debris,
# spider web, ice), out of range, and "stuck": real echoes jitter by a few mm, so bursts with zero spread
# on several consecutive wakes mean the sensor is reporting a frozen value; such bursts never count towards
# a flood alarm, and a faulty sensor never raises one.

from lifeline.firmware.sensors import a02yyuw

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


FAULT_OK = const(0)
FAULT_BLOCKED = const(1)
FAULT_NO_ECHO = const(2)
FAULT_RANGE = const(3)

CAUSE_FLOOD = const(3)
FAULT_SENSOR = const(1)

_BURST = 9
_READ_MS = 1500  # the sensor streams ~10 frames/s
_STUCK_WAKES = 6
_FAST_S = 60
_RISE_FAST = 50  # mm/h


def median(values):
    s = sorted(values)
    return s[len(s) // 2]


class WaterLevelSensor:
    KIND = 3

    def __init__(self, hal, cfg, st):
        self._hal = hal
        self._st = st
        s = cfg.sensor
        self.mount_mm = s.get("mount_mm", 3000)
        self.blind_mm = s.get("blind_mm", 250)
        self.high = cfg.threshold_high
        self.low = cfg.threshold_low
        self.confirm = cfg.confirm
        self.interval = cfg.interval
        self._uart = hal.uart("ranger", 9600)
        self._pwr = hal.pin("ranger_power", True)
        self.parser = a02yyuw.FrameParser()
        if "lvl" not in st:
            st["lvl"] = -1
            st["t"] = -1
            st["rate"] = 0
            st["fault"] = FAULT_OK
            st["stuck"] = 0
            st["alarm"] = 0
            st["n"] = 0

    def burst(self):
        """Valid distances (mm) from one powered burst."""
        self._pwr.value(1)
        got = []
        t0 = self._hal.ticks_ms()
        while len(got) < _BURST and self._hal.ticks_ms() - t0 < _READ_MS:
            data = self._uart.read()
            if data:
                for d in self.parser.feed(data):
                    got.append(d)
            else:
                self._hal.sleep_ms(20)
        self._pwr.value(0)
        return got

    def sample(self, now, motion=False):
        st = self._st
        ev = []
        got = self.burst()
        fault = FAULT_OK
        spread = 0
        if not got:
            fault = FAULT_NO_ECHO
        else:
            d = median(got)
            if d < self.blind_mm:
                fault = FAULT_BLOCKED
            elif d < a02yyuw.MIN_MM or d > a02yyuw.MAX_MM or d > self.mount_mm + 200:
                fault = FAULT_RANGE
            spread = max(got) - min(got)
            if fault == FAULT_OK:
                st["stuck"] = st["stuck"] + 1 if spread == 0 and len(got) >= 5 else 0
                if st["stuck"] >= _STUCK_WAKES:
                    fault = FAULT_BLOCKED
        if fault != st["fault"]:
            if fault != FAULT_OK:
                ev.append(("fault", FAULT_SENSOR, fault))
            st["fault"] = fault
            ev.append(("report",))
        if fault != FAULT_OK:
            return ev
        level = self.mount_mm - d
        if level < 0:
            level = 0
        if st["lvl"] >= 0 and st["t"] >= 0 and now > st["t"]:
            rate = (level - st["lvl"]) * 3600 // (now - st["t"])
            st["rate"] = max(-20000, min(20000, rate))
        st["lvl"] = level
        st["t"] = now
        live = spread > 0 or len(got) < 5  # a frozen value never confirms a flood
        if not st["alarm"]:
            if level >= self.high and live:
                st["n"] += 1
                if st["n"] >= self.confirm:
                    st["alarm"] = 1
                    st["n"] = 0
                    ev.append(("raise", CAUSE_FLOOD, level))
            else:
                st["n"] = 0
        else:
            if level < self.low:
                st["n"] += 1
                if st["n"] >= self.confirm:
                    st["alarm"] = 0
                    st["n"] = 0
                    ev.append(("clear", CAUSE_FLOOD, level))
            else:
                st["n"] = 0
        return ev

    def report(self):
        st = self._st
        f = {1: max(0, st["lvl"]), 2: st["rate"]}
        if st["fault"]:
            f[3] = st["fault"]
        return f

    def busy(self):
        return False

    def rising(self):
        st = self._st
        return st["fault"] == FAULT_OK and (st["rate"] >= _RISE_FAST or st["lvl"] >= self.low or st["n"] > 0)

    def next_sample_s(self):
        return _FAST_S if self.rising() else self.interval

    def report_interval(self, interval):
        return _FAST_S * 5 if self.rising() else interval

    def tick(self, now_ms):
        pass

    def wake_pins(self):
        return ()

    def on_ack(self, alarm_id, state):
        pass
