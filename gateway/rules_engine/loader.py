"""Rule files (TOML) -> a validated :class:`~lifeline.gateway.rules_engine.model.RuleSet`.

Everything is checked at load: syntax (``tomllib``, with its line), then every table and key; unknown keys
are errors. A problem is a :class:`RulesError` whose text reads ``FILE:LINE: KEY: REASON``; the line comes
from a small index of table headers and keys (``lineindex.py``). The reference is docs/rules.md.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lifeline.gateway.rules_engine import lineindex, timeparse
from lifeline.gateway.rules_engine import model as m
from lifeline.protocols import schema

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")
_QUANTITY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([^\s\d].*)?$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_METERS = (schema.K_WATER_METER, schema.K_GAS_METER, schema.K_ELECTRICITY_METER)
_REQUIRED: Any = object()
MAX_FILE_BYTES = 1 << 20
MAX_RULES = 10_000

DEFAULT_TIMEOUT_MS = {"mqtt": 2000, "gpio": 1000, "sms": 60_000, "webhook": 5000, "downlink": 5000, "priority": 0}


def _bit(name: str) -> int:
    return 1 << schema.METER_FLAGS.index(name)


# name -> (kinds, field key, values, mask, negate, momentary)
NAMED_REPORTS: Mapping[str, tuple[tuple[int, ...], int, frozenset[int] | None, int, bool, bool]] = {
    "smoke_alarm": ((schema.K_SMOKE,), 1, frozenset({2}), 0, False, False),
    "smoke_pre_alarm": ((schema.K_SMOKE,), 1, frozenset({1}), 0, False, False),
    "smoke_hushed": ((schema.K_SMOKE,), 1, frozenset({3}), 0, False, False),
    "smoke_chamber_fault": ((schema.K_SMOKE,), 3, frozenset({0}), 0, True, False),
    "smoke_self_test_fail": ((schema.K_SMOKE,), 4, frozenset({2}), 0, False, False),
    "cover_open": ((schema.K_TILT,), 2, frozenset({1, 2}), 0, False, False),
    "cover_displaced": ((schema.K_TILT,), 2, frozenset({2}), 0, False, False),
    "manhole_flooded": ((schema.K_TILT,), 2, frozenset({3}), 0, False, False),
    "leak": (_METERS, 3, None, _bit("leak"), False, False),
    "tamper": (_METERS, 3, None, _bit("tamper"), False, False),
    "reverse_flow": (_METERS, 3, None, _bit("reverse_flow"), False, False),
    "valve_closed": (_METERS, 3, None, _bit("valve_closed"), False, False),
    "meter_low_battery": (_METERS, 3, None, _bit("low_battery"), False, False),
    "sensor_fault": ((schema.K_WATER_LEVEL,), 3, frozenset({0}), 0, True, False),
    "fault": ((schema.K_FAULT,), 1, None, 0, False, True),
}


class RulesError(Exception):
    """An invalid rule file. ``str()`` reads ``FILE:LINE: KEY: REASON`` (line and key when known)."""

    def __init__(self, file: str, line: int | None, key: str, reason: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.reason = reason
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


def _render_path(path: lineindex.Path) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + (p if re.match(r"^[A-Za-z0-9_-]+$", p) else f'"{p}"')
    return out


class _Doc:
    """One parsed file with its line index."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.index = lineindex.index(text)

    def fail(self, path: lineindex.Path, reason: str) -> NoReturn:
        raise RulesError(self.file, lineindex.line_of(self.index, path), _render_path(path), reason)


class _T:
    """Typed reads from one table; ``done()`` rejects keys that were not read."""

    def __init__(self, doc: _Doc, path: lineindex.Path, data: Mapping[str, Any]) -> None:
        self.doc = doc
        self.path = path
        self.data = data
        self.seen: set[str] = set()

    def fail(self, name: str | None, reason: str) -> NoReturn:
        self.doc.fail(self.path if name is None else (*self.path, name), reason)

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, default: Any = _REQUIRED) -> Any:
        self.seen.add(name)
        if name in self.data:
            return self.data[name]
        if default is _REQUIRED:
            self.fail(name, "required key missing")
        return default

    def text(self, name: str, default: Any = _REQUIRED, pattern: re.Pattern[str] | None = None,
             choices: Sequence[str] | None = None) -> Any:
        v = self.get(name, default)
        if v is default and default is not _REQUIRED:
            return v
        if not isinstance(v, str):
            self.fail(name, f"expected a string, got {_tname(v)}")
        if pattern is not None and not pattern.match(v):
            self.fail(name, f"{v!r} does not match {pattern.pattern}")
        if choices is not None and v not in choices:
            self.fail(name, f"{v!r} is not one of {', '.join(choices)}")
        return v

    def texts(self, name: str, default: Any = None) -> tuple[str, ...] | None:
        """A string or a list of strings."""
        v = self.get(name, default)
        if v is default:
            return None if v is None else tuple(v)
        if isinstance(v, str):
            return (v,)
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            self.fail(name, "expected a string or a non-empty list of strings")
        return tuple(v)

    def integer(self, name: str, default: Any = _REQUIRED, lo: int | None = None, hi: int | None = None) -> int:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(name, f"expected an integer, got {_tname(v)}")
        if lo is not None and v < lo:
            self.fail(name, f"{v} is below the minimum {lo}")
        if hi is not None and v > hi:
            self.fail(name, f"{v} is above the maximum {hi}")
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.get(name, default)
        if not isinstance(v, bool):
            self.fail(name, f"expected true or false, got {_tname(v)}")
        return v

    def duration(self, name: str, default: Any = _REQUIRED) -> int:
        v = self.get(name, default)
        if v is None:
            return 0
        try:
            return timeparse.duration_ms(v)
        except ValueError as e:
            self.fail(name, str(e))

    def number(self, name: str, default: Any = _REQUIRED) -> float:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(name, f"expected a number, got {_tname(v)}")
        return float(v)

    def table(self, name: str, required: bool = False) -> _T | None:
        v = self.get(name, _REQUIRED if required else None)
        if v is None:
            return None
        if not isinstance(v, dict):
            self.fail(name, f"expected a table, got {_tname(v)}")
        return _T(self.doc, (*self.path, name), v)

    def tables(self, name: str) -> list[_T]:
        v = self.get(name, [])
        if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
            self.fail(name, "expected an array of tables ([[...]])")
        return [_T(self.doc, (*self.path, name, i), t) for i, t in enumerate(v)]

    def done(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.fail(name, "unknown key")


def _tname(v: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


# ----------------------------------------------------------------------------------------------- schema


def _report_kind(t: _T, name: str, value: object) -> int:
    kid = schema.kind_id_by_name(value) if isinstance(value, str) else None
    if kid is None or schema.is_downlink_kind(kid):
        names = ", ".join(k[0] for i, k in sorted(schema.KINDS.items()) if not schema.is_downlink_kind(i))
        t.fail(name, f"{value!r} is not a report kind ({names})")
    return kid


def _field(t: _T, kind: int, name: str = "field") -> m.FieldRef:
    fname = t.text(name)
    spec = next((f for f in schema.KINDS[kind][3] if f[1] == fname), None)
    if spec is None:
        names = ", ".join(f[1] for f in schema.KINDS[kind][3])
        t.fail(name, f"{schema.KINDS[kind][0]} has no field {fname!r} ({names})")
    if spec[6] != schema.T_INT:
        t.fail(name, f"{fname!r} is not a numeric field")
    return m.FieldRef(kind, spec[0], spec[1], spec[2], spec[3])


def _physical(t: _T, name: str, f: m.FieldRef, default: Any = _REQUIRED, check_range: bool = True) -> int | None:
    """A value in the field's physical unit (``300``, ``"300 mm"``, ``2.5``) -> wire integer."""
    v = t.get(name, default)
    if v is None:
        return None
    if isinstance(v, str):
        mt = _QUANTITY.match(v)
        if mt is None:
            t.fail(name, f"expected a number in {f.unit or 'the field unit'}, got {v!r}")
        unit = (mt.group(2) or "").strip()
        if unit and unit != f.unit:
            t.fail(name, f"unit {unit!r} does not match the field's unit {f.unit!r} ({f.name})")
        number = float(mt.group(1))
    elif isinstance(v, bool) or not isinstance(v, int | float):
        t.fail(name, f"expected a number, got {_tname(v)}")
    else:
        number = float(v)
    wire = round(number * f.scale)
    if check_range:
        spec = schema.field(f.kind, f.key)
        assert spec is not None
        lo, hi = spec[4], spec[5]
        if not lo <= wire <= hi:
            t.fail(name, f"{number:g} {f.unit} is outside the field's range {lo / f.scale:g}..{hi / f.scale:g} "
                         f"{f.unit}".rstrip())
    return wire


def _enum_values(t: _T, name: str, f: m.FieldRef, value: object) -> frozenset[int]:
    labels = schema.ENUMS.get(f.name, ())
    if f.kind == schema.K_FAULT and f.name == "code":
        labels = tuple(schema.FAULT_CODES.get(i, "") for i in range(256))
    items = value if isinstance(value, list) else [value]
    out: set[int] = set()
    spec = schema.field(f.kind, f.key)
    assert spec is not None
    for x in items:
        if isinstance(x, str):
            if x not in labels:
                t.fail(name, f"{x!r} is not a value of {f.name} ({', '.join(v for v in labels if v)})")
            out.add(labels.index(x))
        elif isinstance(x, int) and not isinstance(x, bool) and spec[4] <= x <= spec[5]:
            out.add(x)
        else:
            t.fail(name, f"{x!r} is not a value of {f.name}")
    return frozenset(out)


def _causes(t: _T, name: str = "cause") -> frozenset[int] | None:
    causes = t.texts(name)
    if causes is None:
        return None
    bad = [c for c in causes if c not in schema.ALARM_CAUSES]
    if bad:
        t.fail(name, f"{bad[0]!r} is not an alarm cause ({', '.join(schema.ALARM_CAUSES)})")
    return frozenset(schema.ALARM_CAUSES.index(c) for c in causes)


# ---------------------------------------------------------------------------------------------- triggers


TRIGGER_TYPES = tuple(m.TRIGGER_CODES)


def _trigger(t: _T) -> m.Trigger:
    ttype = t.text("type", "report" if t.has("report") else _REQUIRED, choices=TRIGGER_TYPES)
    if ttype == "report" and t.data.get("report") == "alarm":
        ttype = "alarm"
        t.get("report")
    trig: m.Trigger
    if ttype == "threshold":
        f = _field(t, _report_kind(t, "kind", t.get("kind")))
        above = _physical(t, "above", f, None)
        below = _physical(t, "below", f, None)
        if (above is None) == (below is None):
            t.fail("above" if above is not None else None, "give exactly one of above or below")
        clear = _physical(t, "clear", f, None)
        if clear is None:
            clear = above if above is not None else below
        assert clear is not None
        if above is not None and clear > above:
            t.fail("clear", "for an 'above' threshold, clear must not be above it (hysteresis goes down)")
        if below is not None and clear < below:
            t.fail("clear", "for a 'below' threshold, clear must not be below it (hysteresis goes up)")
        trig = m.Threshold(f, above, below, clear, t.duration("for", 0))
    elif ttype == "rate":
        f = _field(t, _report_kind(t, "kind", t.get("kind")))
        rise = _physical(t, "rise", f, None, check_range=False)
        fall = _physical(t, "fall", f, None, check_range=False)
        if (rise is None) == (fall is None):
            t.fail(None, "give exactly one of rise or fall (per 'per', default 1m)")
        limit = rise if rise is not None else fall
        assert limit is not None
        if limit <= 0:
            t.fail("rise" if rise is not None else "fall", "must be positive")
        clear = _physical(t, "clear", f, None, check_range=False)
        if clear is None:
            clear = limit // 2
        if not 0 <= clear <= limit:
            t.fail("clear", "must be between 0 and the rise/fall limit")
        per = t.duration("per", "1m")
        win = t.duration("window", "10m")
        if per <= 0 or win <= 0:
            t.fail("per" if per <= 0 else "window", "must be positive")
        trig = m.Rate(f, rise, fall, clear, per, win, t.duration("min_span", "1m"))
    elif ttype == "report":
        name = t.text("report", None)
        if name is not None:
            if name not in NAMED_REPORTS:
                t.fail("report", f"{name!r} is not a named report ({', '.join([*NAMED_REPORTS, 'alarm'])}); or give "
                                 "kind + field + in/bits")
            kinds, key, values, mask, negate, momentary = NAMED_REPORTS[name]
            if name == "fault" and t.has("codes"):
                f = m.FieldRef(schema.K_FAULT, 1, "code", "", 1)
                values = _enum_values(t, "codes", f, t.get("codes"))
            trig = m.Report(name, kinds, key, values, mask, negate, momentary,
                            0 if momentary else t.duration("for", 0))
        else:
            kind = _report_kind(t, "kind", t.get("kind"))
            f = _field(t, kind)
            values = None
            mask = 0
            negate = False
            given = [k for k in ("in", "not_in", "equals", "bits") if t.has(k)]
            if len(given) != 1:
                t.fail(None, "give exactly one of in, not_in, equals or bits")
            if given[0] == "bits":
                bits = t.texts("bits") or ()
                bad = [b for b in bits if b not in schema.METER_FLAGS]
                if bad or kind not in _METERS:
                    t.fail("bits", f"bits are meter flags ({', '.join(schema.METER_FLAGS)}) of meter kinds")
                mask = sum(_bit(b) for b in bits)
            elif given[0] == "equals":
                values = frozenset({_physical(t, "equals", f) or 0})
            else:
                values = _enum_values(t, given[0], f, t.get(given[0]))
                negate = given[0] == "not_in"
            momentary = t.boolean("momentary", False)
            trig = m.Report(f"{schema.KINDS[kind][0]}.{f.name}", (kind,), f.key, values, mask, negate, momentary,
                            0 if momentary else t.duration("for", 0))
    elif ttype == "alarm":
        trig = m.AlarmReport(_causes(t))
    elif ttype == "battery_low":
        below = t.integer("below", lo=0, hi=4500)
        clear = t.integer("clear", min(4500, below + 200), lo=below, hi=4500)
        kind_names = t.texts("kind")
        with_battery = tuple(k for k, spec in sorted(schema.KINDS.items())
                             if not schema.is_downlink_kind(k) and any(f[0] == 15 for f in spec[3]))
        kinds = with_battery
        if kind_names is not None:
            kinds = tuple(_report_kind(t, "kind", n) for n in kind_names)
            if any(k not in with_battery for k in kinds):
                t.fail("kind", "that kind reports no battery voltage")
        trig = m.BatteryLow(below, clear, kinds, t.duration("for", 0))
    elif ttype == "silent":
        trig = m.Silent(t.integer("intervals", 3, lo=1, hi=1000), t.duration("interval"))
        if trig.interval_ms < 1000:
            t.fail("interval", "must be at least 1s")
    elif ttype == "uplink_down":
        trig = m.UplinkDown(t.duration("for", 0))
    elif ttype == "alarm_unacked":
        trig = m.AlarmUnacked(t.duration("after"), _causes(t))
    elif ttype == "disk":
        pct = t.number("quota_pct", None) if t.has("quota_pct") else None
        free = t.number("free_mb", None) if t.has("free_mb") else None
        if pct is None and free is None:
            t.fail(None, "give quota_pct and/or free_mb")
        if pct is not None and not 0 < pct <= 100:
            t.fail("quota_pct", "must be in 0..100")
        clear_pct = t.number("clear_pct", max(0.0, pct - 5)) if pct is not None else None
        clear_free = t.number("clear_free_mb", free * 1.1) if free is not None else None
        trig = m.Disk(pct, free, clear_pct, clear_free, t.duration("for", 0))
    elif ttype == "schedule":
        at = t.texts("at")
        line = t.get("cron", None)
        if (at is None) == (line is None):
            t.fail(None, "give exactly one of at (\"HH:MM\" or a list) or cron")
        try:
            trig = m.Schedule(tuple(sorted({timeparse.minute_of_day(a) for a in at})) if at else (),
                              timeparse.cron(line) if line is not None else None)
        except ValueError as e:
            t.fail("at" if at else "cron", str(e))
    else:  # mode
        modes = t.texts("mode") or ()
        bad = [x for x in modes if x not in m.MODES]
        if bad or not modes:
            t.fail("mode", f"expected one or more of {', '.join(m.MODES)}")
        trig = m.ModeIs(frozenset(modes))
    t.done()
    return trig


# -------------------------------------------------------------------------------------------- conditions


def _conditions(t: _T | None) -> m.Conditions:
    if t is None:
        return m.Conditions()
    modes = t.texts("mode")
    if modes is not None and any(x not in m.MODES for x in modes):
        t.fail("mode", f"expected one or more of {', '.join(m.MODES)}")
    uplink = t.text("uplink", None, choices=m.UPLINK_STATES)
    kinds = t.texts("device_kind")
    if kinds is not None:
        for k in kinds:
            _report_kind(t, "device_kind", k)
    classes = t.texts("data_class")
    if classes is not None and any(c not in schema.CLASS_NAMES for c in classes):
        t.fail("data_class", f"expected one or more of {', '.join(schema.CLASS_NAMES)}")
    devices = t.texts("devices")
    if devices is not None and any(not _HEX16.match(d) for d in devices):
        t.fail("devices", "device ids are 16 lowercase hex characters")
    windows = t.texts("time")
    days = t.texts("days")
    try:
        wins = tuple(timeparse.window(w) for w in windows) if windows else None
    except ValueError as e:
        t.fail("time", str(e))
    try:
        day_set = frozenset(timeparse.day_index(d) for d in days) if days else None
    except ValueError as e:
        t.fail("days", str(e))
    tags = t.texts("tags")
    tags_all = t.texts("tags_all")
    units = t.texts("spatial_unit")
    t.done()
    return m.Conditions(
        modes=frozenset(modes) if modes else None, uplink=uplink,
        device_kinds=frozenset(kinds) if kinds else None, spatial_units=units,
        data_classes=frozenset(schema.CLASS_NAMES.index(c) for c in classes) if classes else None,
        tags_any=frozenset(tags) if tags else None, tags_all=frozenset(tags_all) if tags_all else None,
        devices=frozenset(bytes.fromhex(d) for d in devices) if devices else None, windows=wins, days=day_set)


# ----------------------------------------------------------------------------------------------- actions


def _template(t: _T, name: str, default: Any = _REQUIRED) -> m.Template | None:
    v = t.text(name, default)
    if v is None:
        return None
    tpl = m.Template(v)
    unknown = sorted(tpl.names - m.TEMPLATE_VARS)
    if unknown:
        t.fail(name, f"unknown template variable {{{unknown[0]}}} (known: {', '.join(sorted(m.TEMPLATE_VARS))})")
    return tpl


def _action(t: _T, index: int, outputs: Mapping[str, m.OutputSpec], contacts: Mapping[str, tuple[str, ...]],
            reading_trigger: bool) -> m.ActionSpec:
    atype = t.text("type", choices=tuple(m.ACTION_CODES))
    output: str | None = None
    if atype in ("mqtt", "gpio", "sms", "webhook"):
        output = t.text("output")
        spec = outputs.get(output)
        if spec is None:
            t.fail("output", f"no output named {output!r} (define [outputs.{output}])")
        if not isinstance(spec, m.OUTPUT_TYPES[atype]):
            t.fail("output", f"output {output!r} is not of type {atype!r}")
    body: m.ActionBody
    if atype == "mqtt":
        topic = _template(t, "topic")
        assert topic is not None
        if "+" in topic.text or "#" in topic.text or not topic.text:
            t.fail("topic", "a topic to publish to has no wildcards and is not empty")
        body = m.MqttAction(topic, _template(t, "payload", None), t.integer("qos", 1, lo=0, hi=1),
                            t.boolean("retain", False))
    elif atype == "gpio":
        raw = t.get("value", "on")
        values: dict[object, int] = {"on": 1, "off": 0, True: 1, False: 0}  # True == 1, False == 0
        if isinstance(raw, float) or raw not in values:
            t.fail("value", "expected on, off, 1, 0, true or false")
        body = m.GpioAction(t.integer("line", lo=0, hi=1023), values[raw], t.duration("pulse", 0))
    elif atype == "sms":
        to = t.texts("to")
        if to is None:
            t.fail("to", "required key missing")
        tos: list[m.Template] = []
        for x in to:
            if x.startswith("@"):
                tpl = m.Template(x[1:])
                unknown = sorted(tpl.names - m.TEMPLATE_VARS)
                if unknown:
                    t.fail("to", f"unknown template variable {{{unknown[0]}}}")
                if not tpl.names and x[1:] not in contacts:
                    t.fail("to", f"no contact group {x[1:]!r} (define it under [contacts])")
                tos.append(m.Template(x))
            elif _NUMBER.match(x):
                tos.append(m.Template(x))
            else:
                t.fail("to", f"{x!r} is neither a phone number (+8613800000000) nor a contact group (@name)")
        text = _template(t, "text")
        assert text is not None
        body = m.SmsAction(tuple(tos), text)
    elif atype == "webhook":
        btab = t.table("body")
        body_map: dict[str, m.Template] | None = None
        if btab is not None:
            body_map = {}
            for k in list(btab.data):
                item = _template(btab, k)
                assert item is not None
                body_map[k] = item
            btab.done()
        body = m.WebhookAction(_template(t, "path", None), body_map)
    elif atype == "downlink":
        cname = t.text("command")
        kid = schema.kind_id_by_name(cname)
        if kid is None or not schema.is_downlink_kind(kid) or kid in (schema.C_OTA_BEGIN, schema.C_OTA_CHUNK):
            t.fail("command", "expected a downlink command: ack, config, time_sync or maintenance")
        ftab = t.table("fields")
        fields: dict[str, int] = {}
        if ftab is not None:
            for k in list(ftab.data):
                spec_f = next((f for f in schema.KINDS[kid][3] if f[1] == k), None)
                if spec_f is None or spec_f[6] != schema.T_INT:
                    ftab.fail(k, f"{cname} has no numeric field {k!r}")
                fields[k] = ftab.integer(k, lo=spec_f[4], hi=spec_f[5])
            ftab.done()
        for f in schema.KINDS[kid][3]:
            if f[7] and f[1] not in fields and not (kid == schema.C_ACK and f[0] == 1) and kid != schema.C_TIME_SYNC:
                t.fail("fields", f"{cname} needs field {f[1]!r}")
        device = _template(t, "device", "{device}")
        assert device is not None
        body = m.DownlinkAction(kid, fields, device)
    else:  # priority
        if not reading_trigger:
            t.fail("type", "a priority action needs a reading trigger (it raises the triggering reading's priority)")
        level = t.text("level", "alarm", choices=tuple(m.PRIORITY_LEVELS))
        body = m.PriorityAction(m.PRIORITY_LEVELS[level])
    rate = None
    if t.has("rate"):
        try:
            rate = timeparse.rate_limit(t.get("rate"))
        except ValueError as e:
            t.fail("rate", str(e))
    spec_a = m.ActionSpec(
        type=atype, index=index, output=output, body=body,
        cooldown_ms=t.duration("cooldown", 0), dedupe=t.text("dedupe", "key", choices=m.DEDUPE_SCOPES),
        rate=rate, retries=t.integer("retries", 2, lo=0, hi=10), backoff_ms=t.duration("backoff", "1s"),
        timeout_ms=t.duration("timeout", DEFAULT_TIMEOUT_MS[atype] / 1000))
    if atype != "priority" and spec_a.timeout_ms <= 0:
        t.fail("timeout", "must be positive")
    t.done()
    return spec_a


# ----------------------------------------------------------------------------------------------- outputs


def _output(t: _T, name: str) -> m.OutputSpec:
    otype = t.text("type", choices=tuple(m.OUTPUT_TYPES))
    out: m.OutputSpec
    if otype == "mqtt":
        cert = t.text("tls_cert", None)
        key = t.text("tls_key", None)
        if (cert is None) != (key is None):
            t.fail("tls_key" if key is None else "tls_cert", "tls_cert and tls_key go together")
        out = m.MqttOutput(
            host=t.text("host"), port=t.integer("port", 1883, lo=1, hi=65535),
            client_id=t.text("client_id", f"lifeline-rules-{name}"), username=t.text("username", None),
            password_file=_path(t.text("password_file", None)), tls_ca=_path(t.text("tls_ca", None)),
            tls_cert=_path(cert), tls_key=_path(key), keepalive_s=t.integer("keepalive_s", 30, lo=5, hi=3600))
    elif otype == "gpio":
        chip = t.text("chip")
        if not (chip.startswith("sim:") and len(chip) > 4) and not re.match(r"^(/dev/)?gpiochip\d+$", chip):
            t.fail("chip", "expected /dev/gpiochipN, gpiochipN or sim:<name>")
        out = m.GpioOutput(chip, t.text("consumer", "lifeline"), t.boolean("active_low", False))
    elif otype == "sms":
        out = m.SmsOutput(t.text("port"), t.integer("baudrate", 115200, lo=300, hi=4_000_000),
                          t.duration("prompt_timeout", "5s"), t.duration("send_timeout", "30s"))
    else:
        url = t.text("url")
        if not re.match(r"^https?://[^/\s]+", url):
            t.fail("url", "expected an http:// or https:// URL")
        htab = t.table("headers")
        headers: dict[str, str] = {}
        if htab is not None:
            for k in list(htab.data):
                headers[k] = htab.text(k)
            htab.done()
        out = m.WebhookOutput(url, headers)
    t.done()
    return out


def _path(v: str | None) -> Path | None:
    return Path(v) if v else None


# -------------------------------------------------------------------------------------------------- files


def _parse(file: str, text: str) -> tuple[_Doc, _T]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        found = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        raise RulesError(file, int(found.group(1)) if found else None, "", f"TOML syntax error: {e}") from None
    doc = _Doc(file, text)
    return doc, _T(doc, (), data)


def load_texts(texts: Sequence[tuple[str, str]]) -> m.RuleSet:
    """Validate rule files given as (name, text). Raises :class:`RulesError`."""
    parsed = [_parse(f, text) for f, text in texts]
    outputs: dict[str, m.OutputSpec] = {}
    contacts: dict[str, tuple[str, ...]] = {}
    failover: m.Failover | None = None
    tz: str | None = None
    for _doc, top in parsed:
        top.integer("version", 1, lo=1, hi=1)
        zone = top.text("timezone", None)
        if zone is not None:
            if tz is not None:
                top.fail("timezone", "timezone is set in more than one rule file")
            try:
                zoneinfo.ZoneInfo(zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                top.fail("timezone", f"unknown time zone {zone!r}")
            tz = zone
        ft = top.table("failover")
        if ft is not None:
            if failover is not None:
                ft.fail(None, "[failover] appears in more than one rule file")
            failover = m.Failover(
                grace_ms=ft.duration("grace", "60s"), restore_ms=ft.duration("restore", 0),
                stall_ms=ft.duration("stall") if ft.has("stall") else None,
                backlog_age_ms=ft.duration("backlog_age") if ft.has("backlog_age") else None)
            ft.done()
        ct = top.table("contacts")
        if ct is not None:
            for name in list(ct.data):
                if name in contacts:
                    ct.fail(name, f"contact group {name!r} is defined twice")
                numbers = ct.texts(name) or ()
                bad = [n for n in numbers if not _NUMBER.match(n)]
                if bad:
                    ct.fail(name, f"{bad[0]!r} is not a phone number (digits, optionally a leading +)")
                contacts[name] = numbers
            ct.done()
        ot = top.table("outputs")
        if ot is not None:
            for name in list(ot.data):
                if not _OUTPUT_NAME.match(name):
                    ot.fail(name, f"output names match {_OUTPUT_NAME.pattern}")
                if name in outputs:
                    ot.fail(name, f"output {name!r} is defined twice")
                sub = ot.table(name)
                assert sub is not None
                outputs[name] = _output(sub, name)
            ot.done()
    rules: list[m.Rule] = []
    names: set[str] = set()
    for doc, top in parsed:
        for rt in top.tables("rule"):
            name = rt.text("name", pattern=_NAME)
            if name in names:
                rt.fail("name", f"rule {name!r} is defined twice")
            names.add(name)
            when = rt.table("when", required=True)
            assert when is not None
            trigger = _trigger(when)
            reading = isinstance(trigger, m.READING_TRIGGERS)
            conds = _conditions(rt.table("if"))
            if not reading and conds.has_static and not isinstance(trigger, m.Silent | m.AlarmUnacked):
                rt.fail("if", "device conditions need a trigger about devices (readings, silent, alarm_unacked)")
            actions = tuple(_action(a, i, outputs, contacts, reading) for i, a in enumerate(rt.tables("action")))
            clears = tuple(_action(a, 100 + i, outputs, contacts, reading)
                           for i, a in enumerate(rt.tables("clear_action")))
            if any(a.type == "priority" for a in clears):
                rt.fail("clear_action", "a priority action belongs in action, not clear_action")
            line = lineindex.line_of(doc.index, rt.path) or 0
            rules.append(m.Rule(
                name=name, index=len(rules), file=doc.file, line=line, description=rt.text("description", ""),
                trigger=trigger, conditions=conds, actions=actions, clear_actions=clears,
                cooldown_ms=rt.duration("cooldown", 0),
                priority=m.PRIORITY_LEVELS[rt.text("priority", "event", choices=tuple(m.PRIORITY_LEVELS))],
                enabled=rt.boolean("enabled", True)))
            rt.done()
            if len(rules) > MAX_RULES:
                rt.fail(None, f"more than {MAX_RULES} rules")
        top.done()
    digest = hashlib.sha256(b"".join(text.encode() for _, text in texts)).digest()
    return m.RuleSet(tuple(rules), outputs, contacts, failover or m.Failover(), tz, tuple(f for f, _ in texts), digest)


def load_files(paths: Sequence[str | Path]) -> m.RuleSet:
    """Read and validate rule files. Raises :class:`RulesError` (also for unreadable files)."""
    texts: list[tuple[str, str]] = []
    for p in paths:
        file = str(p)
        try:
            raw = Path(p).read_bytes()
        except OSError as e:
            raise RulesError(file, None, "", f"cannot read: {e.strerror or e}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise RulesError(file, None, "", f"larger than {MAX_FILE_BYTES} bytes")
        try:
            texts.append((file, raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise RulesError(file, None, "", "not UTF-8 text") from None
    return load_texts(texts)
