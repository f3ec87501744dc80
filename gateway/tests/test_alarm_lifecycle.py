"""Alarm life cycle through the real gateway: node alarm -> forwarded -> platform ack -> C_ACK with the
platform's alarm_state to the node -> handled -> closed; cleared by the node; local escalation (SMS through
the pty modem emulator) when no platform ack comes in time; the state survives restarts and kill -9."""

from __future__ import annotations

import json
from pathlib import Path

from lifeline.gateway.alarms import STEPS
from lifeline.gateway.clock import ManualClock
from lifeline.gateway.rules_engine import audit
from lifeline.gateway.rules_engine.service import RulesService
from lifeline.gateway.testing import Harness, TestNode, start_harness
from lifeline.protocols import batch, frame, schema
from lifeline.sim_devices.gsm_modem_emulator import GsmModemEmulator

T0 = 1_767_225_600_000
MIN = 60_000
DEV = bytes.fromhex("70b3d57ed0000a01")


def steps(h: Harness, alarm_id: int) -> list[str]:
    recs: list[batch.BatchRecord] = sorted((r for r in h.records() if r.record_type == 1 and r.kind == audit.EV_ALARM
                                            and r.fields[audit.FAL_ID] == alarm_id), key=lambda r: r.fcnt)
    return [STEPS[int(r.fields[audit.FAL_STEP])] for r in recs]


def ack_command(cid: str, alarm_id: int, state: int) -> bytes:
    return json.dumps({"id": cid, "device": DEV.hex(), "command": "ack",
                       "fields": {"alarm_id": alarm_id, "alarm_state": state}}).encode()


async def test_alarm_is_forwarded_acknowledged_delivered_handled_closed_and_cleared(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "unacked"\nwhen = { type = "alarm_unacked", after = "3m" }\n')
    node = TestNode(DEV, kind="smoke")
    clock = ManualClock(T0)
    svc = RulesService.from_files([rules], clock=clock)
    h = await start_harness(tmp_path / "gw", [node], clock=clock, rules=svc)
    try:
        await h.hear(node.uplink(schema.K_ALARM_RAISED, {1: 5, 2: 0, 3: 1450}, flags=frame.FLAG_ACK_REQ))
        first = node.decode_downlink(h.adapter.downlinks[-1].payload)
        assert first.header.kind == schema.C_ACK and first.fields[2] == 5 and first.fields[3] == 0  # gateway got it
        a = svc.tracker.get(DEV, 5)
        assert a is not None and a.stage == "raised" and a.cause == 0 and a.value == 1450
        await svc.tick()
        assert a.stage == "raised"  # still in the buffer
        assert await h.gw.forward_all() >= 1  # published and PUBACKed (the alarm goes out at once)
        await svc.tick()
        assert a.stage == "forwarded"

        clock.advance(MIN)
        await h.gw.command_handler(ack_command("ack-1", 5, 1))
        assert a.stage == "acked" and a.acked_ms == T0 + MIN
        await h.gw.command_handler(ack_command("ack-1", 5, 1))  # MQTT redelivery: recognised
        clock.advance(30_000)
        await h.hear(node.uplink(schema.K_HEARTBEAT, {1: 3, 15: 3000}, flags=frame.FLAG_ACK_REQ))
        ack = node.decode_downlink(h.adapter.downlinks[-1].payload)
        assert ack.header.kind == schema.C_ACK and ack.fields[2] == 5 and ack.fields[3] == 1  # the platform's state
        await svc.tick()
        assert a.ack_delivered_ms == T0 + MIN + 30_000 and a.ack_down_fcnt == ack.header.fcnt

        await h.gw.command_handler(ack_command("ack-2", 5, 2))
        assert a.stage == "handled" and a.ack_delivered_ms is None  # a new state to deliver
        await h.hear(node.uplink(schema.K_HEARTBEAT, {1: 3, 15: 3000}, flags=frame.FLAG_ACK_REQ))
        assert node.decode_downlink(h.adapter.downlinks[-1].payload).fields[3] == 2
        await svc.tick()
        await h.hear(node.uplink(schema.K_ALARM_CLEARED, {1: 5, 2: 0, 3: 30}, flags=frame.FLAG_ACK_REQ))
        assert a.cleared_ms is not None and not a.open
        await h.gw.command_handler(ack_command("ack-3", 5, 3))
        assert a.stage == "closed"
        clock.advance(5 * MIN)
        await svc.tick()
        await svc.wait_idle()
        await h.gw.flush()
        clock.advance(1000)
        await h.gw.forward_all()
        assert steps(h, 5) == ["raised", "forwarded", "acked", "ack_delivered", "handled", "ack_delivered",
                               "cleared", "closed"]
        # acknowledged in time: never escalated
        assert not [r for r in h.records() if r.record_type == 1 and r.kind == audit.EV_RULE_FIRED]
        alarm_records = [r for r in h.records() if r.record_type == 1 and r.kind == audit.EV_ALARM]
        assert all(r.device_id == DEV for r in alarm_records)
    finally:
        await h.stop()


RULES = """
[contacts]
duty = ["+8613700000099"]
[outputs.modem]
type = "sms"
port = "{port}"
[[rule]]
name = "alarm-not-acked"
priority = "alarm"
when = {{ type = "alarm_unacked", after = "3m" }}
[[rule.action]]
type = "sms"
output = "modem"
to = ["@duty"]
text = "Alarm {{alarm_id}} ({{cause}}) of {{device}} not acknowledged"
"""


async def test_no_platform_ack_in_time_escalates_once_across_a_crash(tmp_path: Path) -> None:
    async with GsmModemEmulator(tmp_path / "ttyGSM", send_delay_s=0.01) as emu:
        rules = tmp_path / "rules.toml"
        rules.write_text(RULES.format(port=emu.path))
        node = TestNode(DEV, kind="smoke")
        clock = ManualClock(T0)
        svc = RulesService.from_files([rules], clock=clock)
        h = await start_harness(tmp_path / "gw", [node], clock=clock, rules=svc)
        h.pub.online = False  # the platform is unreachable
        await h.hear(node.uplink(schema.K_ALARM_RAISED, {1: 6, 2: 3}, flags=frame.FLAG_ACK_REQ))
        clock.advance(3 * MIN - 1)
        await svc.tick()
        await svc.wait_idle()
        assert emu.sent == []
        clock.advance(1)
        await svc.tick()
        await svc.wait_idle()
        (sms,) = emu.sent
        assert sms.number == "+8613700000099" and sms.text == f"Alarm 6 (flood) of {DEV.hex()} not acknowledged"
        a = svc.tracker.get(DEV, 6)
        assert a is not None and a.escalated_ms == T0 + 3 * MIN and a.stage == "raised"

        await h.gw.flush()  # the escalation's audit records are committed ...
        await h.crash()  # ... then kill -9: nothing else is flushed
        await svc.abandon()

        clock.advance(MIN)
        svc2 = RulesService.from_files([rules], clock=clock)
        h2 = await start_harness(tmp_path / "gw", [node], clock=clock, rules=svc2, provision_nodes=False)
        try:
            a2 = svc2.tracker.get(DEV, 6)
            assert a2 is not None and a2.escalated_ms == T0 + 3 * MIN and a2.stage == "raised"
            clock.advance(MIN)
            await svc2.tick()
            await svc2.wait_idle()
            assert len(emu.sent) == 1  # the active escalation was restored: no second SMS
            assert await h2.gw.forward_all() >= 1  # the platform is reachable again
            await svc2.tick()
            assert a2.stage == "forwarded"
            await h2.gw.command_handler(ack_command("late-ack", 6, 1))
            await svc2.wait_idle()
            await h2.gw.flush()
            clock.advance(1000)
            await h2.gw.forward_all()
            # the audit trail reaches the platform: escalation fired before the crash, its end after
            recs = sorted((r for r in [*h.records(), *h2.records()] if r.record_type == 1), key=lambda r: r.fcnt)
            fired = [r for r in recs if r.kind == audit.EV_RULE_FIRED]
            cleared = [r for r in recs if r.kind == audit.EV_RULE_CLEARED]
            results = [r for r in recs if r.kind == audit.EV_ACTION]
            assert [r.fields[audit.F_ALARM_ID] for r in fired] == [6] and fired[0].priority == schema.P_ALARM
            assert [r.fields[audit.F_REASON] for r in cleared] == [b"acked"]
            assert [r.fields[audit.FA_RESULT] for r in results] == [0]
            assert results[0].fields[audit.FA_TARGET] == b"**********0099"
            assert "escalated" in steps(h2, 6) and steps(h2, 6)[-1] == "acked"
            assert len({r.fcnt for r in recs}) == len(recs)  # audit seqs never reused across the crash
        finally:
            await h2.stop()
