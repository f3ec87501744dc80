# Manhole cover tilt: angle between the gravity vector now and the one recorded at installation, in
# tenths of a degree, computed with integers only (integer square root + CORDIC arctangent).
#
# Traffic makes covers rattle: a passing truck gives short bursts of acceleration far from 1 g. Only
# "static" samples (|a| within 1 g +- 15 %) are averaged; a window where most samples are disturbed does not
# count. The state (closed / displaced / open) changes only after `confirm` consecutive windows agree, or
# when motion goes on for longer than any vehicle passes (a cover being dragged away).

from lifeline.firmware.sensors import lis3dh

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


CLOSED = const(0)
OPEN = const(1)
DISPLACED = const(2)

CAUSE_OPEN = const(1)
CAUSE_DISPLACED = const(2)
FAULT_SENSOR = const(1)

_WINDOW = const(16)  # samples per window
_SAMPLE_MS = const(20)  # 50 Hz
_GAP_MS = const(500)  # between windows while deciding
_MAX_WINDOWS = const(12)
_LONG_MOTION = const(8)  # consecutive disturbed windows meaning "being moved", not traffic
_G_TOL = const(150)  # mg

# atan(2^-i) in millidegrees
_ATAN = (45000, 26565, 14036, 7125, 3576, 1790, 895, 448, 224, 112, 56, 28, 14, 7, 3, 2, 1)


def isqrt(n):
    if n <= 0:
        return 0
    x = 1 << ((n.bit_length() + 1) // 2) if hasattr(n, "bit_length") else n
    while True:
        y = (x + n // x) // 2
        if y >= x:
            return x
        x = y


def atan2_decideg(y, x):
    """atan2(y, x) for y >= 0 in tenths of a degree (0..1800), integer CORDIC."""
    if y == 0 and x >= 0:
        return 0
    flip = x < 0
    if flip:
        x = -x
    # scale up so the shifts keep precision
    x <<= 16
    y <<= 16
    ang = 0
    for i in range(len(_ATAN)):
        if y > 0:
            x, y = x + (y >> i), y - (x >> i)
            ang += _ATAN[i]
        elif y < 0:
            x, y = x - (y >> i), y + (x >> i)
            ang -= _ATAN[i]
    a = (ang + 50) // 100
    if flip:
        a = 1800 - a
    return 0 if a < 0 else (1800 if a > 1800 else a)


def angle_between(a, b):
    """Angle between two integer vectors in tenths of a degree."""
    cx = a[1] * b[2] - a[2] * b[1]
    cy = a[2] * b[0] - a[0] * b[2]
    cz = a[0] * b[1] - a[1] * b[0]
    cross = isqrt(cx * cx + cy * cy + cz * cz)
    dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    return atan2_decideg(cross, dot)


class TiltSensor:
    KIND = 2

    def __init__(self, hal, cfg, st):
        self._hal = hal
        self._st = st
        self.high = cfg.threshold_high
        self.low = cfg.threshold_low
        self.confirm = cfg.confirm
        s = cfg.sensor
        self._acc = lis3dh.Lis3dh(hal.i2c(), s.get("i2c_addr", lis3dh.ADDR))
        self._motion_mg = s.get("motion_mg", 256)
        base = s.get("baseline")
        if "state" not in st:
            st["state"] = CLOSED
            st["angle"] = 0
            st["motions"] = 0
            st["fault"] = 0
            st["init"] = 0
        if isinstance(base, list) and len(base) == 3:
            st["base"] = base
        self.windows = 0
        self.disturbed = 0

    def _ensure_init(self):
        st = self._st
        if st["init"]:
            return True
        try:
            self._acc.init(lis3dh.ODR_50HZ, self._motion_mg, 60)
        except OSError:
            return False
        st["init"] = 1
        return True

    def window(self):
        """One window: (mean static vector or None when disturbed, static count)."""
        sx = sy = sz = 0
        n = 0
        for i in range(_WINDOW):
            if i:
                self._hal.sleep_ms(_SAMPLE_MS)
            x, y, z = self._acc.read_mg()
            m = isqrt(x * x + y * y + z * z)
            if 1000 - _G_TOL <= m <= 1000 + _G_TOL:
                sx += x
                sy += y
                sz += z
                n += 1
        if n * 2 < _WINDOW:
            return None, n
        return (sx // n, sy // n, sz // n), n

    def _classify(self, angle):
        if angle >= self.high:
            return OPEN
        if angle >= self.low:
            return DISPLACED
        return CLOSED

    def sample(self, now, motion=False):
        st = self._st
        ev = []
        if not self._ensure_init():
            if not st["fault"]:
                st["fault"] = 1
                ev.append(("fault", FAULT_SENSOR, 1))
            return ev
        if st["fault"]:
            st["fault"] = 0
            ev.append(("report",))
        if motion:
            try:  # noqa: SIM105 - MicroPython has no contextlib
                self._acc.motion_source()  # clear the latched INT1
            except OSError:
                pass
            st["motions"] = min(st["motions"] + 1, 65535)
        agree = 0
        disturbed = 0
        cand = -1
        for w in range(_MAX_WINDOWS):
            if w:
                self._hal.sleep_ms(_GAP_MS)
            try:
                vec, _ = self.window()
            except OSError:
                st["fault"] = 1
                ev.append(("fault", FAULT_SENSOR, 3))
                return ev
            self.windows += 1
            if vec is None:
                disturbed += 1
                self.disturbed += 1
                agree = 0
                if disturbed >= _LONG_MOTION:
                    return ev + self._set(OPEN, st["angle"])
                continue
            disturbed = 0
            if "base" not in st:
                st["base"] = [vec[0], vec[1], vec[2]]  # first stable reading after installation
            angle = angle_between(vec, st["base"])
            c = self._classify(angle)
            if c == st["state"] and not motion:
                st["angle"] = angle
                return ev  # periodic check: unchanged
            if c == cand:
                agree += 1
            else:
                cand = c
                agree = 1
            if agree >= self.confirm:
                st["angle"] = angle
                return ev + self._set(c, angle)
            if not motion and c == st["state"]:
                return ev
        return ev

    def _set(self, new, angle):
        st = self._st
        old = st["state"]
        if new == old:
            return []
        st["state"] = new
        if new == CLOSED:
            return [("clear", CAUSE_OPEN if old == OPEN else CAUSE_DISPLACED, angle)]
        ev = []
        if old != CLOSED:
            ev.append(("clear", CAUSE_OPEN if old == OPEN else CAUSE_DISPLACED, angle))
        ev.append(("raise", CAUSE_OPEN if new == OPEN else CAUSE_DISPLACED, angle))
        return ev

    def report(self):
        st = self._st
        return {1: st["angle"], 2: st["state"], 3: st["motions"]}

    def busy(self):
        return False

    def next_sample_s(self):
        return 3600

    def tick(self, now_ms):
        pass

    def wake_pins(self):
        return ("accel_int",)

    def on_ack(self, alarm_id, state):
        pass
