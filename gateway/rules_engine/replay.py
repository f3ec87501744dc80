"""Dry runs: feed recorded or simulated readings through the real engine and reactor with a virtual clock,
and report what would have fired, when, and which actions would have run or been suppressed.

Recording format (JSON lines, docs/rules.md "Replay files"); blank lines and ``#`` comments are skipped:

    {"t": "2026-03-01T10:00:00Z", "device": "70b3d57ed0000001", "kind": "water_level", "fields": {"level": 250}}
    {"t": "+30s", "device": "70b3d57ed0000001", "kind": "water_level", "fields": {"level": "312 mm"}}
    {"t": "+1m", "uplink": "down"}                      platform unreachable from now on ("up" to restore)
    {"t": "+1m", "mode": "emergency"}
    {"t": "+2m", "ack": {"device": "70b3...", "alarm_id": 3, "alarm_state": 1}}
    {"t": "+5m", "disk": {"quota_pct": 93, "free_mb": 120}}
    {"t": "+10m"}                                         just let time pass

``t``: an ISO 8601 time, Unix milliseconds, or ``+<duration>`` after the previous line (the first line's
relative time counts from 2026-01-01T00:00:00Z). Times never go back. Field values are physical (the
schema's unit: ``250`` mm, ``{"value": 21.5, "unit": "degC"}``), enum labels (``"alarm"``), meter flag
lists (``["leak"]``) or fault code names; ``"kind"`` may be omitted for ``"type": "reading"`` lines
exported by the platform sink (``batch.record_to_json``), whose ``rx_ms`` is used when ``t`` is absent.
Every bad line is reported with its number and reason and skipped.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lifeline.gateway import records as rec
from lifeline.gateway.alarms import AlarmTracker
from lifeline.gateway.ingress.base import Reception
from lifeline.gateway.priority import classify
from lifeline.gateway.rules_engine import audit, timeparse
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.dispatch import RUN, ActionRequest
from lifeline.gateway.rules_engine.engine import DeviceAttrs, Engine, Firing, Health
from lifeline.gateway.rules_engine.reactor import Reactor
from lifeline.protocols import schema

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_QUANTITY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([^\s\d].*)?$")
MAX_LINE = 64 * 1024


class ReplayError(ValueError):
    """One bad line; ``reason`` is what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Step:
    line: int
    t_ms: int
    reading: tuple[bytes, int, dict[int, int]] | None = None  # device, kind, wire fields
    uplink: bool | None = None  # True up, False down
    mode: str | None = None
    ack: tuple[bytes, int, int] | None = None
    disk: tuple[float | None, float | None] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    t_ms: int
    what: str  # fired | cleared | muted | action | suppressed | mode | uplink | alarm
    rule: str = ""
    device: str = ""
    detail: str = ""
    line: int = 0

    def to_json(self) -> dict[str, Any]:
        d = {"t": iso(self.t_ms), "t_ms": self.t_ms, "what": self.what, "rule": self.rule, "device": self.device,
             "detail": self.detail, "line": self.line}
        return {k: v for k, v in d.items() if v != ""}


def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _time(value: object, prev: int | None) -> int:
    if isinstance(value, bool):
        raise ReplayError("t: expected a time")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ReplayError("t: expected an ISO time, Unix ms or +duration")
    if value.startswith("+"):
        try:
            return (prev if prev is not None else DEFAULT_START_MS) + timeparse.duration_ms(value[1:])
        except ValueError as e:
            raise ReplayError(f"t: {e}") from None
    try:
        d = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"t: {value!r} is not an ISO 8601 time") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.UTC)
    return int(d.timestamp() * 1000)


def _device(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 16:
        raise ReplayError("device: expected 16 hex characters")
    try:
        return bytes.fromhex(value.lower())
    except ValueError:
        raise ReplayError("device: expected 16 hex characters") from None


def wire_fields(kind: int, given: Mapping[str, Any]) -> dict[int, int]:
    """Physical / labelled field values (as ``record_to_json`` renders them) -> wire integers."""
    out: dict[int, int] = {}
    for name, v in given.items():
        spec = next((f for f in schema.KINDS[kind][3] if f[1] == name), None)
        if spec is None and name.isdigit():
            spec = schema.field(kind, int(name))
            if spec is not None and isinstance(v, int) and not isinstance(v, bool):
                out[spec[0]] = v
                continue
        if spec is None:
            raise ReplayError(f"fields: {schema.KINDS[kind][0]} has no field {name!r}")
        key, fname, unit, scale, lo, hi = spec[0], spec[1], spec[2], spec[3], spec[4], spec[5]
        if spec[6] != schema.T_INT:
            raise ReplayError(f"fields.{name}: byte fields cannot be replayed")
        if isinstance(v, dict):
            if v.get("unit", unit) != unit:
                raise ReplayError(f"fields.{name}: unit {v.get('unit')!r}, the schema's is {unit!r}")
            v = v.get("value")
        q = _QUANTITY.match(v) if isinstance(v, str) else None
        if q is not None:
            if q.group(2) and q.group(2).strip() != unit:
                raise ReplayError(f"fields.{name}: unit {q.group(2).strip()!r}, the schema's is {unit!r}")
            v = float(q.group(1))
        if isinstance(v, str):
            labels = schema.ENUMS.get(fname, ())
            codes = {n: c for c, n in schema.FAULT_CODES.items()} if fname == "code" else {}
            if v in labels:
                wire = labels.index(v)
            elif v in codes:
                wire = codes[v]
            else:
                raise ReplayError(f"fields.{name}: {v!r} is not one of its values")
        elif isinstance(v, list):
            if fname != "flags" or not all(isinstance(x, str) and x in schema.METER_FLAGS for x in v):
                raise ReplayError(f"fields.{name}: a list is only for meter flags ({', '.join(schema.METER_FLAGS)})")
            wire = sum(1 << schema.METER_FLAGS.index(x) for x in v)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            wire = round(v * scale)
        else:
            raise ReplayError(f"fields.{name}: expected a number")
        if not lo <= wire <= hi:
            raise ReplayError(f"fields.{name}: {wire / scale:g} {unit} is outside {lo / scale:g}..{hi / scale:g}")
        out[key] = wire
    return out


def parse_line(obj: object, line: int, prev: int | None) -> Step:
    if not isinstance(obj, dict):
        raise ReplayError("expected a JSON object")
    known = {"t", "device", "kind", "fields", "uplink", "mode", "ack", "disk", "type", "rx_ms", "note"}
    extra = sorted(set(obj) - known - {"fcnt", "node_time", "node_time_iso", "rx_iso", "kind_id", "data_class",
                                       "priority", "flags", "receptions", "event"})
    if extra:
        raise ReplayError(f"unknown key {extra[0]!r}")
    if obj.get("type") == "event":
        raise ReplayError("gateway event records are not replayed")
    if "t" in obj:
        t = _time(obj["t"], prev)
    elif isinstance(obj.get("rx_ms"), int):
        t = int(obj["rx_ms"])
    elif prev is not None:
        t = prev
    else:
        raise ReplayError("t: missing on the first line")
    if prev is not None and t < prev:
        raise ReplayError(f"t: {iso(t)} is before the previous line ({iso(prev)}); times never go back")
    if "device" in obj:
        dev = _device(obj["device"])
        kname = obj.get("kind")
        kid = schema.kind_id_by_name(kname) if isinstance(kname, str) else None
        if kid is None or schema.is_downlink_kind(kid):
            raise ReplayError(f"kind: {kname!r} is not a report kind")
        fields = obj.get("fields", {})
        if not isinstance(fields, dict):
            raise ReplayError("fields: expected an object")
        return Step(line, t, reading=(dev, kid, wire_fields(kid, fields)))
    if "uplink" in obj:
        if obj["uplink"] not in ("up", "down"):
            raise ReplayError("uplink: expected \"up\" or \"down\"")
        return Step(line, t, uplink=obj["uplink"] == "up")
    if "mode" in obj:
        if obj["mode"] not in m.MODES:
            raise ReplayError(f"mode: expected one of {', '.join(m.MODES)}")
        return Step(line, t, mode=str(obj["mode"]))
    if "ack" in obj:
        a = obj["ack"]
        if not isinstance(a, dict) or not isinstance(a.get("alarm_id"), int):
            raise ReplayError("ack: expected {\"device\": ..., \"alarm_id\": n, \"alarm_state\": 1}")
        st = a.get("alarm_state", 1)
        if not isinstance(st, int) or not 1 <= st <= 3:
            raise ReplayError("ack.alarm_state: 1 acknowledged, 2 handled, 3 closed")
        return Step(line, t, ack=(_device(a.get("device")), int(a["alarm_id"]), st))
    if "disk" in obj:
        d = obj["disk"]
        if not isinstance(d, dict):
            raise ReplayError("disk: expected {\"quota_pct\": n, \"free_mb\": n}")
        vals = [d.get("quota_pct"), d.get("free_mb")]
        if any(x is not None and (isinstance(x, bool) or not isinstance(x, int | float)) for x in vals):
            raise ReplayError("disk: numbers expected")
        return Step(line, t, disk=(vals[0], vals[1]))
    return Step(line, t)


def read_steps(lines: Iterable[str]) -> tuple[list[Step], list[tuple[int, str]]]:
    """Parse a recording; returns the steps and the rejected lines (number, reason)."""
    steps: list[Step] = []
    bad: list[tuple[int, str]] = []
    prev: int | None = None
    for n, text in enumerate(lines, 1):
        s = text.strip()
        if not s or s.startswith("#"):
            continue
        if len(s) > MAX_LINE:
            bad.append((n, "line too long"))
            continue
        try:
            obj = json.loads(s)
            if isinstance(obj, dict) and obj.get("type") == "event":
                continue  # gateway event records in a platform export: not readings
            step = parse_line(obj, n, prev)
        except json.JSONDecodeError as e:
            bad.append((n, f"not JSON: {e.msg}"))
            continue
        except ReplayError as e:
            bad.append((n, str(e)))
            continue
        prev = step.t_ms
        steps.append(step)
    return steps, bad


@dataclass
class DryRun:
    """The engine, the alarm tracker and the reactor with a virtual clock; actions are recorded."""

    ruleset: m.RuleSet
    attrs: dict[bytes, DeviceAttrs] = field(default_factory=dict)
    gateway_id: str = "dry-run"
    tick_ms: int = 1000
    outcomes: list[Outcome] = field(default_factory=list)
    on_outcome: Callable[[Outcome], None] | None = None

    def __post_init__(self) -> None:
        self.now = 0
        self.health = Health(connected=True)
        self.tracker = AlarmTracker()
        self.engine: Engine | None = None
        self._line = 0
        self._next_id = 1
        seq = audit.AuditSeq()
        self.reactor = Reactor(self.gateway_id, self.ruleset, attrs=self.attrs.get, state=self._state,
                               submit=self._submit, seq=seq, on_decision=self._decision, cause_of=self._cause_of)

    def _cause_of(self, device: bytes, alarm_id: int) -> int | None:
        a = self.tracker.get(device, alarm_id)
        return a.cause if a is not None else None

    def _state(self) -> tuple[str, bool]:
        assert self.engine is not None
        return self.engine.mode, self.engine.uplink_down

    def _out(self, o: Outcome) -> None:
        self.outcomes.append(o)
        if self.on_outcome is not None:
            self.on_outcome(o)

    def _submit(self, req: ActionRequest) -> None:
        self.reactor.dispatcher.done(req.dedupe_key)
        self._out(Outcome(self.now, "action", req.rule, req.device.hex() if req.device != rec.GATEWAY_DEVICE else "",
                          describe_action(req.spec, req.values, self.ruleset.contacts), self._line))

    def _decision(self, f: Firing, spec: m.ActionSpec, decision: str) -> None:
        if decision != RUN:
            self._out(Outcome(f.at_ms, "suppressed", f.rule.name, _dev(f.device), f"{spec.type}: {decision}",
                              self._line))

    def _firings(self, firings: list[Firing]) -> None:
        for f in firings:
            what = "muted" if f.muted else ("fired" if f.fired else "cleared")
            detail = ""
            if f.value is not None:
                from lifeline.gateway.rules_engine.reactor import value_field

                name, unit, scale = value_field(f.rule.trigger)
                detail = f"{name}={f.value / scale:g}{(' ' + unit) if unit else ''}"
            if f.reason:
                detail = (detail + " " if detail else "") + f"({f.reason})"
            self._out(Outcome(f.at_ms, what, f.rule.name, _dev(f.device), detail, self._line))
            if f.fired and isinstance(f.rule.trigger, m.AlarmUnacked) and f.alarm_id is not None:
                self.tracker.escalated(f.device, f.alarm_id, f.at_ms)
        if firings:
            self.reactor.handle(firings)

    def _advance(self, t: int) -> None:
        assert self.engine is not None
        while self.now < t:
            self.now = min(t, self.now + self.tick_ms)
            before = self.engine.uplink_down
            self._firings(self.engine.tick(self.now, self.health))
            if self.engine.uplink_down != before:
                self._out(Outcome(self.now, "uplink", detail="down" if self.engine.uplink_down else "restored",
                                  line=self._line))

    def run(self, steps: Iterable[Step], tail_ms: int = 0) -> list[Outcome]:
        for step in steps:
            if self.engine is None:
                self.now = step.t_ms
                self.engine = Engine(self.ruleset, start_ms=step.t_ms, attrs=self.attrs, alarms=self.tracker)
            self._line = step.line
            self._advance(step.t_ms)
            self._apply(step)
        if self.engine is not None and tail_ms:
            self._line = 0
            self._advance(self.now + tail_ms)
        return self.outcomes

    def _apply(self, step: Step) -> None:
        eng = self.engine
        assert eng is not None
        now = step.t_ms
        if step.reading is not None:
            dev, kind, fields = step.reading
            r = rec.Reading(self._next_id, dev, self._next_id, 0, kind, fields,
                            schema.KINDS[kind][1], classify(kind, fields), 0, 0, (Reception("replay", "replay", now),))
            self._next_id += 1
            res = eng.evaluate(r)
            firings = list(res[0]) if res is not None else []
            aid, cause = fields.get(1), fields.get(2)
            if kind == schema.K_ALARM_RAISED and aid is not None and cause is not None:
                self.tracker.raised(dev, aid, cause, fields.get(3), now)
            elif (kind == schema.K_ALARM_CLEARED and aid is not None and cause is not None
                  and self.tracker.cleared(dev, aid, cause, now) is not None):
                firings += eng.alarms_changed(now)
            self._firings(firings)
        elif step.uplink is not None:
            self.health = Health(connected=step.uplink, disk_quota_pct=self.health.disk_quota_pct,
                                 disk_free_mb=self.health.disk_free_mb)
            self._advance_same(now)
        elif step.mode is not None:
            if step.mode != eng.mode:
                self._out(Outcome(now, "mode", detail=f"{eng.mode} -> {step.mode}", line=step.line))
            self._firings(eng.set_mode(step.mode, now))
        elif step.ack is not None:
            dev, aid, st = step.ack
            self.tracker.platform_ack(dev, aid, st, f"replay-{step.line}", now)
            self._out(Outcome(now, "alarm", device=dev.hex(), detail=f"alarm {aid} acknowledged (state {st})",
                              line=step.line))
            self._firings(eng.alarms_changed(now))
        elif step.disk is not None:
            self.health = Health(connected=self.health.connected, disk_quota_pct=step.disk[0],
                                 disk_free_mb=step.disk[1])
            self._advance_same(now)

    def _advance_same(self, now: int) -> None:
        eng = self.engine
        assert eng is not None
        before = eng.uplink_down
        self._firings(eng.tick(now, self.health))
        if eng.uplink_down != before:
            self._out(Outcome(now, "uplink", detail="down" if eng.uplink_down else "restored", line=self._line))


def _dev(device: bytes) -> str:
    return "" if device == rec.GATEWAY_DEVICE else device.hex()


def describe_action(spec: m.ActionSpec, values: Mapping[str, str], contacts: Mapping[str, tuple[str, ...]]) -> str:
    b = spec.body
    if isinstance(b, m.MqttAction):
        return f"mqtt {spec.output}: {b.topic.render(values)}" + (f" {b.payload.render(values)}" if b.payload else "")
    if isinstance(b, m.GpioAction):
        return f"gpio {spec.output}: line {b.line} {'on' if b.value else 'off'}" + (
            f" for {b.pulse_ms} ms" if b.pulse_ms else "")
    if isinstance(b, m.SmsAction):
        to = []
        for t in b.to:
            x = t.render(values)
            to.append(f"{x}({len(contacts.get(x[1:], ()))})" if x.startswith("@") else x)
        return f"sms {spec.output}: to {', '.join(to)}: {b.text.render(values)!r}"
    if isinstance(b, m.WebhookAction):
        return f"webhook {spec.output}: POST {b.path.render(values) if b.path else '/'}"
    if isinstance(b, m.DownlinkAction):
        fields = " ".join(f"{k}={v}" for k, v in b.fields.items())
        return f"downlink {schema.KINDS[b.command][0]} to {b.device.render(values)} {fields}".rstrip()
    return spec.type
