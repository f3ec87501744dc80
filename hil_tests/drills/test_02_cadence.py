"""Drill 2: the periodic cadence holds for a day, with heartbeats.

A water-level node (15-minute reports, 6-hour heartbeats) runs for a day of node time with its clock set
by the gateway's time sync. At the platform: one report per interval (node times spaced by the interval),
every heartbeat, nothing lost. The battery estimate (tools/battery.py) is computed from the cadence the
platform actually observed, next to the simulator's own charge count for the day.
"""

from __future__ import annotations

import statistics

import pytest

from lifeline.hil_tests.bench import BenchFactory, DutSpec
from lifeline.hil_tests.drilltools import delivery, gaps_s, periodic, settle
from lifeline.hil_tests.kpi import KpiRecorder
from lifeline.hil_tests.platform import Row
from lifeline.protocols import schema
from lifeline.tools import battery

DAY_S = 86400
INTERVAL_S = 900
HEARTBEAT_S = 6 * 3600


@pytest.mark.drill(2, "Periodic cadence held for a day, heartbeats present")
def test_cadence_and_heartbeats_for_a_day(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="water_level", interval_s=INTERVAL_S, heartbeat_s=HEARTBEAT_S))
    dut = b.dut
    dut.expect_boot(30)
    b.sync_time(dut, within_s=2 * INTERVAL_S)
    n_before = len(dut.reports())
    start = dut.now_s()
    dut.run(DAY_S)
    day = [r for r in dut.reports()[n_before:] if r.node_time]
    b.platform.wait(lambda p: len(dut.reports()) >= n_before + len(day), 15, "the day's reports")

    # a reading sent twice (heard by the gateway, its ACK lost, resent from the node's queue with a new frame
    # counter) is one reading for the cadence: count node times
    reports = _distinct(periodic(day, schema.K_WATER_LEVEL))
    beats = _distinct(periodic(day, schema.K_HEARTBEAT))
    twice = len(day) - len(_distinct(day))
    expected = DAY_S // INTERVAL_S
    gaps = gaps_s(reports)
    beat_gaps = gaps_s(beats)
    settle(dut)
    stored, sent = delivery(dut)
    kpi.value("reports_per_day", len(reports), "reports", expected=expected)
    kpi.value("heartbeats_per_day", len(beats), "heartbeats", expected=DAY_S // HEARTBEAT_S)
    kpi.samples("report_interval_s", gaps, "s", configured=INTERVAL_S)
    kpi.value("delivery_ratio", round(stored / sent, 4) if sent else 0.0, "", stored=stored, sent=sent)
    refused = int(b.gateway.metric("adapter_counter", adapter="lora0", counter="downlink_failed.duty_cycle"))
    kpi.value("readings_delivered_twice", twice, "readings", acks_refused_duty_cycle=refused,
              note="heard by the gateway but the node missed the ACK, so it resent them from its queue")

    assert abs(len(reports) - expected) <= 1, f"{len(reports)} reports in a day, expected {expected}"
    assert gaps and max(gaps) <= INTERVAL_S * 1.1 and min(gaps) >= INTERVAL_S * 0.9, f"report gaps {sorted(gaps)}"
    assert statistics.median(gaps) == pytest.approx(INTERVAL_S, abs=30)
    assert len(beats) >= DAY_S // HEARTBEAT_S, f"{len(beats)} heartbeats in a day"
    assert all(abs(g - HEARTBEAT_S) <= 120 for g in beat_gaps), f"heartbeat gaps {beat_gaps}"
    assert stored == sent, f"the platform stored {stored} of the {sent} readings the node sent"
    assert b.platform.chain_intact()

    # battery: the model (tools/battery.py) at the cadence the platform observed
    observed_interval = round(statistics.mean(gaps))
    est = battery.estimate("water_level", observed_interval, dut.app.lora_sf, heartbeat_s=HEARTBEAT_S)
    kpi.value("battery_life_years", est.life_years, "years", basis="tools/battery.py at the observed cadence",
              kind="water_level",
              interval_s=observed_interval, mah_per_day=est.total_mah_per_day)
    if dut.is_sim:
        used_mah = b.world.call(lambda: b.world.node(dut.name).battery.used_mas) / 3600.0
        days = (dut.now_s()) / DAY_S
        kpi.value("sim_charge_mah_per_day", round(used_mah / days, 3), "mAh/day",
                  basis="simulator charge count (awake, air time, sleep)", node_days=round(days, 2))
    assert est.life_years > 5, f"battery estimate {est.life_years} years"
    assert dut.now_s() - start >= DAY_S


def _distinct(rows: list[Row]) -> list[Row]:
    seen: dict[tuple[int, int], Row] = {}
    for r in rows:
        seen.setdefault((r.kind, r.node_time), r)
    return list(seen.values())
