"""The rule engine: readings and time in, :class:`Firing` records out. Pure logic, no I/O, no asyncio.

* :meth:`Engine.evaluate` runs on the ingest hot path, once per accepted reading. Rules are indexed by
  report kind, so a reading meets only the rules that can match it; rules with device conditions
  (kind, spatial unit, class, tags) are further filtered once per device and cached.
* :meth:`Engine.tick` handles what time alone changes: durations that elapsed, silent devices, the
  uplink's health, unacknowledged alarms, disk pressure, schedules, the operating mode.

Level triggers (threshold, rate, report, battery, silent, uplink, disk, mode, alarm) keep a state per
key (a device, an alarm, or the gateway): idle -> pending (the set condition holds; waits ``for``) ->
active (fired) -> idle (the clear condition holds: hysteresis; a cleared firing is reported too).
Repeated readings of an active condition fire nothing: one alarm, one siren. Conditions gate the
firing: a pending state fires once they hold; when the mode or the uplink state changes, active firings
whose mode/uplink condition no longer holds are cleared (that is how "uplink restored" ends local
escalation). Momentary triggers (fault reports, schedules) fire per occurrence, muted within the rule's
cooldown.
"""

from __future__ import annotations

import collections
import datetime
import fnmatch
import zoneinfo
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from lifeline.gateway import records as rec
from lifeline.gateway.alarms import AlarmTracker
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.timeparse import in_window
from lifeline.protocols import schema

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


class _St:
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


class _RuleRT:
    """Runtime of one rule: its states and the transitions shared by every trigger type."""

    for_ms = 0
    raises: int | None = None
    per_device = False  # states keyed by the reading's device (indexed in Engine.dev_rts)

    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        self.rule = rule
        self.eng = eng
        self.states: dict[bytes, _St] = {}
        self.last_fire: dict[bytes, int] = {}
        self.conds = rule.conditions
        self.dynamic = rule.conditions.has_dynamic or rule.conditions.has_time
        self.has_static = rule.conditions.has_static
        self.static_cache: dict[bytes, bool] = {}
        self.kinds = frozenset(_trigger_kinds(rule.trigger))

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
        st = _St(PENDING, now if since is None else since, device, value, alarm_id)
        self.states[key] = st
        if self.per_device:
            self.eng.track(key, self)
        self.check(key, st, now, out)

    def check(self, key: bytes, st: _St, now: int, out: list[Firing]) -> None:
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


class _ThresholdRT(_RuleRT):
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


class _BatteryRT(_RuleRT):
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


class _ReportRT(_RuleRT):
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


class _AlarmRT(_RuleRT):
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


class _RateRT(_RuleRT):
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


class _SilentRT(_RuleRT):
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


class _UplinkRT(_RuleRT):
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


class _UnackedRT(_RuleRT):
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


class _DiskRT(_RuleRT):
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


class _ScheduleRT(_RuleRT):
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


class _ModeRT(_RuleRT):
    def __init__(self, rule: m.Rule, eng: Engine) -> None:
        super().__init__(rule, eng)
        t = rule.trigger
        assert isinstance(t, m.ModeIs)
        self.modes = t.modes

    def on_tick(self, now: int, health: Health | None, out: list[Firing]) -> None:
        on = self.eng.mode in self.modes
        self.level(b"", GATEWAY, now, m.MODES.index(self.eng.mode), on, not on, out, "mode")


_RT_CLASSES: Mapping[type, type[_RuleRT]] = {
    m.Threshold: _ThresholdRT, m.BatteryLow: _BatteryRT, m.Report: _ReportRT, m.AlarmReport: _AlarmRT,
    m.Rate: _RateRT, m.Silent: _SilentRT, m.UplinkDown: _UplinkRT, m.AlarmUnacked: _UnackedRT, m.Disk: _DiskRT,
    m.Schedule: _ScheduleRT, m.ModeIs: _ModeRT,
}


# ------------------------------------------------------------------------------------------------ engine


Match = Callable[[Mapping[int, "int | bytes"]], bool]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The reading rules of one kind, arranged so a reading meets only those that can react."""

    sorted: tuple[tuple[int, bool, list[int], tuple[_RuleRT, ...]], ...]  # (field key, above?, thresholds, rules)
    matches: tuple[tuple[Match, tuple[_RuleRT, ...]], ...]  # one test shared by equal report rules
    always: tuple[_RuleRT, ...]  # rate and alarm rules


def _report_match(t: m.Report) -> Match:
    key, values, mask, negate = t.key, t.values, t.mask, t.negate

    def match(fields: Mapping[int, int | bytes]) -> bool:
        v = fields.get(key)
        if not isinstance(v, int):
            return False
        if values is not None:
            return (v in values) != negate
        return bool(v & mask) if mask else True

    return match


def _plans(rts: Sequence[_RuleRT]) -> dict[int, _Plan]:
    sorted_groups: dict[tuple[int, int, bool], list[tuple[int, _RuleRT]]] = {}
    match_groups: dict[tuple[int, tuple[int, frozenset[int] | None, int, bool]], list[_RuleRT]] = {}
    always: dict[int, list[_RuleRT]] = {}
    for rt in rts:
        t = rt.rule.trigger
        for kind in _trigger_kinds(t):
            if isinstance(t, m.Threshold):
                above = t.above is not None
                thr = t.above if t.above is not None else t.below
                assert thr is not None
                sorted_groups.setdefault((kind, t.field.key, above), []).append((thr, rt))
            elif isinstance(t, m.BatteryLow):
                sorted_groups.setdefault((kind, 15, False), []).append((t.below, rt))
            elif isinstance(t, m.Report):
                sig = (t.key, t.values, t.mask, t.negate)
                match_groups.setdefault((kind, sig), []).append(rt)
            else:
                always.setdefault(kind, []).append(rt)
    kinds = {k for k, _, _ in sorted_groups} | {k for k, _ in match_groups} | set(always)
    plans: dict[int, _Plan] = {}
    for kind in kinds:
        sg = []
        for (k, key, above), items in sorted_groups.items():
            if k != kind:
                continue
            items.sort(key=lambda x: x[0])
            sg.append((key, above, [thr for thr, _ in items], tuple(rt for _, rt in items)))
        mg = []
        for (k, _sig), group in match_groups.items():
            if k != kind:
                continue
            t0 = group[0].rule.trigger
            assert isinstance(t0, m.Report)
            mg.append((_report_match(t0), tuple(group)))
        plans[kind] = _Plan(tuple(sg), tuple(mg), tuple(always.get(kind, ())))
    return plans


def _trigger_kinds(t: m.Trigger) -> tuple[int, ...]:
    if isinstance(t, m.Threshold | m.Rate):
        return (t.field.kind,)
    if isinstance(t, m.Report | m.BatteryLow):
        return t.kinds
    if isinstance(t, m.AlarmReport):
        return (schema.K_ALARM_RAISED, schema.K_ALARM_CLEARED)
    return ()


class Engine:
    def __init__(self, ruleset: m.RuleSet, *, start_ms: int, attrs: Mapping[bytes, DeviceAttrs] | None = None,
                 alarms: AlarmTracker | None = None, mode: str = "daily") -> None:
        self.ruleset = ruleset
        self.start_ms = start_ms
        self.attrs: Mapping[bytes, DeviceAttrs] = attrs if attrs is not None else {}
        self.alarms = alarms
        self.mode = mode
        self.uplink_down = False
        self.down_since = start_ms
        self._unhealthy_since: int | None = None
        self._healthy_since: int | None = start_ms
        self.pending: set[tuple[_RuleRT, bytes]] = set()
        self.seen: dict[bytes, int] = {}
        self.active_changed = False
        self.suppressed = 0
        self._tz = zoneinfo.ZoneInfo(ruleset.timezone) if ruleset.timezone else None
        self._local_stamp = -1
        self._local: tuple[int, int, int, int] = (0, 0, 1, 1)
        self.rts: list[_RuleRT] = [_RT_CLASSES[type(r.trigger)](r, self) for r in ruleset.rules if r.enabled]
        self.by_name = {rt.rule.name: rt for rt in self.rts}
        self.plans: dict[int, _Plan] = _plans(self.rts)
        self.dev_rts: dict[bytes, set[_RuleRT]] = {}  # device -> reading rules holding a state for it
        self.tickers = [rt for rt in self.rts if not isinstance(rt.rule.trigger, m.READING_TRIGGERS)]
        self.silent = [rt for rt in self.tickers if isinstance(rt, _SilentRT)]
        self.track_seen = bool(self.silent)
        self._silent_devices: dict[_RuleRT, tuple[int, tuple[bytes, ...]]] = {}

    # ------------------------------------------------------------------ attributes

    def set_attrs(self, attrs: Mapping[bytes, DeviceAttrs]) -> None:
        self.attrs = attrs
        for rt in self.rts:
            rt.static_cache.clear()
        self._silent_devices.clear()

    def track(self, device: bytes, rt: _RuleRT) -> None:
        got = self.dev_rts.get(device)
        if got is None:
            self.dev_rts[device] = {rt}
        else:
            got.add(rt)

    def untrack(self, device: bytes, rt: _RuleRT) -> None:
        got = self.dev_rts.get(device)
        if got is not None:
            got.discard(rt)
            if not got:
                del self.dev_rts[device]

    def _reindex(self) -> None:
        self.dev_rts.clear()
        for rt in self.rts:
            if rt.per_device:
                for key in rt.states:
                    self.track(key, rt)

    def devices_for(self, rt: _RuleRT) -> tuple[bytes, ...]:
        cached = self._silent_devices.get(rt)
        if cached is not None and cached[0] == len(self.seen):
            return cached[1]
        ids = set(self.attrs) | set(self.seen)
        got = tuple(d for d in ids if d != GATEWAY and rt.static_ok(d, self.attrs.get(d)))
        self._silent_devices[rt] = (len(self.seen), got)
        return got

    def local(self, now_ms: int) -> tuple[int, int, int, int]:
        """(minute of day, weekday Monday=0, day of month, month) in the rule set's time zone."""
        stamp = now_ms // 60_000
        if stamp != self._local_stamp:
            d = datetime.datetime.fromtimestamp(now_ms / 1000, self._tz) if self._tz else \
                datetime.datetime.fromtimestamp(now_ms / 1000)
            self._local = (d.hour * 60 + d.minute, d.weekday(), d.day, d.month)
            self._local_stamp = stamp
        return self._local

    # ------------------------------------------------------------------ hot path

    def evaluate(self, r: rec.Reading) -> tuple[list[Firing], int | None] | None:
        """Firings caused by one reading and the priority its active rules want (None: nothing).

        Only the rules that can react are called: per kind, threshold rules on one field sit in a list
        sorted by threshold (a bisection finds those the value crosses), report rules with the same test
        share one evaluation, and rules already holding a state for the device are always called (they
        may clear). A normal reading of a device with no active rule costs a few dictionary lookups."""
        dev = r.device_id
        now = r.receptions[0].rx_ms
        out: list[Firing] | None = None
        if self.track_seen:
            self.seen[dev] = now
            for srt in self.silent:
                if dev in srt.states:
                    out = out if out is not None else []
                    assert isinstance(srt, _SilentRT)
                    srt.heard(dev, now, out)
        kind = r.kind
        plan = self.plans.get(kind)
        held = self.dev_rts.get(dev)
        if plan is None:
            return (out, None) if out else None
        fields = r.fields
        cands: list[_RuleRT] = []
        for key, above, thr, rts in plan.sorted:
            v = fields.get(key)
            if v.__class__ is not int:
                continue
            if above:
                n = bisect_left(thr, v)
                if n:
                    cands.extend(rts[:n])
            else:
                n = bisect_right(thr, v)
                if n < len(thr):
                    cands.extend(rts[n:])
        for match, rts in plan.matches:
            if match(fields):
                cands.extend(rts)
        if plan.always:
            cands.extend(plan.always)
        if held:
            cands.extend(rt for rt in held if kind in rt.kinds and rt not in cands)
        if not cands:
            return (out, None) if out else None
        if out is None:
            out = []
        for rt in cands:
            if rt.has_static and not rt.static_ok_cached(dev):
                continue
            rt.on_reading(r, now, out)
        prio: int | None = None
        held = self.dev_rts.get(dev)
        if held:
            for rt in held:
                if rt.raises is not None and kind in rt.kinds:
                    p = rt.active_raise(dev)
                    if p is not None and (prio is None or p < prio):
                        prio = p
        if not out and prio is None:
            return None
        return out, prio

    # ------------------------------------------------------------------ time

    def update_health(self, now: int, h: Health) -> bool:
        """Debounce the uplink's health into ``uplink_down`` (failover grace / restore). True if it changed."""
        fo = self.ruleset.failover
        healthy = (h.connected and (fo.stall_ms is None or h.puback_stall_ms < fo.stall_ms)
                   and (fo.backlog_age_ms is None or h.backlog_age_ms < fo.backlog_age_ms))
        if healthy:
            self._unhealthy_since = None
            if self._healthy_since is None:
                self._healthy_since = now
            if self.uplink_down and now - self._healthy_since >= fo.restore_ms:
                self.uplink_down = False
                return True
        else:
            self._healthy_since = None
            if self._unhealthy_since is None:
                self._unhealthy_since = now
            if not self.uplink_down and now - self._unhealthy_since >= fo.grace_ms:
                self.uplink_down = True
                self.down_since = self._unhealthy_since
                return True
        return False

    def tick(self, now: int, health: Health | None = None) -> list[Firing]:
        out: list[Firing] = []
        if health is not None and self.update_health(now, health):
            self._dynamic_changed(now, out, "uplink_restored" if not self.uplink_down else "uplink_down")
        for rt, key in list(self.pending):
            st = rt.states.get(key)
            if st is None or st.phase != PENDING:
                self.pending.discard((rt, key))
                continue
            rt.check(key, st, now, out)
        for rt in self.tickers:
            rt.on_tick(now, health, out)
        return out

    def set_mode(self, mode: str, now: int) -> list[Firing]:
        out: list[Firing] = []
        if mode == self.mode:
            return out
        self.mode = mode
        self._dynamic_changed(now, out, "mode")
        for rt in self.tickers:
            if isinstance(rt, _ModeRT):
                rt.on_tick(now, None, out)
        return out

    def alarms_changed(self, now: int) -> list[Firing]:
        """After an alarm was acknowledged or cleared: end (or start) the unacknowledged-alarm firings."""
        out: list[Firing] = []
        for rt in self.tickers:
            if isinstance(rt, _UnackedRT):
                rt.on_tick(now, None, out)
        return out

    def _dynamic_changed(self, now: int, out: list[Firing], reason: str) -> None:
        for rt in self.rts:
            if not rt.conds.has_dynamic:
                continue
            for key, st in list(rt.states.items()):
                if st.phase == ACTIVE and not rt.dyn_ok(now):
                    rt.end(key, now, out, reason)
                elif st.phase == PENDING:
                    rt.check(key, st, now, out)

    # ------------------------------------------------------------------ persistence and reload

    def active(self) -> list[ActiveState]:
        return [ActiveState(rt.rule.name, key, st.device, st.since, st.value, st.alarm_id)
                for rt in self.rts for key, st in rt.states.items() if st.phase == ACTIVE]

    def active_count(self) -> int:
        return sum(1 for rt in self.rts for st in rt.states.values() if st.phase == ACTIVE)

    def restore(self, states: Iterable[ActiveState]) -> list[ActiveState]:
        """Re-install persisted active firings (no actions run). Returns those whose rule is gone."""
        orphans: list[ActiveState] = []
        for s in states:
            rt = self.by_name.get(s.rule)
            if rt is None:
                orphans.append(s)
                continue
            st = _St(ACTIVE, s.since_ms, s.device, s.value, s.alarm_id)
            rt.states[s.key] = st
            rt.last_fire[s.key] = s.since_ms
        for rt in self.rts:
            if isinstance(rt, _UplinkRT) and b"" in rt.states:
                self.uplink_down = True
                self.down_since = rt.states[b""].since
                self._healthy_since = None
        self.active_changed = False
        self._reindex()
        return orphans

    def adopt(self, old: Engine, now: int) -> list[Firing]:
        """Take over the state of the engine this one replaces (reload). Rules kept by name keep their
        states; active firings of removed rules (or of rules whose trigger type changed) are cleared with
        the old rule's clear actions."""
        out: list[Firing] = []
        self.mode = old.mode
        self.uplink_down = old.uplink_down
        self.down_since = old.down_since
        self._unhealthy_since = old._unhealthy_since
        self._healthy_since = old._healthy_since
        self.seen = old.seen
        self.attrs = old.attrs
        self.start_ms = old.start_ms
        for ort in old.rts:
            nrt = self.by_name.get(ort.rule.name)
            if nrt is not None and type(nrt) is type(ort):
                nrt.states = ort.states
                nrt.last_fire = ort.last_fire
                if isinstance(nrt, _RateRT) and isinstance(ort, _RateRT):
                    nrt.history = ort.history
                for key, st in nrt.states.items():
                    if st.phase == PENDING:
                        self.pending.add((nrt, key))
                continue
            for key, st in ort.states.items():
                if st.phase == ACTIVE and not st.muted:
                    out.append(Firing(ort.rule, key, st.device, now, False, st.value, st.alarm_id, "rule_changed"))
        self.active_changed = True
        self._reindex()
        return out

    def rule_names(self) -> Sequence[str]:
        return [rt.rule.name for rt in self.rts]
