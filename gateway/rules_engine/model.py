"""The validated rule set: frozen records produced by ``loader.py`` and compiled by ``engine.py``.

Values are already in the units the engine compares: thresholds at the schema's wire scale (integers),
durations in milliseconds, enum labels as integers. Nothing here touches files or the clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lifeline.gateway.rules_engine import MODES as MODES  # (in the package: the CLI needs it without the model)
from lifeline.gateway.rules_engine.timeparse import Cron

UPLINK_STATES = ("up", "down")
PRIORITY_LEVELS = {"alarm": 0, "event": 1}

# Names a template may use: {device}, {value}, ... (docs/rules.md, "Templates").
TEMPLATE_VARS = frozenset({
    "gateway", "rule", "state", "reason", "device", "kind", "field", "value", "unit", "raw", "address",
    "spatial_unit", "tags", "data_class", "time", "mode", "uplink", "alarm_id", "cause", "seq", "description",
})
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Template:
    """``"Smoke at {address}"``: ``{name}`` is replaced, ``{{`` and ``}}`` are literal braces. Names are
    checked against TEMPLATE_VARS when the file is loaded; rendering never evaluates anything."""

    text: str

    @property
    def names(self) -> frozenset[str]:
        return frozenset(_VAR.findall(self.text.replace("{{", "").replace("}}", "")))

    def render(self, values: Mapping[str, str]) -> str:
        text = self.text.replace("{{", "\x00").replace("}}", "\x01")
        out = _VAR.sub(lambda m: values.get(m.group(1), ""), text)
        return out.replace("\x00", "{").replace("\x01", "}")


# ---------------------------------------------------------------------------------------------- triggers


@dataclass(frozen=True, slots=True)
class FieldRef:
    kind: int
    key: int
    name: str
    unit: str
    scale: int


@dataclass(frozen=True, slots=True)
class Threshold:
    """``field > above`` (or ``< below``) for ``for_ms``; clears at ``clear`` (hysteresis). Wire scale."""

    field: FieldRef
    above: int | None
    below: int | None
    clear: int
    for_ms: int


@dataclass(frozen=True, slots=True)
class Rate:
    """Change of ``field`` between the oldest sample within ``window_ms`` and the newest, in wire units
    per ``per_ms``: set above ``rise`` (or below ``-fall``), cleared at ``clear`` magnitude."""

    field: FieldRef
    rise: int | None  # wire units per per_ms
    fall: int | None
    clear: int
    per_ms: int
    window_ms: int
    min_span_ms: int


@dataclass(frozen=True, slots=True)
class Report:
    """A report's content: one of the named reports or ``field`` in ``values`` / with any of ``mask``'s
    bits set. ``momentary`` reports (fault) fire per reading; the others are active while reports match."""

    name: str
    kinds: tuple[int, ...]
    key: int
    values: frozenset[int] | None
    mask: int
    negate: bool = False  # match when the field is NOT in values (e.g. chamber != ok)
    momentary: bool = False
    for_ms: int = 0


@dataclass(frozen=True, slots=True)
class AlarmReport:
    """Node alarms (``alarm_raised`` / ``alarm_cleared``), keyed by device and alarm id."""

    causes: frozenset[int] | None


@dataclass(frozen=True, slots=True)
class BatteryLow:
    below: int  # mV
    clear: int
    kinds: tuple[int, ...]
    for_ms: int


@dataclass(frozen=True, slots=True)
class Silent:
    intervals: int
    interval_ms: int

    @property
    def after_ms(self) -> int:
        return self.intervals * self.interval_ms


@dataclass(frozen=True, slots=True)
class UplinkDown:
    for_ms: int  # beyond the failover grace


@dataclass(frozen=True, slots=True)
class AlarmUnacked:
    after_ms: int
    causes: frozenset[int] | None


@dataclass(frozen=True, slots=True)
class Disk:
    quota_pct: float | None
    free_mb: float | None
    clear_pct: float | None
    clear_free_mb: float | None
    for_ms: int


@dataclass(frozen=True, slots=True)
class Schedule:
    at: tuple[int, ...]  # minutes of the day
    cron: Cron | None


@dataclass(frozen=True, slots=True)
class ModeIs:
    modes: frozenset[str]


Trigger = (Threshold | Rate | Report | AlarmReport | BatteryLow | Silent | UplinkDown | AlarmUnacked | Disk
           | Schedule | ModeIs)
READING_TRIGGERS = (Threshold, Rate, Report, AlarmReport, BatteryLow)

TRIGGER_CODES: Mapping[str, int] = {
    "threshold": 1, "rate": 2, "report": 3, "alarm": 4, "battery_low": 5, "silent": 6, "uplink_down": 7,
    "alarm_unacked": 8, "disk": 9, "schedule": 10, "mode": 11,
}


def trigger_type(t: Trigger) -> str:
    return {Threshold: "threshold", Rate: "rate", Report: "report", AlarmReport: "alarm", BatteryLow: "battery_low",
            Silent: "silent", UplinkDown: "uplink_down", AlarmUnacked: "alarm_unacked", Disk: "disk",
            Schedule: "schedule", ModeIs: "mode"}[type(t)]


# -------------------------------------------------------------------------------------------- conditions


@dataclass(frozen=True, slots=True)
class Conditions:
    modes: frozenset[str] | None = None
    uplink: str | None = None  # "up" | "down"
    device_kinds: frozenset[str] | None = None
    spatial_units: tuple[str, ...] | None = None  # fnmatch patterns
    data_classes: frozenset[int] | None = None
    tags_any: frozenset[str] | None = None
    tags_all: frozenset[str] | None = None
    devices: frozenset[bytes] | None = None
    windows: tuple[tuple[int, int], ...] | None = None
    days: frozenset[int] | None = None

    @property
    def has_static(self) -> bool:
        return any(x is not None for x in (self.device_kinds, self.spatial_units, self.data_classes, self.tags_any,
                                           self.tags_all, self.devices))

    @property
    def has_dynamic(self) -> bool:
        return self.modes is not None or self.uplink is not None

    @property
    def has_time(self) -> bool:
        return self.windows is not None or self.days is not None


# ----------------------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class MqttAction:
    topic: Template
    payload: Template | None  # None: the firing as JSON
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class GpioAction:
    line: int
    value: int
    pulse_ms: int  # 0: set and hold (a level action, re-asserted after a restart)


@dataclass(frozen=True, slots=True)
class SmsAction:
    to: tuple[Template, ...]  # "+8613800000000" or "@group" (templated group names)
    text: Template


@dataclass(frozen=True, slots=True)
class WebhookAction:
    path: Template | None
    body: Mapping[str, Template] | None  # None: the firing as JSON


@dataclass(frozen=True, slots=True)
class DownlinkAction:
    command: int  # schema command kind
    fields: Mapping[str, int]
    device: Template


@dataclass(frozen=True, slots=True)
class PriorityAction:
    level: int  # schema.P_ALARM / P_EVENT


ActionBody = MqttAction | GpioAction | SmsAction | WebhookAction | DownlinkAction | PriorityAction
ACTION_CODES: Mapping[str, int] = {"mqtt": 1, "gpio": 2, "sms": 3, "webhook": 4, "downlink": 5, "priority": 6}
DEDUPE_SCOPES = ("key", "device", "spatial_unit", "rule")


@dataclass(frozen=True, slots=True)
class ActionSpec:
    type: str
    index: int  # position in the rule's list; clear actions are numbered from 100
    output: str | None
    body: ActionBody
    cooldown_ms: int
    dedupe: str
    rate: tuple[int, int] | None  # (count, period ms)
    retries: int
    backoff_ms: int
    timeout_ms: int


# ----------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class MqttOutput:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive_s: int = 30


@dataclass(frozen=True, slots=True)
class GpioOutput:
    chip: str  # "/dev/gpiochip0", "gpiochip0" or "sim:<name>"
    consumer: str = "lifeline"
    active_low: bool = False


@dataclass(frozen=True, slots=True)
class SmsOutput:
    port: str
    baudrate: int = 115200
    prompt_timeout_ms: int = 5000
    send_timeout_ms: int = 30_000


@dataclass(frozen=True, slots=True)
class WebhookOutput:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


OutputSpec = MqttOutput | GpioOutput | SmsOutput | WebhookOutput
OUTPUT_TYPES = {"mqtt": MqttOutput, "gpio": GpioOutput, "sms": SmsOutput, "webhook": WebhookOutput}


# ------------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    index: int
    file: str
    line: int
    description: str
    trigger: Trigger
    conditions: Conditions
    actions: tuple[ActionSpec, ...]
    clear_actions: tuple[ActionSpec, ...]
    cooldown_ms: int  # a new firing of the same key within this after the last one is muted
    priority: int  # priority of this rule's audit records (schema.P_ALARM / P_EVENT)
    enabled: bool = True

    @property
    def trigger_type(self) -> str:
        return trigger_type(self.trigger)

    @property
    def raises_to(self) -> int | None:
        levels = [a.body.level for a in self.actions if isinstance(a.body, PriorityAction)]
        return min(levels) if levels else None


@dataclass(frozen=True, slots=True)
class Failover:
    grace_ms: int = 60_000  # uplink unhealthy this long = "uplink down"
    restore_ms: int = 0  # healthy this long = restored
    stall_ms: int | None = None  # a PUBACK outstanding this long counts as unhealthy
    backlog_age_ms: int | None = None  # the oldest buffered record this old counts as unhealthy


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...]
    outputs: Mapping[str, OutputSpec]
    contacts: Mapping[str, tuple[str, ...]]
    failover: Failover
    timezone: str | None  # None: the system's local time
    files: tuple[str, ...]
    digest: bytes  # SHA-256 of the files' bytes (first 8 bytes are reported)

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


EMPTY = RuleSet((), {}, {}, Failover(), None, (), bytes(32))
