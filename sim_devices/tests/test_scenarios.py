"""Every scenario against the real gateway (the daemon's Gateway in-process, built from a TOML config with
its real adapters and MQTT uplink), the emulated RAK3172 on a pty and packet forwarder on UDP, real
Mosquitto brokers (node broker from the fixture, a platform broker of its own) and the reference platform
sink. Durations are the scenarios' shortened test durations, in virtual time paced at ``speed`` x real
time, so the suite stays short; expectations are judged on what the platform stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.protocols import schema
from lifeline.sim_devices import scenario, testbed
from lifeline.tools.broker import MosquittoBroker

pytestmark = pytest.mark.slow

# scenario -> speed (virtual s per real s). The gateway runs on the real clock, so its 2 s dedupe window is
# 2 s * speed of virtual time: the attack's 15-minute replay delay needs speed < 450.
SPEEDS = {
    "apartment-fire": 400.0,
    "cover-lifted": 900.0,
    "flash-flood": 1500.0,
    "water-leak-night": 2500.0,
    "quiet-day": 900.0,
    "platform-outage": 600.0,
    "attack": 300.0,
}


def test_every_scenario_has_a_speed() -> None:
    assert set(SPEEDS) == set(scenario.available())


async def run(name: str, tmp_path: Path, mosquitto: MosquittoBroker, **kw: object) -> tuple[object, object, dict]:
    sc = scenario.load(name)
    fleet, outcome, summary = await testbed.run_scenario(sc, tmp_path / "bed", duration_s=sc.test_duration_s,
                                                         speed=SPEEDS[name], node_broker=mosquitto, **kw)
    failed = [f for f in outcome.findings if not f.ok]  # type: ignore[attr-defined]
    assert not failed, (failed, summary)
    assert summary["chain_intact"] is True
    return fleet, outcome, summary


async def test_apartment_fire_alarm_from_flat_3b_within_4_minutes(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    fleet, outcome, _summary = await run("apartment-fire", tmp_path, mosquitto)
    alarms = [r for r in outcome.sink_records  # type: ignore[attr-defined]
              if r.record_type == 0 and r.kind == schema.K_ALARM_RAISED]
    by_dev = {v.dev_id: v for v in fleet.nodes}  # type: ignore[attr-defined]
    assert [by_dev[r.device].spec.unit for r in alarms] == ["flat 3B"]
    assert alarms[0].priority == 0 and alarms[0].fields["cause"] == "smoke"


async def test_cover_lifted_on_a_main_road(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    await run("cover-lifted", tmp_path, mosquitto)


async def test_flash_flood(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    await run("flash-flood", tmp_path, mosquitto)


async def test_water_leak_at_night_sets_the_leak_flag(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    fleet, outcome, _ = await run("water-leak-night", tmp_path, mosquitto)
    leak_dev = fleet.by_name["meter-04"].dev_id  # type: ignore[attr-defined]
    flagged = [r for r in outcome.sink_records  # type: ignore[attr-defined]
               if r.device == leak_dev and r.kind == schema.K_WATER_METER and "leak" in str(r.fields.get("flags"))]
    assert flagged


async def test_quiet_day_with_ble_nodes(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    _, _, summary = await run("quiet-day", tmp_path, mosquitto, ble=True)
    assert summary["links"]["ble_advertised"] > 0
    assert summary["gateway_rejects"].get("bad_mic", 0) == 0


async def test_platform_outage_loses_nothing(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    _, outcome, _ = await run("platform-outage", tmp_path, mosquitto)
    lanes = {r.lane for r in outcome.sink_records}  # type: ignore[attr-defined]
    assert lanes == {0, 1}  # live before/after, the outage's backlog on the backlog lane


async def test_attack_only_rejections(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    _, _, summary = await run("attack", tmp_path, mosquitto)
    assert summary["gateway_rejects"]["replay"] > 5
