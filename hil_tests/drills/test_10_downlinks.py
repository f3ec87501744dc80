"""Drill 10: a configuration change and an alarm acknowledgement travel platform -> gateway -> node.

Configuration: the platform queues a ``config`` command (version 2, 10-minute interval); the gateway answers
``queued``, sends it in the node's next receive window and answers ``sent``; the node applies it (its
/config.json says version 2) and the platform sees the new cadence. Alarm acknowledgement: a fire makes
the smoke node alarm; without a platform acknowledgement its sounder escalates to the loud stage after
60 s; the platform acknowledges the alarm (``ack``, alarm_state 1), the gateway delivers it with the node's
next uplink, and the node stops the escalation while the alarm tone goes on (EN 14604).
"""

from __future__ import annotations

import pytest

from lifeline.hil_tests.bench import BenchFactory, DutSpec
from lifeline.hil_tests.drilltools import alarms, gaps_s, latencies_ms
from lifeline.hil_tests.kpi import KpiRecorder
from lifeline.protocols import schema

INTERVAL_S = 300
NEW_INTERVAL_S = 600


@pytest.mark.fast
@pytest.mark.drill(10, "Config downlink applied and acknowledged; alarm ack reaches the node")
def test_config_downlink_and_alarm_ack_reach_the_node(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="smoke", interval_s=INTERVAL_S))
    dut, platform = b.dut, b.platform
    dut.expect_boot(30)
    b.sync_time(dut, within_s=2 * INTERVAL_S)

    # --- configuration
    cid = platform.command(dut.device_id, "config", {"config_version": 2, "interval": NEW_INTERVAL_S})
    assert platform.wait_result(cid, "queued", 15)["status"] == "queued"
    t0 = dut.now_s()
    dut.run_until(lambda: (platform.result(cid) or {}).get("status") == "sent", 3 * INTERVAL_S, step_s=30,
                  what="the config command sent to the node")
    kpi.value("command_to_node_s", round(dut.now_s() - t0, 1), "s node time", command="config")
    cfg = dut.node_config()
    assert cfg["config_version"] == 2 and cfg["interval"] == NEW_INTERVAL_S, cfg
    n = len(dut.reports(schema.K_SMOKE))
    dut.run_until(lambda: len(dut.reports(schema.K_SMOKE)) >= n + 3, 4 * NEW_INTERVAL_S, step_s=60,
                  what="three reports at the new interval")
    new_gaps = gaps_s(dut.reports(schema.K_SMOKE)[n:])
    assert new_gaps and all(abs(g - NEW_INTERVAL_S) <= 30 for g in new_gaps), f"gaps after the change: {new_gaps}"
    kpi.value("config_applied", 1, "", config_version=2, observed_interval_s=new_gaps[-1])

    # --- alarm acknowledgement
    dut.stimulate("fire")
    dut.run_until(lambda: bool(alarms(dut, "smoke")), 600, step_s=10, what="the smoke alarm at the platform")
    alarm = min(alarms(dut, "smoke"), key=lambda r: r.fcnt)
    alarm_id = int(alarm.field("alarm_id"))
    lat, basis = latencies_ms(dut, [alarm], b.world.tx_wall if dut.monitors_air else None)
    kpi.samples("alarm_latency_ms", lat, "ms", kind="smoke", cause="smoke", basis=basis)
    t_alarm = dut.now_s()
    dut.run(90)  # no platform ack yet: the sounder escalates after 60 s
    assert dut.output_on("buzzer_loud", since_s=t_alarm, question="Is the loud sounder stage on?"), \
        "the sounder did not escalate without a platform acknowledgement"
    aid = platform.ack_alarm(dut.device_id, alarm_id)
    platform.wait_result(aid, "queued", 15)
    t_ack = dut.now_s()
    dut.run_until(lambda: (platform.result(aid) or {}).get("status") == "sent", 3600, step_s=30,
                  what="the alarm acknowledgement sent to the node")
    t_sent = dut.now_s()
    kpi.value("alarm_ack_to_node_s", round(t_sent - t_ack, 1), "s node time")
    dut.run(120)  # the fire goes on: the node keeps sounding, without the loud stage
    assert not dut.output_on("buzzer_loud", since_s=t_sent, question="Did the loud sounder stage come on again?"), \
        "the acknowledgement did not stop the escalation"
    assert dut.output_on("buzzer", since_s=t_sent, question="Does the alarm tone go on?"), \
        "the alarm tone stopped with the acknowledgement (it must go on while there is smoke)"
    kpi.value("escalation_stopped_by_ack", 1, "", alarm_id=alarm_id)
    assert platform.chain_intact()
