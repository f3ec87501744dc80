"""Drill 7: the gateway's buffer runs into its disk quota while the platform is unreachable.

With a 1 MB quota and the platform's broker down, the neighbours' load fills the buffer. The policy
(docs/architecture.md, "Buffer policy") must apply: the oldest periodic readings go first, an alarm raised
meanwhile survives, and every drop is counted (``buffer_drops_total{reason,priority}``) and reported to the
platform as a buffer-drop event. When the platform is back: stored + dropped = accepted, exactly.
"""

from __future__ import annotations

from typing import Any

import pytest

from lifeline.gateway.testing_proc import wait_until
from lifeline.hil_tests.bench import BenchFactory, DutSpec, NeighbourSpec
from lifeline.hil_tests.drilltools import alarms
from lifeline.hil_tests.kpi import KpiRecorder

EV_BUFFER_DROP = 2  # gateway/records.py
QUOTA_MB = 1


@pytest.mark.drill(7, "Disk full on the gateway: policy applies, alarms survive, drops counted")
def test_buffer_quota_drops_periodic_keeps_alarms_and_counts(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="smoke", interval_s=300),
              neighbours=NeighbourSpec(count=100, interval_s=60, speed=600.0,
                                       kinds=("water_meter", "gas_meter", "water_level")),
              quota_mb=QUOTA_MB)
    dut, gw, platform = b.dut, b.gateway, b.platform
    dut.run_until(lambda: len(dut.reports()) >= 1, 600, what="a report before the outage")
    platform.broker.stop()
    wait_until(lambda: gw.metric("uplink_connected") == 0, 30, "the gateway noticing the platform is gone")

    def dropped(priority: str = "") -> float:
        return gw.metric("buffer_drops_total", reason="quota", **({"priority": priority} if priority else {}))

    wait_until(lambda: dropped("periodic") > 0, 120, "the buffer reaching its quota", poll_s=0.2)
    dut.stimulate("fire")
    dut.run_until(lambda: any(u.kind == 9 and u.heard for u in dut.uplinks()), 600, step_s=10,
                  what="the node's alarm heard by the gateway")
    alarm_keys = {(dut.device_id, u.fcnt) for u in dut.uplinks() if u.kind == 9 and u.heard}
    more = dropped("periodic")
    wait_until(lambda: dropped("periodic") > more, 60, "the policy still dropping after the alarm", poll_s=0.2)
    assert alarm_keys & gw.buffered_readings(), "the alarm was dropped from the buffer"
    b.neighbours.pause()
    quota_bytes = gw.metric("disk_quota_bytes")
    by_prio = {p: int(v) for p, v in gw.metric_by("buffer_drops_total", "priority").items()}
    assert by_prio.get("alarm", 0) == 0, f"alarms dropped: {by_prio}"
    assert by_prio.get("periodic", 0) > 0

    platform.broker.start()
    wait_until(lambda: gw.metric("uplink_connected") == 1, 60, "the gateway reconnecting")
    wait_until(lambda: not gw.buffered_readings(), 180, "the buffer draining", poll_s=0.2)
    platform.wait(lambda p: bool(alarms(dut, "smoke")), 30, "the alarm at the platform")
    drops_total = int(sum(gw.metric_by("buffer_drops_total", "priority").values()))

    def drop_events() -> list[Any]:
        return [r for r in platform.batch_records() if r.record_type == 1 and r.kind == EV_BUFFER_DROP]

    wait_until(lambda: sum(int(e.fields[3]) for e in drop_events()) >= drops_total, 60,
               "the buffer-drop events at the platform")
    events = drop_events()
    reported = sum(int(e.fields[3]) for e in events)
    accepted = int(gw.metric("readings_accepted_total"))
    platform.wait(lambda p: len(p.keys()) + drops_total >= accepted, 60, "the drained backlog at the platform")
    stored = len(platform.keys())
    assert reported == drops_total, f"drop events report {reported}, the counters {drops_total}"
    assert stored + drops_total == accepted, (
        f"stored {stored} + dropped {drops_total} != accepted {accepted}: something vanished uncounted")
    assert gw.metric("over_quota") == 0
    assert platform.chain_intact(), platform.chain_report()
    kpi.counts("buffer_drops", by_prio, reason="quota", quota_mb=QUOTA_MB)
    kpi.value("drops_reported_to_platform", reported, "readings", events=len(events))
    kpi.value("drop_event_rows_stored_by_sink", len(platform.events(EV_BUFFER_DROP)), "rows",
              events_delivered=len(events),
              note="the reference sink keys gateway events by (gateway, device, fcnt); every drop event has "
                   "device 0 and fcnt 0, so it keeps one row: a sink/gateway contract gap, not a lost count")
    kpi.value("accepted_equals_stored_plus_dropped", 1, "", accepted=accepted, stored=stored, dropped=drops_total)
    kpi.value("quota_bytes", int(quota_bytes), "bytes")
