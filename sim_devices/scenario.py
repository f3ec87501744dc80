"""Scenario files (TOML, sim_devices/scenarios/*.toml): fleet composition, episodes, faults, expectations.

The format is documented in docs/simulator.md; :func:`load` validates it and says what is wrong
(:class:`ScenarioError` with the path of the offending key).
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifeline.sim_devices.fleet import RADIOS, NodeSpec

SCENARIO_DIR = Path(__file__).with_name("scenarios")
KINDS = ("smoke", "tilt", "water_level", "water_meter", "gas_meter", "electricity_meter")
FAULTS = ("reboot", "brownout", "clock_drift", "radio_loss", "corrupt", "duplicate", "replay", "wrong_key",
          "stuck_sensor", "flood", "platform_outage", "nbiot_outage", "modem_unplug")
_DUR = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|min|m|h|d)?)+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|min|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class ScenarioError(ValueError):
    pass


def seconds(value: Any, where: str) -> float:
    """'90s', '10m', '2h30m', '1d' or a number of seconds."""
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected a duration")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.replace(" ", "")
        if text and _DUR.match(text):
            return sum(float(n) * _UNITS[u or None] for n, u in _PART.findall(text))
    raise ScenarioError(f"{where}: {value!r} is not a duration (e.g. 90s, 10m, 2h)")


@dataclass(slots=True)
class Event:
    at_s: float
    nodes: list[str]
    episode: str
    duration_s: float | None
    params: dict[str, float]


@dataclass(slots=True)
class Fault:
    at_s: float
    type: str
    nodes: list[str]
    duration_s: float | None
    params: dict[str, Any]


@dataclass(slots=True)
class Scenario:
    name: str
    description: str
    path: Path
    seed: int
    duration_s: float
    test_duration_s: float
    start_unix_s: float
    time_sync: bool
    nodes: list[NodeSpec]
    groups: dict[str, list[str]]
    events: list[Event]
    faults: list[Fault]
    expect: dict[str, Any]
    gateway_site: tuple[float, float] = (0.0, 0.0)
    raw: dict[str, Any] = field(default_factory=dict)


def _layout(layout: dict[str, Any], i: int, where: str) -> tuple[float, float, str]:
    kind = layout.get("type", "line")
    x0 = float(layout.get("x", 50.0))
    y0 = float(layout.get("y", 0.0))
    if kind == "line":
        return x0 + i * float(layout.get("dx", 10.0)), y0 + i * float(layout.get("dy", 0.0)), ""
    if kind == "grid":
        cols = int(layout.get("cols", 10))
        sp = float(layout.get("spacing", 20.0))
        return x0 + (i % cols) * sp, y0 + (i // cols) * sp, ""
    if kind == "ring":
        n = int(layout.get("n", 12))
        r = float(layout.get("radius", 100.0)) + float(layout.get("step", 0.0)) * (i // n)
        a = 2 * math.pi * (i % n) / n
        return x0 + r * math.cos(a), y0 + r * math.sin(a), ""
    if kind == "building":
        per = int(layout.get("per_floor", 4))
        floor, unit = i // per + 1, i % per
        return x0 + unit * 8.0, y0, f"flat {floor}{chr(ord('A') + unit)}"
    raise ScenarioError(f"{where}.layout.type: {kind!r} is not line, grid, ring or building")


def _names(spec: Any, groups: dict[str, list[str]], known: set[str], where: str) -> list[str]:
    out: list[str] = []
    items = spec if isinstance(spec, list) else [spec]
    for item in items:
        if not isinstance(item, str):
            raise ScenarioError(f"{where}: node names are strings")
        if item in groups:
            out.extend(groups[item])
        elif item in known:
            out.append(item)
        else:
            raise ScenarioError(f"{where}: no node or group named {item!r}")
    return out


def load(source: str | Path, *, nodes: int | None = None, seed: int | None = None) -> Scenario:
    """Read a scenario by name (a file in sim_devices/scenarios) or path. ``nodes`` scales the fleet (every
    group keeps at least the nodes that events and faults name)."""
    path = Path(source)
    if not path.suffix:
        path = SCENARIO_DIR / (str(source).replace(" ", "-") + ".toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
        raise ScenarioError(f"{source}: no such scenario (known: {known})") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: {e}") from None
    head = raw.get("scenario", {})
    name = str(head.get("name", path.stem))
    duration = seconds(head.get("duration", "1h"), "scenario.duration")
    test_duration = seconds(head.get("test_duration", duration), "scenario.test_duration")
    start = head.get("start", "2026-01-01T00:00:00Z")
    try:
        start_s = datetime.datetime.fromisoformat(str(start).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ScenarioError(f"scenario.start: {start!r} is not an ISO 8601 time") from None
    groups_raw = raw.get("nodes", [])
    if not isinstance(groups_raw, list) or not groups_raw:
        raise ScenarioError("nodes: at least one [[nodes]] group")
    total = sum(int(g.get("count", 1)) for g in groups_raw)
    specs: list[NodeSpec] = []
    groups: dict[str, list[str]] = {}
    for gi, g in enumerate(groups_raw):
        where = f"nodes[{gi}]"
        prefix = g.get("prefix")
        kind = g.get("kind")
        if not isinstance(prefix, str) or not prefix:
            raise ScenarioError(f"{where}.prefix: required")
        if kind not in KINDS:
            raise ScenarioError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
        radios = g.get("radio", "lora-serial")
        radios = radios if isinstance(radios, list) else [radios]
        for r in radios:
            if r not in RADIOS:
                raise ScenarioError(f"{where}.radio: {r!r} is not one of {', '.join(RADIOS)}")
        suite = g.get("suite", "intl")
        if suite not in ("intl", "sm"):
            raise ScenarioError(f"{where}.suite: {suite!r} is not one of intl, sm")
        count = int(g.get("count", 1))
        width = max(2, len(str(count)))  # names as the file counts them, whatever the scaling
        keep = int(g.get("min_count", 1))
        if nodes is not None and total:
            count = max(keep, round(count * nodes / total))
        interval = int(seconds(g.get("interval", "5m"), f"{where}.interval"))
        heartbeat = int(seconds(g.get("heartbeat", "1d"), f"{where}.heartbeat"))
        layout = g.get("layout", {})
        model = {k: float(v) for k, v in g.get("model", {}).items()}
        names = []
        for i in range(count):
            x, y, unit = _layout(layout, i, where)
            nm = f"{prefix}-{i + 1:0{width}d}"
            names.append(nm)
            specs.append(NodeSpec(
                name=nm, kind=kind, radio=radios[i % len(radios)], x_m=x, y_m=y, interval_s=interval,
                heartbeat_s=heartbeat, address=f"{g.get('address', prefix)}{', ' + unit if unit else ''}",
                unit=unit or str(g.get("unit", prefix)), tags=tuple(g.get("tags", ())), model=dict(model),
                config=dict(g.get("config", {})), ble_extended=bool(g.get("ble_extended", False)),
                suite=suite))
        groups[prefix] = names
    known = {s.name for s in specs}
    events = []
    for ei, e in enumerate(raw.get("events", [])):
        where = f"events[{ei}]"
        if "episode" not in e:
            raise ScenarioError(f"{where}.episode: required")
        events.append(Event(seconds(e.get("at", 0), f"{where}.at"), _names(e.get("nodes"), groups, known, where),
                            str(e["episode"]),
                            seconds(e["duration"], f"{where}.duration") if "duration" in e else None,
                            {k: float(v) for k, v in e.get("params", {}).items()}))
    faults = []
    for fi, f in enumerate(raw.get("faults", [])):
        where = f"faults[{fi}]"
        ftype = f.get("type")
        if ftype not in FAULTS:
            raise ScenarioError(f"{where}.type: {ftype!r} is not one of {', '.join(FAULTS)}")
        targets = _names(f["nodes"], groups, known, where) if "nodes" in f else []
        faults.append(Fault(seconds(f.get("at", 0), f"{where}.at"), ftype, targets,
                            seconds(f["duration"], f"{where}.duration") if "duration" in f else None,
                            dict(f.get("params", {}))))
    site = raw.get("gateway", {})
    return Scenario(
        name=name, description=str(head.get("description", "")), path=path,
        seed=int(seed if seed is not None else head.get("seed", 1)), duration_s=duration,
        test_duration_s=test_duration, start_unix_s=start_s, time_sync=bool(head.get("time_sync", False)),
        nodes=specs, groups=groups, events=events, faults=faults, expect=dict(raw.get("expect", {})),
        gateway_site=(float(site.get("x", 0.0)), float(site.get("y", 0.0))), raw=raw)


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
