# Water and gas meters: reed pulses (litres per pulse from the meter's register), kept in RTC memory
# across deep sleep and in flash (every report) across power loss. Electricity: electricity.py.
#
# Leak: a household's water use stops at some point every night; a leak does not. Inside the night window
# (local hours, default 01:00-05:00) the smallest per-interval flow is tracked; if it never reached zero
# (minimum >= threshold_high L/h) the window ends in a leak alarm. Without a synchronised clock the rule
# is "no zero-flow interval for 24 hours". Reverse flow (quadrature) and a magnet on the meter (hall
# input) raise alarms too; flags carry the state in every report (schema METER_FLAGS bits).

from lifeline.firmware import storage
from lifeline.firmware.sensors import pulse

F_LEAK = 1
F_REVERSE = 2
F_TAMPER = 4
F_LOW_BATTERY = 8

CAUSE_LEAK = 4
CAUSE_REVERSE = 5
CAUSE_TAMPER = 6
FAULT_SENSOR = 1

FLASH_PATH = "/meter"


class PulseMeter:
    def __init__(self, hal, cfg, st, kind):
        self.KIND = kind
        self._hal = hal
        self._st = st
        s = cfg.sensor
        self.litres_per_pulse = s.get("litres_per_pulse", 1)
        self.base_index = s.get("base_index", 0)  # meter register reading at installation, litres
        self.night = s.get("night", [1, 5])
        self.tz_min = s.get("tz_min", 0)
        self.reverse_min = s.get("reverse_min", 2)
        self.leak_lph = cfg.threshold_high
        self.interval = cfg.interval
        self.clock_ok = False
        self._input = hal.pulse_input("meter")
        fresh = "lv" not in st
        self.dec = pulse.PulseDecoder(st, s.get("debounce_ms", 20), s.get("quadrature", True))
        if fresh:
            st["flags"] = 0
            st["last_net"] = 0
            st["last_rev"] = 0
            st["t"] = -1
            st["flow"] = 0
            st["nmin"] = -1
            st["nz"] = -1
            saved = storage.load_json(hal.fs, FLASH_PATH)
            if isinstance(saved, dict):  # power was lost: continue from the last flash copy
                st["fwd"] = saved.get("fwd", 0)
                st["rev"] = saved.get("rev", 0)
                st["last_net"] = st["fwd"] - st["rev"]
                st["last_rev"] = st["rev"]

    def index(self):
        v = self.base_index + self.dec.net() * self.litres_per_pulse
        return max(0, min(v, 0xFFFFFFFF))

    def _in_night(self, now):
        h = ((now + self.tz_min * 60) // 3600) % 24
        a, b = self.night
        return a <= h < b if a <= b else (h >= a or h < b)

    def sample(self, now, motion=False):
        st = self._st
        ev = []
        self.dec.feed(self._input.take(), self._hal.ticks_ms())
        # tamper: a magnet on the meter holds the reed and is seen by the hall sensor
        tampered = self.dec.tamper_level() == 1
        if tampered and not st["flags"] & F_TAMPER:
            st["flags"] |= F_TAMPER
            ev.append(("raise", CAUSE_TAMPER, st["tmp"]))
        elif not tampered and st["flags"] & F_TAMPER:
            st["flags"] &= ~F_TAMPER
            ev.append(("clear", CAUSE_TAMPER, 0))
        if st["t"] < 0:
            st["t"] = now
            st["nz"] = now
            return ev
        dt = now - st["t"]
        if dt < 60:
            return ev
        net = self.dec.net()
        delta_l = (net - st["last_net"]) * self.litres_per_pulse
        flow = max(0, delta_l) * 3600 // dt
        st["flow"] = min(flow, 100000)
        rev = st["rev"] - st["last_rev"]
        st["last_net"] = net
        st["last_rev"] = st["rev"]
        st["t"] = now
        if rev >= self.reverse_min and not st["flags"] & F_REVERSE:
            st["flags"] |= F_REVERSE
            ev.append(("raise", CAUSE_REVERSE, rev * self.litres_per_pulse))
        elif rev == 0 and st["flags"] & F_REVERSE:
            st["flags"] &= ~F_REVERSE
            ev.append(("clear", CAUSE_REVERSE, 0))
        ev.extend(self._leak(now, flow))
        return ev

    def _leak(self, now, flow):
        st = self._st
        ev = []
        if flow == 0:
            st["nz"] = now
            if st["flags"] & F_LEAK:
                st["flags"] &= ~F_LEAK
                ev.append(("clear", CAUSE_LEAK, 0))
        leak = False
        if self.clock_ok:
            if self._in_night(now):
                st["nmin"] = flow if st["nmin"] < 0 else min(st["nmin"], flow)
            elif st["nmin"] >= 0:
                leak = st["nmin"] >= self.leak_lph and self.leak_lph > 0
                st["nmin"] = -1
        elif st["nz"] >= 0 and now - st["nz"] >= 86400:
            leak = True
        if leak and not st["flags"] & F_LEAK:
            st["flags"] |= F_LEAK
            ev.append(("raise", CAUSE_LEAK, flow))
        return ev

    def persist(self):
        st = self._st
        storage.save_json(self._hal.fs, FLASH_PATH, {"fwd": st["fwd"], "rev": st["rev"]})

    def report(self):
        st = self._st
        self.persist()
        return {1: self.index(), 2: st["flow"], 3: st["flags"]}

    def busy(self):
        return False

    def next_sample_s(self):
        return self.interval

    def tick(self, now_ms):
        pass

    def wake_pins(self):
        return ("meter_tamper",)

    def on_ack(self, alarm_id, state):
        pass
