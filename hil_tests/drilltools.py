"""Small pieces the drills share: per-kind alarm stimuli, latency and delivery measurements.

Latency node -> platform: on the simulator, from the moment the frame left the node (end of its
transmission on the virtual air, wall clock) to the moment the platform sink committed it (``stored_ms``).
On a bench there is no receiver beside the node, so it is measured from the gateway's first reception
(``rx_ms``), which leaves out the time on air (a few hundred ms at SF9); the KPI says which basis it used.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lifeline.hil_tests.dut import Dut
from lifeline.hil_tests.platform import Row
from lifeline.protocols import schema


@dataclass(frozen=True, slots=True)
class AlarmCase:
    """How to make a node kind raise its alarm, and how long the physics may take (node time)."""

    kind: str  # firmware kind
    cause: str  # schema.ALARM_CAUSES name
    episode: str
    params: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    detect_within_s: float = 600.0
    interval_s: int = 300
    config: dict[str, Any] = field(default_factory=dict)
    needs_clock: bool = False
    model: dict[str, float] = field(default_factory=dict)


def leak_night_config(now_unix: float | None = None, *, local_start_min: int = 30, night: Sequence[int] = (1, 2)
                      ) -> dict[str, Any]:
    """Meter settings whose night window starts shortly after the node's clock is set (by the gateway's
    time sync, i.e. the wall clock): local time = UTC + tz_min is 00:30 now, the window is 01:00-02:00."""
    t = time.time() if now_unix is None else now_unix
    utc_min = int(t // 60) % 1440
    tz_min = (local_start_min - utc_min) % 1440
    return {"sensor": {"tz_min": tz_min, "night": list(night)}}


ALARM_CASES = {
    "smoke": AlarmCase("smoke", "smoke", "fire", detect_within_s=240.0),
    "cover_lifted": AlarmCase("tilt", "cover_open", "lift", detect_within_s=120.0, interval_s=900),
    "flood": AlarmCase("water_level", "flood", "rain", {"depth_mm": 60.0, "tp_min": 25.0}, duration_s=1800.0,
                       detect_within_s=4500.0, interval_s=600),
    "leak": AlarmCase("water_meter", "leak", "leak", {"lph": 30.0}, detect_within_s=3 * 3600.0, interval_s=300,
                      needs_clock=True),
}


def cause_name(row: Row) -> str | None:
    c = row.fields.get("cause")
    if isinstance(c, dict):
        c = c.get("label", c.get("value"))
    if isinstance(c, int):
        return schema.ALARM_CAUSES[c] if 0 <= c < len(schema.ALARM_CAUSES) else None
    return str(c) if c is not None else None


def alarms(dut: Dut, cause: str | None = None) -> list[Row]:
    return [r for r in dut.platform.alarms(dut.device_id) if cause is None or cause_name(r) == cause]


def latencies_ms(dut: Dut, rows: Iterable[Row],
                 tx_wall: dict[tuple[bytes, int], int] | None) -> tuple[list[float], str]:
    """(latencies, basis) for ``rows`` of ``dut``: from the node's transmission (simulator) or from the
    gateway's first reception (bench)."""
    out = []
    basis = "node_tx" if tx_wall is not None else "gateway_rx"
    for r in rows:
        if tx_wall is not None:
            t0 = tx_wall.get((dut.device_id, r.fcnt))
            if t0 is None:
                continue
        else:
            t0 = r.rx_ms
        out.append(float(r.stored_ms - t0))
    return out, basis


def settle(dut: Dut, timeout_s: float = 15.0) -> None:
    """Let what is on its way arrive: every frame the gateway heard from ``dut`` stored by the platform
    (simulator), or the platform's count for ``dut`` steady for 2 s (bench)."""
    if dut.monitors_air:
        heard = {(dut.device_id, u.fcnt) for u in dut.uplinks() if u.heard and u.valid and not u.flags & 0x08}
        try:
            dut.platform.wait_keys(heard, timeout_s, "the node's last readings")
        except AssertionError:
            return  # what never arrives is counted as lost by delivery()
        return
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = len(dut.reports())
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= 2.0:
            return
        time.sleep(0.1)


def delivery(dut: Dut) -> tuple[int, int]:
    """(readings the platform stored, readings the node sent) for ``dut``. The node's count comes from the
    monitor receiver on the simulator, from the frame counters (lowest to highest stored) on a bench."""
    stored = {r.fcnt for r in dut.reports()}
    if dut.monitors_air:
        sent = {u.fcnt for u in dut.uplinks() if u.valid and not u.flags & 0x08}
        return len(stored & sent), len(sent)
    if not stored:
        return 0, 0
    return len(stored), max(stored) - min(stored) + 1


def periodic(rows: Sequence[Row], kind: int) -> list[Row]:
    return [r for r in rows if r.kind == kind]


def gaps_s(rows: Sequence[Row]) -> list[int]:
    ts = sorted(r.node_time for r in rows if r.node_time)
    return [b - a for a, b in itertools.pairwise(ts)]
