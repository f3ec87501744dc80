"""The rules service inside the real gateway (in-process): real pipeline, SQLite files, signed batches;
simulated GPIO chip; injected clock. Audit records are read back from the signed batches."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from lifeline.gateway.actions.gpio import SimChip
from lifeline.gateway.clock import ManualClock
from lifeline.gateway.rules_engine import audit, state
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.service import RulesService
from lifeline.gateway.testing import Harness, TestNode, start_harness
from lifeline.protocols import batch, frame, schema

T0 = 1_767_225_600_000
MIN = 60_000


def events(h: Harness, code: int | None = None) -> list[batch.BatchRecord]:
    """Audit records in the order they were made (batches and lanes may reorder them; the seq does not)."""
    return sorted((r for r in h.records() if r.record_type == 1 and (code is None or r.kind == code)),
                  key=lambda r: r.fcnt)


async def settle(h: Harness, svc: RulesService) -> None:
    """Actions finished, audit records committed and published (memory publisher); the clock moves 1 s
    so the newest records are past the dedupe collection window."""
    await svc.wait_idle()
    await h.gw.flush()
    h.clock.advance(1000)
    await h.gw.forward_all()


def write(path: Path, text: str) -> Path:
    path.write_text('timezone = "UTC"\n' + text)
    return path


def flood_rules(chip: str) -> str:
    return f"""
[outputs.relays]
type = "gpio"
chip = "sim:{chip}"

[[rule]]
name = "pump-on"
when = {{ type = "threshold", kind = "water_level", field = "level", above = "300 mm", clear = "250 mm", for = "2m" }}
[[rule.action]]
type = "gpio"
output = "relays"
line = 17
[[rule.action]]
type = "priority"
level = "alarm"
[[rule.clear_action]]
type = "gpio"
output = "relays"
line = 17
value = "off"
"""


async def test_flash_flood_pump_relay_on_after_duration_off_with_hysteresis(tmp_path: Path) -> None:
    chip_name = f"flood-{uuid.uuid4().hex[:8]}"
    rules = write(tmp_path / "rules.toml", flood_rules(chip_name))
    node = TestNode(bytes.fromhex("70b3d57ed00000f1"), kind="water_level")
    clock = ManualClock(T0)
    svc = RulesService.from_files([rules], clock=clock)
    h = await start_harness(tmp_path / "gw", [node], clock=clock, rules=svc)
    chip = SimChip.get(chip_name)
    try:
        async def level(mm: int) -> None:
            await h.hear(node.uplink(schema.K_WATER_LEVEL, {1: mm, 15: 3400}))

        await level(240)
        await level(310)  # rising: the duration starts
        clock.advance(MIN)
        await level(330)
        clock.advance(MIN - 1)
        await svc.tick()
        await svc.wait_idle()
        assert chip.value(17) == 0 and chip.history(17) == []
        clock.advance(1)
        await svc.tick()  # 2 minutes above 300 mm
        await svc.wait_idle()
        assert chip.history(17) == [(T0 + 2 * MIN, 1)]
        clock.advance(MIN)
        await level(280)  # in the hysteresis band: the pump keeps running
        clock.advance(MIN)
        await level(260)
        await svc.wait_idle()
        assert chip.value(17) == 1
        clock.advance(MIN)
        await level(249)
        await settle(h, svc)
        assert chip.history(17) == [(T0 + 2 * MIN, 1), (T0 + 5 * MIN, 0)]

        fired = events(h, audit.EV_RULE_FIRED)
        cleared = events(h, audit.EV_RULE_CLEARED)
        assert len(fired) == len(cleared) == 1
        assert fired[0].fields[audit.F_RULE] == b"pump-on" and fired[0].fields[audit.F_VALUE] == 330
        assert fired[0].device_id == node.device_id and fired[0].rx_ms == T0 + 2 * MIN
        assert cleared[0].fields[audit.F_REASON] == b"hysteresis"
        results = events(h, audit.EV_ACTION)
        assert [(r.fields[audit.FA_RESULT], r.fields[audit.FA_DETAIL]) for r in results] == [
            (0, b"line 17 on"), (0, b"line 17 off")]
        assert int(results[0].fields[audit.FA_FIRING]) + audit.AUDIT_FCNT_BASE == fired[0].fcnt
        assert len({r.fcnt for r in events(h)}) == len(events(h))  # one audit seq each
        readings = sorted((r for r in h.records() if r.record_type == 0), key=lambda r: r.fcnt)
        # readings while the pump rule is active are raised to alarm priority
        assert [r.priority for r in readings] == [2, 2, 2, 0, 0, 2]
    finally:
        await h.stop()


async def test_silent_node_raises_device_offline_and_clears_when_it_returns(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.toml", '[[rule]]\nname = "node-offline"\n'
                                           'when = { type = "silent", intervals = 3, interval = "10m" }\n')
    node, other = (TestNode(bytes.fromhex(f"70b3d57ed00000a{i}"), kind="smoke") for i in (1, 2))
    clock = ManualClock(T0)
    svc = RulesService.from_files([rules], clock=clock)
    h = await start_harness(tmp_path / "gw", [node, other], clock=clock, rules=svc)
    try:
        for _ in range(3):
            await h.hear(node.smoke(0))
            await h.hear(other.smoke(0))
            clock.advance(10 * MIN)
            await svc.tick()
        await h.hear(other.smoke(0))  # the other node keeps reporting
        clock.advance(MIN)
        await svc.tick()
        await settle(h, svc)
        assert events(h, audit.EV_RULE_FIRED) == []  # 31 min since `node`'s first report, 11 since its last
        clock.advance(19 * MIN)
        await h.hear(other.smoke(0))
        await svc.tick()  # 30 minutes = 3 intervals of silence
        await svc.tick()
        await settle(h, svc)
        (off,) = events(h, audit.EV_RULE_FIRED)
        assert off.device_id == node.device_id and off.fields[audit.F_TRIGGER] == m.TRIGGER_CODES["silent"]
        assert 1800 <= int(off.fields[audit.F_VALUE]) < 1810  # seconds of silence (settle moves the clock 1 s)
        clock.advance(5 * MIN)
        await h.hear(node.smoke(0))
        await settle(h, svc)
        (back,) = events(h, audit.EV_RULE_CLEARED)
        assert back.device_id == node.device_id and back.fields[audit.F_REASON] == b"returned"
    finally:
        await h.stop()


GOOD = '[[rule]]\nname = "smoke"\nwhen = { report = "smoke_alarm" }\n'


async def test_reload_with_a_bad_file_keeps_the_old_rules(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.toml", GOOD)
    node = TestNode(bytes.fromhex("70b3d57ed00000b1"))
    clock = ManualClock(T0)
    svc = RulesService.from_files([rules], clock=clock)
    h = await start_harness(tmp_path / "gw", [node], clock=clock, rules=svc, serve_metrics=False)
    try:
        write(rules, GOOD.replace("smoke_alarm", "smoke_alarms"))
        err = h.gw.reload_rules()
        assert err is not None and err.startswith(f"{rules}:4: rule[0].when.report: 'smoke_alarms' is not")
        assert [rt.rule.name for rt in svc.engine.rts] == ["smoke"]
        assert svc.m_reloads.get("refused") == 1
        await h.hear(node.smoke(2))  # the old rule still works
        write(rules, GOOD + '[[rule]]\nname = "pre"\nwhen = { report = "smoke_pre_alarm" }\n')
        assert h.gw.reload_rules() is None and svc.m_reloads.get("ok") == 1
        await h.hear(node.smoke(1))  # the alarm clears (old rule, state kept), the new rule fires
        await settle(h, svc)
        loaded = events(h, audit.EV_RULES_LOADED)
        assert [r.fields[audit.FL_OK] for r in loaded] == [1, 0, 1]  # start, refused, reloaded
        assert bytes(loaded[1].fields[audit.FL_REASON]).startswith(str(rules).encode()[:40])
        firings = [(r.kind, r.fields[audit.F_RULE]) for r in events(h) if r.kind in (64, 65)]
        assert firings[0] == (64, b"smoke") and sorted(firings[1:]) == [(64, b"pre"), (65, b"smoke")]
    finally:
        await h.stop()


async def test_mode_from_the_platform_and_from_the_local_cli(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.toml", '[[rule]]\nname = "cover"\nwhen = { report = "cover_open" }\n'
                                           'if = { mode = ["emergency"] }\n')
    node = TestNode(bytes.fromhex("70b3d57ed00000c1"), kind="manhole_tilt")
    clock = ManualClock(T0)
    svc = RulesService.from_files([rules], clock=clock)
    h = await start_harness(tmp_path / "gw", [node], clock=clock, rules=svc)
    try:
        await h.hear(node.uplink(schema.K_TILT, {1: 400, 2: 1}))
        await h.gw.command_handler(json.dumps({"id": "m-1", "command": "mode",
                                               "fields": {"mode": "emergency"}}).encode())
        assert svc.mode == "emergency"
        assert {"id": "m-1", "status": "applied", "reason": "mode emergency"} in list(h.gw.commands.results)
        await h.gw.command_handler(json.dumps({"id": "m-2", "command": "mode", "fields": {"mode": 7}}).encode())
        assert any(r["id"] == "m-2" and r["status"] == "rejected" for r in h.gw.commands.results)
        state.request_mode(h.config.rules.state_db, "holiday")  # what `lifeline gateway mode holiday` does
        await svc.tick()
        assert svc.mode == "holiday"
        await settle(h, svc)
        modes = [(r.fields[audit.FM_OLD], r.fields[audit.FM_NEW], r.fields[audit.FM_SOURCE])
                 for r in events(h, audit.EV_MODE)]
        assert modes == [(0, 2, audit.SOURCES.index("platform")), (2, 1, audit.SOURCES.index("local"))]
        fired = [(r.kind, r.fields.get(audit.F_REASON)) for r in events(h) if r.kind in (64, 65)]
        assert fired == [(64, None), (65, b"mode")]  # the cover rule only while in emergency mode
        assert state.read_mode(h.config.rules.state_db) == {"mode": "holiday", "pending": None}
    finally:
        await h.stop()
    # the mode survives a restart
    svc2 = RulesService.from_files([rules], clock=clock)
    h2 = await start_harness(tmp_path / "gw", [node], clock=clock, rules=svc2, provision_nodes=False)
    try:
        assert svc2.mode == "holiday"
    finally:
        await h2.stop()


async def test_downlink_action_goes_through_the_command_queue(tmp_path: Path) -> None:
    rules = write(tmp_path / "rules.toml", """
[[rule]]
name = "fast-sampling"
when = { type = "threshold", kind = "water_level", field = "level", above = 500 }
[[rule.action]]
type = "downlink"
command = "config"
fields = { config_version = 9, interval = 60 }
""")
    node = TestNode(bytes.fromhex("70b3d57ed00000d1"), kind="water_level")
    clock = ManualClock(T0)
    svc = RulesService.from_files([rules], clock=clock)
    h = await start_harness(tmp_path / "gw", [node], clock=clock, rules=svc)
    try:
        await h.hear(node.uplink(schema.K_WATER_LEVEL, {1: 620}))
        await svc.wait_idle()
        clock.advance(10_000)
        await h.hear(node.uplink(schema.K_WATER_LEVEL, {1: 640}))  # the next receive window carries it
        (dl,) = h.adapter.downlinks
        f = node.decode_downlink(dl.payload)
        assert f.header.kind == schema.C_CONFIG and f.fields == {1: 9, 2: 60}
        assert f.header.flags & frame.FLAG_DOWN
        await settle(h, svc)
        (res,) = events(h, audit.EV_ACTION)
        assert res.fields[audit.FA_RESULT] == 0 and bytes(res.fields[audit.FA_DETAIL]).startswith(b"queued config")
        await h.gw.commands.drain_results(h.pub)
        published = [json.loads(p) for p in h.pub.topics("/down/result")]
        assert [r["status"] for r in published if str(r["id"]).startswith("rules-")] == ["queued", "sent"]
    finally:
        await h.stop()
