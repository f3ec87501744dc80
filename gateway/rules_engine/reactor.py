"""Firings -> audit records + action requests. Shared by the live service and the dry run (``rules test``),
so both make the same decisions (de-duplication, cooldown, rate limit) and report the same way.
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Callable, Mapping

from lifeline.gateway import records as rec
from lifeline.gateway.rules_engine import audit
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.dispatch import RATE_LIMITED, RUN, ActionRequest, ActionResult, Dispatcher
from lifeline.gateway.rules_engine.engine import DeviceAttrs, Firing
from lifeline.protocols import schema

Submit = Callable[[ActionRequest], None]
OnDecision = Callable[[Firing, m.ActionSpec, str], None]


def value_field(t: m.Trigger) -> tuple[str, str, int]:
    """(field name, unit, scale) of a trigger's reported value."""
    if isinstance(t, m.Threshold):
        return t.field.name, t.field.unit, t.field.scale
    if isinstance(t, m.Rate):
        return t.field.name + "_rate", t.field.unit, t.field.scale
    if isinstance(t, m.BatteryLow):
        return "battery", "mV", 1
    if isinstance(t, m.Silent):
        return "silent", "s", 1
    if isinstance(t, m.UplinkDown):
        return "uplink_down", "s", 1
    if isinstance(t, m.Disk):
        return "disk", "%" if t.quota_pct is not None else "MB", 1
    if isinstance(t, m.Report):
        return t.name, "", 1
    if isinstance(t, m.AlarmReport | m.AlarmUnacked):
        return "alarm_id", "", 1
    return "", "", 1


class Reactor:
    def __init__(self, gateway_id: str, ruleset: m.RuleSet, *, attrs: Callable[[bytes], DeviceAttrs | None],
                 state: Callable[[], tuple[str, bool]], submit: Submit, seq: audit.AuditSeq,
                 dispatcher: Dispatcher | None = None, on_decision: OnDecision | None = None,
                 cause_of: Callable[[bytes, int], int | None] | None = None) -> None:
        self.gateway_id = gateway_id
        self.ruleset = ruleset
        self.attrs = attrs
        self.state = state  # -> (mode, uplink_down)
        self.submit = submit
        self.seq = seq
        self.dispatcher = dispatcher or Dispatcher()
        self.on_decision = on_decision
        self.cause_of = cause_of
        self.decisions: dict[str, int] = {}
        self._tz = zoneinfo.ZoneInfo(ruleset.timezone) if ruleset.timezone else None

    def set_ruleset(self, ruleset: m.RuleSet) -> None:
        self.ruleset = ruleset
        self._tz = zoneinfo.ZoneInfo(ruleset.timezone) if ruleset.timezone else None
        self.dispatcher.forget_rule({r.name for r in ruleset.rules})

    def local_iso(self, at_ms: int) -> str:
        d = datetime.datetime.fromtimestamp(at_ms / 1000, self._tz) if self._tz else \
            datetime.datetime.fromtimestamp(at_ms / 1000).astimezone()
        return d.isoformat(timespec="seconds")

    # ------------------------------------------------------------------ template values

    def values(self, f: Firing, seq: int) -> dict[str, str]:
        rule = f.rule
        mode, down = self.state()
        attrs = self.attrs(f.device) if f.device != rec.GATEWAY_DEVICE else None
        fname, unit, scale = value_field(rule.trigger)
        value = ""
        if f.value is not None:
            value = f"{f.value / scale:g}" if scale != 1 else str(f.value)
        cause = ""
        if f.alarm_id is not None and self.cause_of is not None:
            c = self.cause_of(f.device, f.alarm_id)
            if c is not None and 0 <= c < len(schema.ALARM_CAUSES):
                cause = schema.ALARM_CAUSES[c]
        return {
            "gateway": self.gateway_id, "rule": rule.name, "description": rule.description,
            "state": "fired" if f.fired else "cleared", "reason": f.reason,
            "device": "" if f.device == rec.GATEWAY_DEVICE else f.device.hex(),
            "kind": attrs.kind if attrs else "", "field": fname, "value": value, "unit": unit,
            "raw": "" if f.value is None else str(f.value),
            "address": attrs.address if attrs else "", "spatial_unit": attrs.spatial_unit if attrs else "",
            "tags": ",".join(sorted(attrs.tags)) if attrs else "",
            "data_class": schema.CLASS_NAMES[attrs.data_class] if attrs else "",
            "time": self.local_iso(f.at_ms), "mode": mode, "uplink": "down" if down else "up",
            "alarm_id": "" if f.alarm_id is None else str(f.alarm_id), "cause": cause, "seq": str(seq),
        }

    def dedupe_key(self, f: Firing, spec: m.ActionSpec) -> bytes:
        scope = spec.dedupe
        if scope == "key":
            return f.key
        if scope == "device":
            return f.device
        if scope == "spatial_unit":
            a = self.attrs(f.device)
            return ("unit:" + a.spatial_unit).encode() if a is not None and a.spatial_unit else f.device
        return b""

    # ------------------------------------------------------------------ firings

    def handle(self, firings: list[Firing]) -> list[rec.GatewayEvent]:
        events: list[rec.GatewayEvent] = []
        mode, down = self.state()
        for f in firings:
            rule = f.rule
            seq = self.seq.take()
            fields: dict[int, int | bytes] = {
                audit.F_RULE: audit.text(rule.name), audit.F_TRIGGER: m.TRIGGER_CODES[rule.trigger_type],
                audit.F_MODE: m.MODES.index(mode), audit.F_UPLINK: int(down)}
            if f.value is not None:
                fields[audit.F_VALUE] = f.value
            if f.alarm_id is not None:
                fields[audit.F_ALARM_ID] = f.alarm_id
            if f.reason:
                fields[audit.F_REASON] = audit.text(f.reason)
            if f.muted:
                fields[audit.F_MUTED] = 1
            events.append(audit.event(audit.EV_RULE_FIRED if f.fired else audit.EV_RULE_CLEARED, seq, f.device,
                                      f.at_ms, rule.priority, fields))
            if f.muted:
                continue
            specs = rule.actions if f.fired else rule.clear_actions
            values: dict[str, str] | None = None
            for spec in specs:
                if spec.type == "priority":
                    continue
                dkey = self.dedupe_key(f, spec)
                decision = self.dispatcher.decide(rule.name, spec, dkey, f.at_ms)
                self.decisions[decision] = self.decisions.get(decision, 0) + 1
                if self.on_decision is not None:
                    self.on_decision(f, spec, decision)
                if decision == RUN:
                    if values is None:
                        values = self.values(f, seq)
                    self.submit(ActionRequest(rule.name, spec, seq, f.device, (rule.name, spec.index, dkey), values,
                                              f.at_ms, rule.priority, f.fired))
                elif decision == RATE_LIMITED and self.dispatcher.report_limit(rule.name, spec, f.at_ms):
                    limited = ActionResult(False, "rate_limited", 0, "rate limit reached", "", 0)
                    events.append(self.result_event(rule.name, spec, seq, f.device, f.at_ms, rule.priority, limited))
        return events

    def result_event(self, rule: str, spec: m.ActionSpec, firing_seq: int, device: bytes, at_ms: int, priority: int,
                     res: ActionResult) -> rec.GatewayEvent:
        fields: dict[int, int | bytes] = {
            audit.FA_RULE: audit.text(rule), audit.FA_INDEX: spec.index, audit.FA_TYPE: m.ACTION_CODES[spec.type],
            audit.FA_RESULT: audit.RESULTS.index(res.result), audit.FA_ATTEMPTS: res.attempts,
            audit.FA_LATENCY_MS: res.latency_ms, audit.FA_FIRING: firing_seq}
        if res.detail:
            fields[audit.FA_DETAIL] = audit.text(res.detail)
        if res.target:
            fields[audit.FA_TARGET] = audit.text(res.target)
        return audit.event(audit.EV_ACTION, self.seq.take(), device, at_ms, priority, fields)


def firing_json(values: Mapping[str, str]) -> dict[str, str]:
    """The default MQTT/webhook payload: the firing's values without personal data (no address)."""
    keys = ("gateway", "rule", "state", "reason", "device", "kind", "field", "value", "unit", "spatial_unit", "time",
            "mode", "uplink", "alarm_id", "cause", "seq")
    return {k: values[k] for k in keys if values.get(k)}
