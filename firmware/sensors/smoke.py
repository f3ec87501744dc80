# Photoelectric smoke chamber: an IR LED and a photodiode at a scattering angle inside a dark chamber.
# Smoke scatters the LED light onto the photodiode. Each sample reads the photodiode amplifier through the
# ADC with the LED off (dark: ambient leak and offset) and on (lit); lit - dark is the scatter signal.
# Obscuration (%/m) = (signal - clean-air baseline) / sensitivity, with the baseline and sensitivity from
# factory calibration (sensor.clean_uv, sensor.uv_per_pct) and the baseline tracked slowly for dust.
#
# Alarm logic (EN 14604 style): pre-alarm at 2/3 of the threshold, alarm after `confirm` consecutive
# samples at or above threshold_high, clear after `confirm` samples below threshold_low (hysteresis).
# Faults: open (no signal at all: LED, photodiode or amplifier open) and short (dark reading at the rail).
# Drift: the baseline follows slow changes (dust) at a bounded rate; a compensated offset above half the
# threshold reports "drift", above the whole threshold "dirty" (clean or replace the chamber).
# All arithmetic is integer: microvolts and hundredths of %/m (the wire scale).

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


NORMAL = const(0)
PRE_ALARM = const(1)
ALARM = const(2)
HUSHED = const(3)

CH_OK = const(0)
CH_FAULT = const(1)
CH_DRIFT = const(2)
CH_DIRTY = const(3)

CAUSE_SMOKE = const(0)
FAULT_SENSOR = const(1)

_PAIRS = 4  # dark/lit pairs averaged per sample
_SHORT_UV = 3000000  # a dark reading this high means the photodiode input is shorted to the rail
_HUSH_S = 600  # EN 14604 hush: at most 10 minutes
_DRIFT_UV_PER_H = 1000  # baseline tracking rate limit
_FAST_S = 2  # sample period while elevated


class SmokeSensor:
    KIND = 1

    def __init__(self, hal, cfg, st):
        self._hal = hal
        self._st = st
        s = cfg.sensor
        self.clean_uv = s.get("clean_uv", 200000)
        self.uv_per_pct = s.get("uv_per_pct", 60000)  # signal uV per 1 %/m obscuration
        self.open_uv = s.get("open_uv", self.clean_uv // 4)
        self.sample_s = cfg.sample_interval or 10
        self.high = cfg.threshold_high
        self.low = cfg.threshold_low
        self.confirm = cfg.confirm
        self._led = hal.pin("smoke_led", True)
        self._adc = hal.adc("smoke_adc")
        self._button = hal.pin("test_button")
        self._buzzer = None
        if "base" not in st:
            st["base"] = self.clean_uv
            st["bt"] = -1
            st["state"] = NORMAL
            st["n"] = 0  # consecutive samples confirming a state change
            st["ch"] = CH_OK
            st["obs"] = 0
            st["test"] = 0
            st["hush"] = 0

    @property
    def buzzer(self):
        if self._buzzer is None:  # loaded only when it has to sound
            from lifeline.firmware.sensors import buzzer

            self._buzzer = buzzer.Buzzer(self._hal, self._st)
        return self._buzzer

    # ---- measurement ----
    def read_signal(self):
        """(dark_uv, signal_uv): mean of _PAIRS dark/lit pairs."""
        dark = 0
        lit = 0
        for _ in range(_PAIRS):
            self._led.value(0)
            dark += self._adc.read_uv()
            self._led.value(1)
            self._hal.sleep_us(100)  # photodiode amplifier settling
            lit += self._adc.read_uv()
            self._led.value(0)
        dark //= _PAIRS
        lit //= _PAIRS
        return dark, lit - dark

    def obscuration(self, signal):
        """Hundredths of %/m above the tracked clean-air baseline, clamped to the wire range."""
        o = (signal - self._st["base"]) * 100 // self.uv_per_pct
        if o < 0:
            return 0
        return 2000 if o > 2000 else o

    # ---- state machine ----
    def sample(self, now, motion=False):
        st = self._st
        ev = []
        dark, signal = self.read_signal()
        fault = dark >= _SHORT_UV or signal < self.open_uv
        if fault:
            if st["ch"] != CH_FAULT:
                st["ch"] = CH_FAULT
                ev.append(("fault", FAULT_SENSOR, 1 if dark >= _SHORT_UV else 2))
                ev.append(("report",))
            st["obs"] = 0
            return ev
        obs = self.obscuration(signal)
        st["obs"] = obs
        self._track(now, signal, obs)
        ch = self._chamber_state()
        if ch != st["ch"]:
            st["ch"] = ch
            ev.append(("report",))
        if self._button.value():
            ev.extend(self._button_pressed(now, signal))
        state = st["state"]
        if state == HUSHED:
            if now - st["hush"] >= _HUSH_S or obs >= 2 * self.high:
                st["state"] = ALARM if obs >= self.high else NORMAL
                if st["state"] == NORMAL:
                    self.buzzer.stop()
                    ev.append(("clear", CAUSE_SMOKE, obs))
                else:
                    self.buzzer.start(now)
        elif state == ALARM:
            if obs < self.low:
                st["n"] += 1
                if st["n"] >= self.confirm:
                    st["state"] = NORMAL
                    st["n"] = 0
                    self.buzzer.stop()
                    ev.append(("clear", CAUSE_SMOKE, obs))
            else:
                st["n"] = 0
        else:
            if obs >= self.high:
                st["n"] += 1
                if state != PRE_ALARM:
                    st["state"] = PRE_ALARM
                if st["n"] >= self.confirm:
                    st["state"] = ALARM
                    st["n"] = 0
                    self.buzzer.start(now)
                    ev.append(("raise", CAUSE_SMOKE, obs))
            else:
                st["n"] = 0
                st["state"] = PRE_ALARM if obs >= self.high * 2 // 3 else NORMAL
        return ev

    def _track(self, now, signal, obs):
        """Follow slow baseline changes (dust, LED ageing) at no more than _DRIFT_UV_PER_H."""
        st = self._st
        if st["bt"] < 0 or now < st["bt"]:
            st["bt"] = now
            return
        if st["state"] != NORMAL or obs >= self.low // 2:
            st["bt"] = now  # never learn smoke
            return
        allowed = _DRIFT_UV_PER_H * (now - st["bt"]) // 3600
        if allowed <= 0:
            return  # keep bt: the allowance accumulates until it is worth one step
        d = signal - st["base"]
        if d > allowed:
            d = allowed
        elif d < -allowed:
            d = -allowed
        st["base"] += d
        st["bt"] = now

    def _chamber_state(self):
        comp = (self._st["base"] - self.clean_uv) * 100 // self.uv_per_pct
        if comp >= self.high:
            return CH_DIRTY
        if comp >= self.high // 2:
            return CH_DRIFT
        return CH_OK

    def _button_pressed(self, now, signal):
        st = self._st
        if st["state"] == ALARM:
            st["state"] = HUSHED
            st["hush"] = now
            self.buzzer.stop()
            return [("report",)]
        # Self-test: the chamber must respond to the LED (signal in its calibrated window) and the buzzer
        # sounds one pattern so the resident hears it.
        ok = self.open_uv <= signal < _SHORT_UV
        st["test"] = 1 if ok else 2
        self.buzzer.chirp(now)
        return [("report",)]

    # ---- node interface ----
    def report(self):
        st = self._st
        f = {1: st["state"], 2: st["obs"], 3: st["ch"]}
        if st["test"]:
            f[4] = st["test"]
            st["test"] = 0
        return f

    def busy(self):
        st = self._st
        return st["state"] in (PRE_ALARM, ALARM) or bool(st.get("bz")) or (
            self._buzzer is not None and self._buzzer.active())

    def next_sample_s(self):
        return _FAST_S if self.busy() else self.sample_s

    def tick(self, now_ms):
        """Drive the buzzer pattern while awake."""
        if self._buzzer is not None or self._st.get("bz"):
            self.buzzer.tick(now_ms)

    def wake_pins(self):
        return ("test_button",)

    def on_ack(self, alarm_id, state):
        if self._st.get("bz"):
            self.buzzer.acked()
