# State kept in RTC slow memory across deep sleep (and watchdog/soft resets; lost on power loss):
# counters, schedules and sensor state as one small JSON dict, framed with a check and tagged with the
# device id so a blob from another identity (re-provisioned node) is never trusted.

import json

from lifeline.firmware import storage


class RtcState:
    def __init__(self, hal, tag):
        self._hal = hal
        self._tag = tag  # bytes: device id
        self.d = {}
        self.valid = False

    def load(self):
        payload = storage.unpack(self._hal.rtc_memory())
        self.d = {}
        self.valid = False
        if payload is None or len(payload) < len(self._tag) or payload[:len(self._tag)] != self._tag:
            return False
        try:
            d = json.loads(payload[len(self._tag):])
        except ValueError:
            return False
        if not isinstance(d, dict):
            return False
        self.d = d
        self.valid = True
        return True

    def save(self):
        self._hal.set_rtc_memory(storage.pack(self._tag + json.dumps(self.d).encode()))

    def get(self, key, default=None):
        return self.d.get(key, default)

    def set(self, key, value):
        self.d[key] = value

    def section(self, name):
        """A sub-dict owned by one component (a sensor's filter state, the duty-cycle ledger...)."""
        s = self.d.get(name)
        if not isinstance(s, dict):
            s = {}
            self.d[name] = s
        return s
