"""Running a scenario: build the fleet, schedule episodes and faults, run virtual time (paced or flat out),
then judge the scenario's ``[expect]`` table against what the nodes sent and, with a gateway, what the
platform stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import fastpath, frame, schema
from lifeline.sim_devices import faults as faultmod
from lifeline.sim_devices.fleet import Fleet
from lifeline.sim_devices.provision import build_fleet
from lifeline.sim_devices.scenario import Scenario, ScenarioError, seconds

CAUSES = {name: i for i, name in enumerate(schema.ALARM_CAUSES)}
METER_FLAGS = {name: 1 << i for i, name in enumerate(schema.METER_FLAGS)}
SENSOR_FAULTS = {"blocked": 1, "no_echo": 2, "out_of_range": 3}


def build(sc: Scenario, *, record_frames: bool = True,
          technician_key: Ed25519PrivateKey | None = None) -> tuple[Fleet, list[dict[str, Any]]]:
    fleet = Fleet(seed=sc.seed, origin_unix_s=sc.start_unix_s, time_sync=sc.time_sync, record_frames=record_frames)
    fleet.ble_gateway_xy = sc.gateway_site
    wrong = [n for f in sc.faults if f.type == "wrong_key" for n in f.nodes]
    records = build_fleet(sc.nodes, fleet, technician_key=technician_key, wrong_key=wrong)
    for e in sc.events:
        for name in e.nodes:
            try:
                fleet.by_name[name].model.add(e.episode, e.at_s, e.duration_s, **e.params)
            except ValueError as exc:
                raise ScenarioError(f"event at {e.at_s:g}s on {name}: {exc}") from None
    return fleet, records


async def run(fleet: Fleet, duration_s: float, *, speed: float | None = None,
              progress: Callable[[Fleet], None] | None = None, cooperative: bool = False) -> float:
    """Advance the fleet to ``duration_s`` of virtual time. ``speed`` paces it (virtual/real; 1 = real
    time); None runs flat out, yielding to the event loop every few ms when ``cooperative`` (a gateway
    and its radios share the loop). Returns the CPU seconds spent."""
    loop = asyncio.get_running_loop()
    cpu0 = time.process_time()
    real0 = loop.time()
    v0 = fleet.now_ms
    end = duration_s * 1000.0
    last_yield = last_progress = loop.time()
    while True:
        nxt = fleet.next_time_ms()
        if nxt is None or nxt > end:
            break
        now = loop.time()
        if speed is not None:
            delay = real0 + (nxt - v0) / 1000.0 / speed - now
            if delay > 0.001:
                await asyncio.sleep(delay)
                last_yield = loop.time()
        elif cooperative and now - last_yield > 0.005:
            await asyncio.sleep(0)
            last_yield = loop.time()
        if progress is not None and now - last_progress > 0.25:
            progress(fleet)
            last_progress = now
            if not cooperative and speed is None:
                await asyncio.sleep(0)
        fleet.step()
    fleet.run_until(end)
    if progress is not None:
        progress(fleet)
    return time.process_time() - cpu0


# ------------------------------------------------------------------------------------------ judging


@dataclass(frozen=True, slots=True)
class Reading:
    t_s: float
    node: str
    device: bytes
    fcnt: int
    kind: int
    fields: Mapping[int, Any]
    heard: bool
    valid: bool  # what went on the air verifies with the registered key


@dataclass(frozen=True, slots=True)
class Finding:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Outcome:
    readings: list[Reading]
    sink_records: list[Any] | None = None
    gateway_rejects: dict[str, int] | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)


def readings(fleet: Fleet) -> list[Reading]:
    """Every recorded uplink decoded with the key the gateway's registry holds for its device."""
    out = []
    for f in fleet.frames:
        dev = f.payload[3:11]
        keys = fleet.gateway_end.registered.get(dev)
        try:
            if keys is None:
                raise frame.FrameError("unknown_device", "")
            fr = fastpath.decode(f.payload, keys)
            out.append(Reading(f.t_ms / 1000.0, f.node, dev, fr.header.fcnt, fr.header.kind, fr.fields, f.heard,
                               not f.corrupted))
        except frame.FrameError:
            out.append(Reading(f.t_ms / 1000.0, f.node, dev, -1, f.payload[1], {}, f.heard, False))
    return out


def _targets(spec: Any, sc: Scenario) -> list[str]:
    items = spec if isinstance(spec, list) else [spec]
    out: list[str] = []
    for it in items:
        out.extend(sc.groups.get(it, [it]))
    return out


def judge(sc: Scenario, fleet: Fleet, *, sink_records: list[Any] | None = None,
          gateway_rejects: dict[str, int] | None = None, attacker: Any = None) -> Outcome:
    ex = sc.expect
    rs = readings(fleet)
    out = Outcome(rs, sink_records, gateway_rejects)
    add = out.findings.append
    by_dev = {v.dev_id: v.name for v in fleet.nodes}
    alarms = [r for r in rs if r.valid and r.kind == schema.K_ALARM_RAISED]
    sink_alarms: set[tuple[str, int]] = set()
    if sink_records is not None:
        for rec in sink_records:
            if rec.record_type == 0 and rec.kind == schema.K_ALARM_RAISED:
                cause = rec.fields.get("cause")
                cause_i = CAUSES.get(cause, cause) if isinstance(cause, str) else cause
                sink_alarms.add((by_dev.get(rec.device, "?"), int(cause_i) if cause_i is not None else -1))
    expected_alarm_nodes: set[str] = set()
    for i, a in enumerate(ex.get("alarms", [])):
        cause = CAUSES[a["cause"]]
        after = seconds(a.get("after", 0), f"expect.alarms[{i}].after")
        within = seconds(a.get("within", sc.duration_s), f"expect.alarms[{i}].within")
        for node in _targets(a["nodes"], sc):
            expected_alarm_nodes.add(node)
            hits = [r for r in alarms if r.node == node and r.fields.get(2) == cause and r.t_s >= after]
            first = min((r.t_s for r in hits), default=None)
            ok = first is not None and first - after <= within and any(r.heard for r in hits)
            detail = (f"{node}: {a['cause']} alarm sent {first - after:.0f} s after the start (limit {within:.0f} s)"
                      if first is not None else f"{node}: no {a['cause']} alarm")
            if ok and sink_records is not None:
                ok = (node, cause) in sink_alarms
                detail += "; stored by the platform" if ok else "; NOT stored by the platform"
            add(Finding("alarm", ok, detail))
    for spec in ex.get("quiet", []):
        for node in _targets(spec, sc):
            if node in expected_alarm_nodes:
                continue
            bad = [r for r in alarms if r.node == node]
            add(Finding("quiet", not bad, f"{node}: {len(bad)} alarm(s)" if bad else f"{node}: no alarm"))
    for i, fl in enumerate(ex.get("flags", [])):
        bit = METER_FLAGS[fl["flag"]]
        after = seconds(fl.get("after", 0), f"expect.flags[{i}].after")
        for node in _targets(fl["nodes"], sc):
            hit = [r for r in rs if r.valid and r.node == node and r.t_s >= after
                   and r.kind in (schema.K_WATER_METER, schema.K_GAS_METER, schema.K_ELECTRICITY_METER)
                   and int(r.fields.get(3, 0)) & bit]
            add(Finding("flag", bool(hit), f"{node}: {fl['flag']} flag in {len(hit)} report(s)"))
    for sf in ex.get("sensor_faults", []):
        code = SENSOR_FAULTS[sf["fault"]]
        for node in _targets(sf["nodes"], sc):
            hit = [r for r in rs if r.valid and r.node == node and r.kind == schema.K_WATER_LEVEL
                   and r.fields.get(3) == code]
            add(Finding("sensor_fault", bool(hit), f"{node}: {sf['fault']} reported {len(hit)} time(s)"))
    if "min_delivery" in ex:
        sent = sum(1 for r in rs if r.valid)
        heard = sum(1 for r in rs if r.valid and r.heard)
        ratio = heard / sent if sent else 0.0
        add(Finding("delivery", ratio >= float(ex["min_delivery"]),
                    f"{heard}/{sent} frames heard by a gateway radio ({ratio:.3f}, need {ex['min_delivery']})"))
    if sink_records is not None:
        legit = {(r.device, r.fcnt) for r in rs if r.valid and r.fcnt >= 0}
        stored = {(rec.device, rec.fcnt) for rec in sink_records if rec.record_type == 0}
        if ex.get("zero_loss"):
            want = {(r.device, r.fcnt) for r in rs if r.valid and r.heard and r.fcnt >= 0}
            missing = want - stored
            add(Finding("zero_loss", not missing,
                        f"{len(want) - len(missing)}/{len(want)} heard frames stored by the platform"
                        + (f"; missing {sorted((d.hex(), c) for d, c in missing)[:5]}" if missing else "")))
        if ex.get("only_legit_records", True):
            extra = stored - legit
            add(Finding("only_legit", not extra, f"{len(extra)} stored readings no node sent" if extra
                        else f"all {len(stored)} stored readings were sent by provisioned nodes"))
    if gateway_rejects is not None:
        for reason in ex.get("rejects", []):
            n = gateway_rejects.get(reason, 0)
            add(Finding("reject", n > 0, f"gateway rejected {n} frame(s) as {reason}"))
    if attacker is not None and ex.get("attack_recorded", False):
        add(Finding("attack", attacker.replays + attacker.floods > 0,
                    f"attacker sent {attacker.replays} replays and {attacker.floods} forged frames"))
    return out


def summarize(fleet: Fleet, outcome: Outcome | None, cpu_s: float, wall_s: float,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    s = fleet.summary()
    s["cpu_s"] = round(cpu_s, 3)
    s["wall_s"] = round(wall_s, 3)
    node_hours = len(fleet.nodes) * fleet.now_ms / 3_600_000.0
    s["cpu_per_node_hour_s"] = round(cpu_s / node_hours, 6) if node_hours else None
    s["speed"] = round(fleet.now_ms / 1000.0 / wall_s, 1) if wall_s > 0 else None
    if outcome is not None:
        raised = [r for r in outcome.readings if r.valid and r.kind == schema.K_ALARM_RAISED]
        s["alarms_raised"] = [{"t_s": round(r.t_s, 1), "node": r.node,
                               "cause": schema.ALARM_CAUSES[int(r.fields.get(2, 0))]} for r in raised]
        s["expectations"] = [{"check": f.name, "ok": f.ok, "detail": f.detail} for f in outcome.findings]
        s["ok"] = outcome.ok
        if outcome.sink_records is not None:
            s["platform_records"] = len(outcome.sink_records)
        if outcome.gateway_rejects is not None:
            s["gateway_rejects"] = dict(sorted(outcome.gateway_rejects.items()))
    if extra:
        s.update(extra)
    return s


def schedule_faults(sc: Scenario, fleet: Fleet, env: faultmod.Environment | None = None) -> Any:
    return faultmod.schedule(fleet, sc.faults, env or faultmod.Environment())


