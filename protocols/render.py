"""Human rendering of decoded fields (CPython): names, units, scaled values and enum labels from the
schema registry. The wire never carries names; only docs and JSON output do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import schema


def field_to_json(kind: int, key: int, value: int | bytes) -> tuple[str, Any]:
    spec = schema.field(kind, key)
    if spec is None:
        return str(key), value.hex() if isinstance(value, bytes) else value
    name, unit, scale = spec[1], spec[2], spec[3]
    if isinstance(value, bytes):
        return name, value.hex()
    if name == "flags" and kind in (schema.K_WATER_METER, schema.K_GAS_METER, schema.K_ELECTRICITY_METER):
        return name, [flag for bit, flag in enumerate(schema.METER_FLAGS) if value & (1 << bit)]
    labels = schema.ENUMS.get(name)
    if labels is not None and 0 <= value < len(labels):
        return name, labels[value]
    if name == "code" and kind == schema.K_FAULT:
        return name, schema.FAULT_CODES.get(value, value)
    if scale != 1:
        return name, {"value": value / scale, "unit": unit}
    return name, {"value": value, "unit": unit} if unit else value


def fields_to_json(kind: int, fields: Mapping[int, int | bytes]) -> dict[str, Any]:
    return dict(field_to_json(kind, k, v) for k, v in sorted(fields.items()))


def kind_name(kind: int) -> str:
    k = schema.kind(kind)
    return k[0] if k is not None else "unknown_%d" % kind


def class_name(data_class: int) -> str:
    return schema.CLASS_NAMES[data_class] if 0 <= data_class < len(schema.CLASS_NAMES) else str(data_class)
