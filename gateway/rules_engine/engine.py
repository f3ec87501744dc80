"""The rule engine: readings and time in, :class:`Firing` records out. Pure logic, no I/O, no asyncio.

* :meth:`Engine.evaluate` runs on the ingest hot path, once per accepted reading. Rules are indexed by
  report kind, threshold rules by field and sorted by threshold, report rules by their test, so a
  reading meets only the rules that can react to it; device conditions (kind, spatial unit, class,
  tags) are checked once per rule and device and cached.
* :meth:`Engine.tick` handles what time alone changes: durations that elapsed, silent devices, the
  uplink's health, unacknowledged alarms, disk pressure, schedules, the operating mode.

Level triggers (threshold, rate, report, battery, silent, uplink, disk, mode, alarm) keep a state per
key (a device, an alarm, or the gateway): idle -> pending (the set condition holds; waits ``for``) ->
active (fired) -> idle (the clear condition holds: hysteresis; a cleared firing is reported too).
Repeated readings of an active condition fire nothing: one alarm, one siren. Conditions gate the
firing: a pending state fires once they hold; when the mode or the uplink state changes, active firings
whose mode/uplink condition no longer holds are cleared (that is how "uplink restored" ends local
escalation). Momentary triggers (fault reports, schedules) fire per occurrence, muted within the rule's
cooldown. The per-trigger state machines live in ``triggers.py``.
"""

from __future__ import annotations

import datetime
import zoneinfo
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from lifeline.gateway import records as rec
from lifeline.gateway.alarms import AlarmTracker
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.triggers import (
    ACTIVE,
    GATEWAY,
    PENDING,
    RT_CLASSES,
    ActiveState,
    DeviceAttrs,
    Firing,
    Health,
    ModeRT,
    RateRT,
    RuleRT,
    SilentRT,
    State,
    UnackedRT,
    UplinkRT,
    alarm_key,
    trigger_kinds,
)

__all__ = ["ACTIVE", "GATEWAY", "PENDING", "ActiveState", "DeviceAttrs", "Engine", "Firing", "Health", "State",
           "alarm_key"]


# ------------------------------------------------------------------------------------------------ engine


Match = Callable[[Mapping[int, "int | bytes"]], bool]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The reading rules of one kind, arranged so a reading meets only those that can react."""

    sorted: tuple[tuple[int, bool, list[int], tuple[RuleRT, ...]], ...]  # (field key, above?, thresholds, rules)
    matches: tuple[tuple[Match, tuple[RuleRT, ...]], ...]  # one test shared by equal report rules
    always: tuple[RuleRT, ...]  # rate and alarm rules


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


def _plans(rts: Sequence[RuleRT]) -> dict[int, _Plan]:
    sorted_groups: dict[tuple[int, int, bool], list[tuple[int, RuleRT]]] = {}
    match_groups: dict[tuple[int, tuple[int, frozenset[int] | None, int, bool]], list[RuleRT]] = {}
    always: dict[int, list[RuleRT]] = {}
    for rt in rts:
        t = rt.rule.trigger
        for kind in trigger_kinds(t):
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
        self.pending: set[tuple[RuleRT, bytes]] = set()
        self.seen: dict[bytes, int] = {}
        self.active_changed = False
        self.suppressed = 0
        self._tz = zoneinfo.ZoneInfo(ruleset.timezone) if ruleset.timezone else None
        self._local_stamp = -1
        self._local: tuple[int, int, int, int] = (0, 0, 1, 1)
        self.rts: list[RuleRT] = [RT_CLASSES[type(r.trigger)](r, self) for r in ruleset.rules if r.enabled]
        self.by_name = {rt.rule.name: rt for rt in self.rts}
        self.plans: dict[int, _Plan] = _plans(self.rts)
        self.dev_rts: dict[bytes, set[RuleRT]] = {}  # device -> reading rules holding a state for it
        self.tickers = [rt for rt in self.rts if not isinstance(rt.rule.trigger, m.READING_TRIGGERS)]
        self.silent = [rt for rt in self.tickers if isinstance(rt, SilentRT)]
        self.track_seen = bool(self.silent)
        self._silent_devices: dict[RuleRT, tuple[int, tuple[bytes, ...]]] = {}

    def reset_clock(self, now: int) -> None:
        """The service got its real clock (at start): time-based bookkeeping starts from ``now``."""
        self.start_ms = now
        self.down_since = now
        self._unhealthy_since = None
        self._healthy_since = now

    # ------------------------------------------------------------------ attributes

    def set_attrs(self, attrs: Mapping[bytes, DeviceAttrs]) -> None:
        self.attrs = attrs
        for rt in self.rts:
            rt.static_cache.clear()
        self._silent_devices.clear()

    def track(self, device: bytes, rt: RuleRT) -> None:
        got = self.dev_rts.get(device)
        if got is None:
            self.dev_rts[device] = {rt}
        else:
            got.add(rt)

    def untrack(self, device: bytes, rt: RuleRT) -> None:
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

    def devices_for(self, rt: RuleRT) -> tuple[bytes, ...]:
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
                    assert isinstance(srt, SilentRT)
                    srt.heard(dev, now, out)
        kind = r.kind
        plan = self.plans.get(kind)
        held = self.dev_rts.get(dev)
        if plan is None:
            return (out, None) if out else None
        fields = r.fields
        cands: list[RuleRT] = []
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
            if isinstance(rt, ModeRT):
                rt.on_tick(now, None, out)
        return out

    def alarms_changed(self, now: int) -> list[Firing]:
        """After an alarm was acknowledged or cleared: end (or start) the unacknowledged-alarm firings."""
        out: list[Firing] = []
        for rt in self.tickers:
            if isinstance(rt, UnackedRT):
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
            st = State(ACTIVE, s.since_ms, s.device, s.value, s.alarm_id)
            rt.states[s.key] = st
            rt.last_fire[s.key] = s.since_ms
        for rt in self.rts:
            if isinstance(rt, UplinkRT) and b"" in rt.states:
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
                if isinstance(nrt, RateRT) and isinstance(ort, RateRT):
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
