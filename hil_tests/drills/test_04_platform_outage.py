"""Drill 4: the city platform is unreachable for an hour of node time.

While the platform's broker is down: the node and its neighbours keep reporting, the gateway commits
everything to its buffer, and its local rules act on their own (a node alarm sounds the site siren over the
LAN broker within seconds, with the platform gone). When the platform is back the gateway reconnects by
itself and drains the backlog: every reading it accepted reaches the platform exactly once, the alarm before
the periodic backlog, the signed batch chain intact.
"""

from __future__ import annotations

import time

import pytest

from lifeline.gateway.testing_proc import wait_until
from lifeline.hil_tests.bench import BenchFactory, DutSpec, NeighbourSpec
from lifeline.hil_tests.drilltools import alarms, latencies_ms
from lifeline.hil_tests.drilltools_lan import LanListener
from lifeline.hil_tests.kpi import KpiRecorder

RULES = """
version = 1
[failover]
grace = "1s"
[outputs.siren]
type = "mqtt"
host = "127.0.0.1"
port = {lan_port}
[[rule]]
name = "siren-on-alarm"
description = "Sound the site siren for any node alarm while the platform cannot be reached"
[rule.when]
report = "alarm"
[rule.if]
uplink = "down"
[[rule.action]]
type = "mqtt"
output = "siren"
topic = "site/siren/{device}"
payload = "alarm {cause} from {device}"
"""

OUTAGE_S = 3600.0


@pytest.mark.fast
@pytest.mark.drill(4, "Platform outage of one hour: local rules, buffering, drain, zero loss, alarms first")
def test_platform_outage_buffers_acts_locally_and_drains(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="smoke", interval_s=300), neighbours=NeighbourSpec(count=10, interval_s=300, speed=60.0),
              rules=RULES)
    dut, gw, platform = b.dut, b.gateway, b.platform
    lan = LanListener(b.node_broker.host, b.node_broker.port)
    try:
        dut.run_until(lambda: len(dut.reports()) >= 2, 900, what="reports before the outage")
        platform.wait(lambda p: p.count() >= 12, 60, "neighbour readings before the outage")

        platform.broker.stop()
        wait_until(lambda: gw.metric("uplink_connected") == 0, 30, "the gateway noticing the platform is gone")
        stored_at_outage = platform.count()
        dut.run(OUTAGE_S / 2)
        dut.stimulate("fire")
        dut.run_until(lambda: any(u.kind == 9 for u in dut.uplinks()), 600, step_s=10, what="the node's alarm")
        wait_until(lambda: bool(lan.received("site/siren/")), 15, "the local rule's siren on the LAN broker")
        siren_s = lan.received("site/siren/")[0][0]
        assert dut.device_id.hex() in lan.received("site/siren/")[0][1]
        dut.run(OUTAGE_S / 2)
        wait_until(lambda: gw.metric("readings_accepted_total") > 0, 5, "accepted readings")
        buffered = gw.buffered_readings()
        dut_sent = {(dut.device_id, u.fcnt) for u in dut.uplinks() if u.heard and u.valid}
        dut_during = {k for k in dut_sent if k in buffered}
        assert dut_during, "no node reading was buffered during the outage"
        assert platform.count() == stored_at_outage, "the platform stored records while its broker was down"
        kpi.value("outage_buffered_readings", len(buffered), "readings", node_readings=len(dut_during))

        platform.broker.start()  # same port; nobody tells the gateway
        t_up = time.monotonic()
        wait_until(lambda: gw.metric("uplink_connected") == 1, 60, "the gateway reconnecting by itself")
        reconnect_s = time.monotonic() - t_up
        platform.wait_keys(buffered, 120, "the buffered backlog at the platform")
        recovery_s = time.monotonic() - t_up
        kpi.value("reconnect_s", round(reconnect_s, 2), "s", after="platform broker back")
        kpi.value("recovery_s", round(recovery_s, 2), "s", what="platform back -> whole backlog stored")
        kpi.value("backlog_drained", len(buffered), "readings", missing=0)

        # zero loss: everything the gateway heard and accepted, from the node and its neighbours
        b.neighbours.pause()
        published = b.neighbours.published()
        platform.wait_keys(dut_sent | published, 120, "every reading the node and its neighbours sent")
        keys = platform.keys()
        assert len(keys) == len(set(keys)), "a reading was stored twice"
        accepted = int(gw.metric("readings_accepted_total"))
        assert len(keys) == accepted, f"the gateway accepted {accepted} readings, the platform stored {len(keys)}"
        kpi.value("delivery_ratio", round(len(keys) / accepted, 4), "", stored=len(keys), accepted=accepted)

        # alarms first: the outage's alarm left before the periodic backlog
        alarm = min(alarms(dut, "smoke"), key=lambda r: r.id)
        backlog = [r for r in platform.rows() if r.lane == 1 and not r.is_alarm]
        assert backlog, "nothing went on the backlog lane"
        assert alarm.id < min(r.id for r in backlog), "the alarm was stored after periodic backlog records"
        lat, basis = latencies_ms(dut, [alarm], b.world.tx_wall if dut.monitors_air else None)
        kpi.value("alarm_stored_before_backlog", 1, "", backlog_records=len(backlog))
        kpi.value("outage_alarm_delay_s", round(lat[0] / 1000.0, 1), "s", basis=basis,
                  note="buffered alarm: from the node to the platform across the outage")
        t_alarm_ms = b.world.tx_wall[(dut.device_id, alarm.fcnt)] if dut.monitors_air else alarm.rx_ms
        kpi.value("local_rule_latency_ms", round(siren_s * 1000.0 - t_alarm_ms), "ms", basis=basis,
                  note="alarm from the node -> siren on the site LAN broker, platform unreachable")
        assert platform.chain_intact(), platform.chain_report()
    finally:
        lan.close()
