# Uplink frame counter that never repeats across resets, deep sleep and power loss.
#
# Flash holds a reservation R: every counter value below R may have been used, none at or above it has.
# Using value c >= R first persists R' = c + N (N = 16, atomic tmp+rename), then transmits. After a power
# loss the node restarts at R, i.e. it jumps ahead by at most N. RTC memory holds the exact next value so
# a deep-sleep wake continues without a jump; it is trusted only inside [R - N, R] and with our device tag.
# A power cut while persisting leaves the old R (no value >= old R was sent yet) or the new one: both safe.

from lifeline.firmware import storage

STEP = 16
PATH = "/fcnt"
MAX = 0xFFFFFFFF


class CounterLost(Exception):
    """The flash reservation is gone although the node has booted before: no safe value is known."""


class FrameCounter:
    def __init__(self, fs, rtc, first_boot):
        self._fs = fs
        self._rtc = rtc
        self.persists = 0
        p = storage.load_record(fs, PATH)
        if p is None or len(p) != 4:
            if not first_boot:
                raise CounterLost("frame counter record missing or corrupt")
            # first boot: persist the first reservation now, before the caller records that it booted
            storage.save_record(fs, PATH, STEP.to_bytes(4, "big"))
            self.reserved = STEP
            self.persists += 1
            self.value = 0
            return
        self.reserved = int.from_bytes(p, "big")
        nxt = rtc.get("fc") if rtc.valid else None
        if isinstance(nxt, int) and self.reserved - STEP <= nxt <= self.reserved:
            self.value = nxt
        else:
            self.value = self.reserved

    def peek(self):
        return self.value

    def next(self):
        """Reserve and return the next counter value (persisting first when the reservation runs out)."""
        c = self.value
        if c >= MAX:
            raise CounterLost("frame counter exhausted")
        if c >= self.reserved:
            r = c + STEP
            storage.save_record(self._fs, PATH, r.to_bytes(4, "big"))
            self.reserved = r
            self.persists += 1
        self.value = c + 1
        self._rtc.set("fc", self.value)
        self._rtc.save()
        return c
