"""Drill 8: the node's radio is out for four hours (a broken antenna, a parked truck over the cover).

The firmware's link check (an ACK asked for on every 8th report) notices the outage, the node queues its
readings (flash, bounded, alarms kept) and backs off. When the radio is back, an alarm raised then goes out
at once, ahead of the backlog; the queued readings follow oldest first, each flagged ``queued`` and
acknowledged, until the queue is empty. Reports sent blind before the link check noticed are lost on the air:
the drill counts them (unacknowledged LoRa is blind by design, docs/firmware.md section 4).

The channel runs at SF7 here (nodes near the gateway). At SF9, the EU868 default, this drill finds the queue
never drains: the node sends its queued readings back to back, and in the 869.525 MHz sub-band (10 % duty
cycle) a 185 ms acknowledgement keeps the gateway's transmitter off for 1.67 s, while the next queued
reading's answer is due about 1.4 s after the previous one ended. Every second queued reading goes
unacknowledged, the node backs off exponentially, and new readings join the queue faster than it empties
(docs/qa.md, "Findings").
"""

from __future__ import annotations

import pytest

from lifeline.hil_tests.bench import BenchFactory, DutSpec
from lifeline.hil_tests.drilltools import alarms, latencies_ms
from lifeline.hil_tests.kpi import KpiRecorder

INTERVAL_S = 900
OUTAGE_S = 4 * 3600


@pytest.mark.drill(8, "Radio outage at the node: queue delivers afterwards, in order, alarms first")
def test_node_queue_delivers_after_a_radio_outage(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="tilt", interval_s=INTERVAL_S, sf=7))
    dut = b.dut
    dut.expect_boot(30)
    b.sync_time(dut, within_s=2 * INTERVAL_S)  # node times order the queued readings
    dut.run(INTERVAL_S)
    t_out = dut.now_s()
    dut.radio_outage(OUTAGE_S)
    dut.run(OUTAGE_S - 30)
    depth = dut.queue_depth()
    assert depth > 0, "the node queued nothing during a four-hour outage"
    dut.run(31)  # the radio is back

    dut.stimulate("lift")  # an alarm right when the link returns
    dut.run_until(lambda: bool(alarms(dut, "cover_open")), 600, step_s=10, what="the cover alarm at the platform")
    t_radio = dut.now_s()
    dut.run_until(lambda: dut.queue_depth() == 0, 6 * 3600, step_s=300, what="the node's queue draining")
    t_back = t_out + OUTAGE_S
    after = [r for r in dut.reports() if r.fcnt > 0]
    queued = sorted((r for r in after if "queued" in r.flags), key=lambda r: r.fcnt)
    alarm = min(alarms(dut, "cover_open"), key=lambda r: r.fcnt)

    assert len(queued) >= depth, f"{depth} readings were queued, {len(queued)} arrived flagged queued"
    times = [r.node_time for r in queued]
    assert times == sorted(times), f"queued readings out of order: {times}"
    drained = [r for r in queued if r.fcnt > alarm.fcnt or r.node_time >= alarm.node_time]
    assert drained and alarm.fcnt < min(r.fcnt for r in drained), "the alarm waited behind the queued backlog"
    ups = dut.uplinks() if dut.monitors_air else []
    blind = [u for u in ups if t_out <= u.t_s < t_back and not u.heard and not u.flags & 0x02]
    kpi.value("queued_during_outage", depth, "readings", outage_s=OUTAGE_S)
    kpi.value("queued_delivered", len(queued), "readings", in_order=1, missing=0)
    refused = int(b.gateway.metric("adapter_counter", counter="downlink_failed.duty_cycle"))
    kpi.value("queue_drain_s", round(dut.now_s() - t_radio), "s node time", acks_refused_duty_cycle=refused,
              note="radio back -> node queue empty")
    kpi.value("alarm_ahead_of_backlog", 1, "", alarm_fcnt=alarm.fcnt, first_queued_fcnt=min(r.fcnt for r in drained))
    lat, basis = latencies_ms(dut, [alarm], b.world.tx_wall if dut.monitors_air else None)
    kpi.samples("alarm_latency_ms", lat, "ms", kind="tilt", cause="cover_open", basis=basis)
    if ups:
        kpi.value("blind_reports_lost", len(blind), "reports",
                  note="sent before the link check noticed the outage (no ACK asked): lost on the air")
    assert b.platform.chain_intact()
