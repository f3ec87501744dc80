"""Rule runtimes: the per-trigger state machines the engine drives (``engine.py`` indexes and calls them).

Level triggers keep a state per key (a device, an alarm, or the gateway): idle -> pending (the set
condition holds; waits ``for``) -> active (fired) -> idle (the clear condition holds: hysteresis). Each
class turns one trigger type's observations (a reading or a tick) into ``level`` / ``pulse`` calls on the
shared transitions of :class:`RuleRT`.
"""

from __future__ import annotations

import collections
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lifeline.gateway import records as rec
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.timeparse import in_window
from lifeline.protocols import schema

if TYPE_CHECKING:
    from collections.abc import Mapping

    from lifeline.gateway.rules_engine.engine import Engine

PENDING = 1
ACTIVE = 2
GATEWAY = rec.GATEWAY_DEVICE
_RATE_HISTORY = 64



@dataclass(frozen=True, slots=True)
class DeviceAttrs:
    """What rules may ask about a device (from the registry)."""

    kind: str
    spatial_unit: str = ""
    data_class: int = 0
    tags: frozenset[str] = frozenset()
    address: str = ""


@dataclass(frozen=True, slots=True)
class Firing:
    rule: m.Rule
    key: bytes  # state key: device id, device id + alarm id, or b"" for the gateway
    device: bytes  # subject device (GATEWAY_DEVICE for gateway-wide firings)
    at_ms: int
    fired: bool  # False: cleared
    value: int | None = None
    alarm_id: int | None = None
    reason: str = ""
    muted: bool = False  # fired within the rule's cooldown: reported, no actions


@dataclass(frozen=True, slots=True)
class Health:
    """What a tick knows about the platform uplink and the disk."""

    connected: bool = True
    puback_stall_ms: int = 0  # how long the oldest in-flight publish has waited for its PUBACK
    backlog_age_ms: int = 0  # age of the oldest buffered record
    disk_quota_pct: float | None = None
    disk_free_mb: float | None = None


@dataclass(frozen=True, slots=True)
class ActiveState:
    """An active firing as persisted across restarts."""

    rule: str
    key: bytes
    device: bytes
    since_ms: int
    value: int | None
    alarm_id: int | None


class State:
    __slots__ = ("alarm_id", "device", "muted", "phase", "since", "value")

    def __init__(self, phase: int, since: int, device: bytes, value: int | None, alarm_id: int | None) -> None:
        self.phase = phase
        self.since = since
        self.device = device
        self.value = value
        self.alarm_id = alarm_id
        self.muted = False


def alarm_key(device: bytes, alarm_id: int) -> bytes:
    return device + alarm_id.to_bytes(2, "big")


# ------------------------------------------------------------------------------------------- rule runtime


class RuleRT:
    """Runtime of one rule: its states and the transitions shared by every trigger type."""

    for_ms = 0
    raises: int | None = None
    per_device = False  # states keyed by the reading's device (indexed in Engine.dev_rts)

    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        self.rule = rule
        self.eng = eng
        self.states: dict[bytes, State] = {}
        self.last_fire: dict[bytes, int] = {}
        self.conds = rule.conditions
        self.dynamic = rule.conditions.has_dynamic or rule.conditions.has_time
        self.has_static = rule.conditions.has_static
        self.static_cache: dict[bytes, bool] = {}
        self.kinds = frozenset(trigger_kinds(rule.trigger))

    def static_ok_cached(self, device: bytes) -> bool:
        ok = self.static_cache.get(device)
        if ok is None:
            ok = self.static_cache[device] = self.static_ok(device, self.eng.attrs.get(device))
        return ok

    # --------------------------------------------------------- conditions

    def static_ok(self, device: bytes, attrs: DeviceAttrs | None) -> bool:
        c = self.conds
        if c.devices is not None and device not in c.devices:
            return False
        if not c.has_static or (c.devices is not None and c.device_kinds is None and c.spatial_units is None
                                and c.data_classes is None and c.tags_any is None and c.tags_all is None):
            return True
        if attrs is None:
            return False
        if c.device_kinds is not None and attrs.kind not in c.device_kinds:
            return False
        if c.data_classes is not None and attrs.data_class not in c.data_classes:
            return False
        if c.tags_any is not None and not (c.tags_any & attrs.tags):
            return False
        if c.tags_all is not None and not c.tags_all <= attrs.tags:
            return False
        return not (c.spatial_units is not None
                    and not any(fnmatch.fnmatchcase(attrs.spatial_unit, p) for p in c.spatial_units))

    def dyn_ok(self, now: int) -> bool:
        if not self.dynamic:
            return True
        c = self.conds
        eng = self.eng
        if c.modes is not None and eng.mode not in c.modes:
            return False
        if c.uplink is not None and (c.uplink == "down") != eng.uplink_down:
            return False
        if c.windows is not None or c.days is not None:
            minute, weekday = eng.local(now)[:2]
            if c.days is not None and weekday not in c.days:
                return False
            if c.windows is not None and not any(in_window(minute, w) for w in c.windows):
                return False
        return True

    # --------------------------------------------------------- transitions

    def begin(self, key: bytes, device: bytes, now: int, value: int | None, out: list[Firing],
              alarm_id: int | None = None, since: int | None = None) -> None:
        """The set condition holds for a key that was idle."""
        st = State(PENDING, now if since is None else since, device, value, alarm_id)
        self.states[key] = st
        if self.per_device:
            self.eng.track(key, self)
        self.check(key, st, now, out)

    def check(self, key: bytes, st: State, now: int, out: list[Firing]) -> None:
        """A pending key: fire once its duration elapsed and the conditions hold."""
        if now - st.since < self.for_ms or not self.dyn_ok(now):
            self.eng.pending.add((self, key))
            return
        self.eng.pending.discard((self, key))
        st.phase = ACTIVE
        last = self.last_fire.get(key)
        cd = self.rule.cooldown_ms
        st.muted = cd > 0 and last is not None and now - last < cd
        self.last_fire[key] = now
        self.eng.active_changed = True
        out.append(Firing(self.rule, key, st.device, now, True, st.value, st.alarm_id, muted=st.muted))

    def end(self, key: bytes, now: int, out: list[Firing], reason: str, value: int | None = None) -> None:
        st = self.states.pop(key, None)
        if st is None:
            return
        self.eng.pending.discard((self, key))
        if self.per_device:
            self.eng.untrack(key, self)
        if st.phase == ACTIVE:
            self.eng.active_changed = True
            if not st.muted:
                out.append(Firing(self.rule, key, st.device, now, False, st.value if value is None else value,
                                  st.alarm_id, reason))

    def level(self, key: bytes, device: bytes, now: int, value: int | None, hi: bool, lo: bool,
              out: list[Firing], reason: str, alarm_id: int | None = None) -> None:
        """One observation of a level trigger: ``hi`` = the set condition, ``lo`` = the clear condition."""
        st = self.states.get(key)
        if st is None:
            if hi:
                self.begin(key, device, now, value, out, alarm_id)
            return
        st.value = value
        if st.phase == ACTIVE:
            if lo:
                self.end(key, now, out, reason)
        elif hi:
            self.check(key, st, now, out)
        else:
            del self.states[key]
            self.eng.pending.discard((self, key))
            if self.per_device:
                self.eng.untrack(key, self)

    def pulse(self, key: bytes, device: bytes, now: int, value: int | None, out: list[Firing]) -> None:
        """A momentary trigger: fires each time, not again within the rule's cooldown."""
        if not self.dyn_ok(now):
            return
        last = self.last_fire.get(key)
        cd = self.rule.cooldown_ms
        if cd > 0 and last is not None and now - last < cd:
            self.eng.suppressed += 1
            return
        self.last_fire[key] = now
        out.append(Firing(self.rule, key, device, now, True, value))

    def active_raise(self, key: bytes) -> int | None:
        st = self.states.get(key)
        return self.raises if st is not None and st.phase == ACTIVE else None

    # --------------------------------------------------------- hooks

    def on_reading(self, r: rec.Reading, now: int, out: list[Firing]) -> None:
        raise NotImplementedError

    def on_tick(self, now: int, health: Health | None, out: list[Firing]) -> None:
        return None


class ThresholdRT(RuleRT):
    per_device = True

    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.Threshold)
        self.key = t.field.key
        self.above = t.above
        self.below = t.below
        self.clear = t.clear
        self.for_ms = t.for_ms
        self.raises = rule.raises_to

    def on_reading(self, r: rec.Reading, now: int, out: list[Firing]) -> None:
        v = r.fields.get(self.key)
        if v.__class__ is not int:
            return
        assert isinstance(v, int)
        dev = r.device_id
        if self.above is not None:
            hi = v > self.above
            if not hi and dev not in self.states:
                return  # the common case: nothing going on
            self.level(dev, dev, now, v, hi, v <= self.clear, out, "hysteresis")
        else:
            assert self.below is not None
            hi = v < self.below
            if not hi and dev not in self.states:
                return
            self.level(dev, dev, now, v, hi, v >= self.clear, out, "hysteresis")


class BatteryRT(RuleRT):
    per_device = True

    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.BatteryLow)
        self.below = t.below
        self.clear = t.clear
        self.for_ms = t.for_ms
        self.raises = rule.raises_to

    def on_reading(self, r: rec.Reading, now: int, out: list[Firing]) -> None:
        v = r.fields.get(15)
        if v.__class__ is not int:
            return
        assert isinstance(v, int)
        dev = r.device_id
        hi = v < self.below
        if not hi and dev not in self.states:
            return
        self.level(dev, dev, now, v, hi, v >= self.clear, out, "recovered")


class ReportRT(RuleRT):
    per_device = True

    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.Report)
        self.key = t.key
        self.values = t.values
        self.mask = t.mask
        self.negate = t.negate
        self.momentary = t.momentary
        self.for_ms = t.for_ms
        self.raises = rule.raises_to

    def on_reading(self, r: rec.Reading, now: int, out: list[Firing]) -> None:
        v = r.fields.get(self.key)
        if v.__class__ is not int:
            return
        assert isinstance(v, int)
        if self.values is not None:
            match = (v in self.values) != self.negate
        elif self.mask:
            match = bool(v & self.mask)
        else:
            match = True
        dev = r.device_id
        if self.momentary:
            if match:
                self.pulse(dev, dev, now, v, out)
            return
        if not match and dev not in self.states:
            return
        self.level(dev, dev, now, v, match, not match, out, "normal")


class AlarmRT(RuleRT):
    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.AlarmReport)
        self.causes = t.causes
        self.raises = rule.raises_to

    def on_reading(self, r: rec.Reading, now: int, out: list[Firing]) -> None:
        aid = r.fields.get(1)
        cause = r.fields.get(2)
        if not isinstance(aid, int) or not isinstance(cause, int):
            return
        if self.causes is not None and cause not in self.causes:
            return
        dev = r.device_id
        key = alarm_key(dev, aid)
        if r.kind == schema.K_ALARM_RAISED:
            if key not in self.states:
                self.begin(key, dev, now, aid, out, aid)
        else:
            self.end(key, now, out, "alarm_cleared")

    def active_raise(self, key: bytes) -> int | None:
        return None  # the alarm kinds are alarm priority already


class RateRT(RuleRT):
    per_device = True

    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.Rate)
        self.t = t
        self.key = t.field.key
        self.raises = rule.raises_to
        self.history: dict[bytes, collections.deque[tuple[int, int]]] = {}

    def on_reading(self, r: rec.Reading, now: int, out: list[Firing]) -> None:
        v = r.fields.get(self.key)
        if v.__class__ is not int:
            return
        assert isinstance(v, int)
        dev = r.device_id
        h = self.history.get(dev)
        if h is None:
            h = self.history[dev] = collections.deque(maxlen=_RATE_HISTORY)
        h.append((now, v))
        t = self.t
        while len(h) > 2 and now - h[1][0] >= t.window_ms:
            h.popleft()
        t0, v0 = h[0]
        span = now - t0
        if span < t.min_span_ms or span <= 0:
            return
        delta = (v - v0) if t.rise is not None else (v0 - v)
        limit = t.rise if t.rise is not None else t.fall
        assert limit is not None
        per_value = delta * t.per_ms // span  # wire units per `per`
        hi = delta * t.per_ms > limit * span
        if not hi and dev not in self.states:
            return
        self.level(dev, dev, now, per_value, hi, delta * t.per_ms <= t.clear * span, out, "steady")


class SilentRT(RuleRT):
    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.Silent)
        self.after = t.after_ms
        self.next_check = 0

    def on_tick(self, now: int, health: Health | None, out: list[Firing]) -> None:
        if now < self.next_check:
            return
        eng = self.eng
        nxt = now + self.after
        for dev in eng.devices_for(self):
            if dev in self.states:
                continue
            last = eng.seen.get(dev, eng.start_ms)
            due = last + self.after
            if now >= due:
                self.begin(dev, dev, now, (now - last) // 1000, out)
            elif due < nxt:
                nxt = due
        self.next_check = min(nxt, now + 60_000)

    def heard(self, dev: bytes, now: int, out: list[Firing]) -> None:
        if dev in self.states:
            self.end(dev, now, out, "returned")
        self.next_check = 0


class UplinkRT(RuleRT):
    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.UplinkDown)
        self.for_ms = t.for_ms

    def on_tick(self, now: int, health: Health | None, out: list[Firing]) -> None:
        eng = self.eng
        if eng.uplink_down:
            if b"" not in self.states:
                self.begin(b"", GATEWAY, now, (now - eng.down_since) // 1000, out, since=eng.down_since)
        elif b"" in self.states:
            self.end(b"", now, out, "uplink_restored", (now - eng.down_since) // 1000)


class UnackedRT(RuleRT):
    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.AlarmUnacked)
        self.after = t.after_ms
        self.causes = t.causes

    def on_tick(self, now: int, health: Health | None, out: list[Firing]) -> None:
        eng = self.eng
        tracker = eng.alarms
        if tracker is None:
            return
        for key in [k for k in self.states]:
            a = tracker.get(key[:8], int.from_bytes(key[8:], "big"))
            if a is None or a.acked:
                self.end(key, now, out, "acked")
            elif not a.open:
                self.end(key, now, out, "alarm_cleared")
        for a in tracker.open_alarms():
            if a.acked or now - a.raised_ms < self.after:
                continue
            if self.causes is not None and a.cause not in self.causes:
                continue
            key = alarm_key(a.device, a.alarm_id)
            if key not in self.states and self.static_ok(a.device, eng.attrs.get(a.device)):
                self.begin(key, a.device, now, a.alarm_id, out, a.alarm_id)


class DiskRT(RuleRT):
    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.Disk)
        self.t = t
        self.for_ms = t.for_ms

    def on_tick(self, now: int, health: Health | None, out: list[Firing]) -> None:
        if health is None:
            return
        t = self.t
        pct, free = health.disk_quota_pct, health.disk_free_mb
        hi = ((t.quota_pct is not None and pct is not None and pct >= t.quota_pct)
              or (t.free_mb is not None and free is not None and free < t.free_mb))
        lo = ((t.clear_pct is None or pct is None or pct < t.clear_pct)
              and (t.clear_free_mb is None or free is None or free >= t.clear_free_mb))
        value = round(pct) if pct is not None else (round(free) if free is not None else None)
        self.level(b"", GATEWAY, now, value, hi, lo, out, "relieved")


class ScheduleRT(RuleRT):
    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.Schedule)
        self.t = t
        self.last_minute = -1

    def on_tick(self, now: int, health: Health | None, out: list[Firing]) -> None:
        stamp = now // 60_000
        if stamp == self.last_minute:
            return
        minute, weekday, mday, month = self.eng.local(now)
        t = self.t
        due = minute in t.at if t.cron is None else t.cron.matches(minute % 60, minute // 60, mday, month, weekday)
        if due:
            self.last_minute = stamp
            self.pulse(b"", GATEWAY, now, minute, out)


class ModeRT(RuleRT):
    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.ModeIs)
        self.modes = t.modes

    def on_tick(self, now: int, health: Health | None, out: list[Firing]) -> None:
        on = self.eng.mode in self.modes
        self.level(b"", GATEWAY, now, m.MODES.index(self.eng.mode), on, not on, out, "mode")


RT_CLASSES: Mapping[type, type[RuleRT]] = {
    m.Threshold: ThresholdRT, m.BatteryLow: BatteryRT, m.Report: ReportRT, m.AlarmReport: AlarmRT,
    m.Rate: RateRT, m.Silent: SilentRT, m.UplinkDown: UplinkRT, m.AlarmUnacked: UnackedRT, m.Disk: DiskRT,
    m.Schedule: ScheduleRT, m.ModeIs: ModeRT,
}



def trigger_kinds(t: m.Trigger) -> tuple[int, ...]:
    if isinstance(t, m.Threshold | m.Rate):
        return (t.field.kind,)
    if isinstance(t, m.Report | m.BatteryLow):
        return t.kinds
    if isinstance(t, m.AlarmReport):
        return (schema.K_ALARM_RAISED, schema.K_ALARM_CLEARED)
    return ()
