"""The one place that maps a reading to its buffer priority (alarm > event > periodic).

The registry gives each kind a base priority (schema.KINDS[kind][2]); the content can raise it:

| kind | condition | priority |
| --- | --- | --- |
| smoke | alarm_state = 2 (alarm) | alarm |
| smoke | alarm_state = 1 (pre-alarm), chamber != ok, self_test = fail | event |
| manhole_tilt | cover_state != 0 (open, displaced, flooded) | alarm |
| water/gas/electricity meter | flags has leak or tamper | event |
| water_level | sensor_fault != 0 | event |
| fault | always (registry) | event |
| alarm_raised / alarm_cleared | always (registry) | alarm |

A rules engine may raise it further (never lower) through the RulesHook.
"""

from __future__ import annotations

from collections.abc import Mapping

from lifeline.protocols import schema

_LEAK = 1 << schema.METER_FLAGS.index("leak")
_TAMPER = 1 << schema.METER_FLAGS.index("tamper")
_METERS = (schema.K_WATER_METER, schema.K_GAS_METER, schema.K_ELECTRICITY_METER)


def classify(kind: int, fields: Mapping[int, int | bytes]) -> int:
    k = schema.KINDS.get(kind)
    base: int = k[2] if k is not None else schema.P_PERIODIC
    p = base
    if kind == schema.K_SMOKE:
        state = fields.get(1, 0)
        if state == 2:
            p = schema.P_ALARM
        elif state == 1 or fields.get(3, 0) != 0 or fields.get(4, 0) == 2:
            p = schema.P_EVENT
    elif kind == schema.K_TILT:
        if fields.get(2, 0) != 0:
            p = schema.P_ALARM
    elif kind in _METERS:
        flags = fields.get(3, 0)
        if isinstance(flags, int) and flags & (_LEAK | _TAMPER):
            p = schema.P_EVENT
    elif kind == schema.K_WATER_LEVEL and fields.get(3, 0) != 0:
        p = schema.P_EVENT
    return min(p, base)


def raise_to(current: int, wanted: int | None) -> int:
    """Priority after a rules verdict: lower number is more urgent; never lowers."""
    if wanted is None or wanted not in (schema.P_ALARM, schema.P_EVENT, schema.P_PERIODIC):
        return current
    return min(current, wanted)
