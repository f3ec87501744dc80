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


def registry_markdown() -> str:
    """The registry as Markdown tables: docs/protocol.md embeds exactly this (a test keeps them equal)."""
    lines: list[str] = []
    for kind_id, (name, data_class, priority, fields) in sorted(schema.KINDS.items()):
        direction = "downlink command" if schema.is_downlink_kind(kind_id) else "uplink report"
        lines.append(f"#### {kind_id} `{name}` ({direction}; class `{class_name(data_class)}`; "
                     f"priority `{schema.PRIORITY_NAMES[priority]}`)")
        lines.append("")
        lines.append("| key | field | unit | scale | range (wire) | type | required | values |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for key, fname, unit, scale, lo, hi, vtype, req in fields:
            labels = schema.ENUMS.get(fname)
            if fname == "flags" and kind_id in (schema.K_WATER_METER, schema.K_GAS_METER,
                                                schema.K_ELECTRICITY_METER):
                values = ", ".join(f"bit{i} {f}" for i, f in enumerate(schema.METER_FLAGS))
            elif fname == "code" and kind_id == schema.K_FAULT:
                values = ", ".join(f"{c} {n}" for c, n in sorted(schema.FAULT_CODES.items()))
            elif labels is not None:
                values = ", ".join(f"{i} {n}" for i, n in enumerate(labels))
            else:
                values = ""
            typ = "bytes (length)" if vtype == schema.T_BYTES else "int"
            lines.append(f"| {key} | {fname} | {unit} | {scale} | {lo}..{hi} | {typ} | "
                         f"{'yes' if req else 'no'} | {values} |")
        lines.append("")
    return "\n".join(lines)
