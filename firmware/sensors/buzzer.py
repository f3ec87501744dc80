# Local sounder. Alarm signal: temporal-3 (ISO 8201 / ANSI S3.41): three 0.5 s tones separated by 0.5 s,
# then 1.5 s of silence; cycle 4 s. Escalation: without an acknowledgement from the platform within
# ESCALATE_S, the loud stage (second pin enabling the boost driver) is switched on; an ack stops the
# escalation (the temporal-3 tone continues while the alarm lasts, as the standard requires).

_ON = ((0, 500), (1000, 1500), (2000, 2500))
_CYCLE = 4000
ESCALATE_S = 60


def temporal3(t_ms):
    """1 while the tone is on at t_ms into the pattern."""
    p = t_ms % _CYCLE
    for a, b in _ON:
        if a <= p < b:
            return 1
    return 0


class Buzzer:
    def __init__(self, hal, st):
        self._hal = hal
        self._st = st
        self._pin = hal.pin("buzzer", True)
        self._loud = hal.pin("buzzer_loud", True)
        self._t0 = 0  # ms, start of the current pattern
        self._chirp_until = -1

    def start(self, now):
        self._st["bz"] = 1
        self._st["bz_t"] = now
        self._st["bz_ack"] = 0
        self._t0 = self._hal.ticks_ms()

    def stop(self):
        self._st["bz"] = 0
        self._pin.value(0)
        self._loud.value(0)

    def chirp(self, now):
        """One pattern for the self-test."""
        self._t0 = self._hal.ticks_ms()
        self._chirp_until = self._t0 + _CYCLE

    def acked(self):
        self._st["bz_ack"] = 1
        self._loud.value(0)

    def active(self):
        return bool(self._st.get("bz")) or self._chirp_until >= 0

    def escalated(self, now):
        st = self._st
        return bool(st.get("bz")) and not st.get("bz_ack") and now - st.get("bz_t", now) >= ESCALATE_S

    def tick(self, now_ms):
        if self._chirp_until >= 0 and now_ms >= self._chirp_until:
            self._chirp_until = -1
            if not self._st.get("bz"):
                self._pin.value(0)
        if not self.active():
            return
        self._pin.value(temporal3(now_ms - self._t0))
        self._loud.value(1 if self.escalated(self._hal.time()) else 0)
