"""The fleet simulator without a gateway: real firmware per node, determinism, faults, provisioning records,
every scenario's expectations on the virtual air, and the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifeline.gateway.registry import Registry
from lifeline.protocols import fastpath, frame, schema
from lifeline.sim_devices import faults, runner, scenario
from lifeline.sim_devices.fleet import Fleet, NodeSpec
from lifeline.sim_devices.links import VirtualReceivers
from lifeline.sim_devices.provision import build_fleet, write_records

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
KINDS = ("smoke", "tilt", "water_level", "water_meter", "gas_meter", "electricity_meter")
RADIOS = ("lora-serial", "lora-udp", "nbiot", "ble")


def mixed(n: int = 24) -> list[NodeSpec]:
    return [NodeSpec(name=f"n{i:02d}", kind=KINDS[i % 6], radio=RADIOS[i % 4], x_m=30.0 + 4 * i, y_m=15.0,
                     interval_s=300) for i in range(n)]


def run_fleet(seed: int, hours: float = 1.0, with_faults: bool = True) -> Fleet:
    fleet = Fleet(seed=seed, record_frames=True, time_sync=True)
    build_fleet(mixed(), fleet, wrong_key=["n05"] if with_faults else ())
    VirtualReceivers(fleet)
    if with_faults:
        fs = [scenario.Fault(600, "reboot", ["n01"], None, {}), scenario.Fault(900, "brownout", ["n02"], None, {}),
              scenario.Fault(0, "clock_drift", ["n03"], None, {"ppm": 300}),
              scenario.Fault(300, "corrupt", ["n04"], 1200, {"p": 1.0}),
              scenario.Fault(300, "radio_loss", ["n08"], 1800, {}),
              scenario.Fault(600, "replay", ["n00"], None, {"delay": 60}),
              scenario.Fault(1200, "flood", [], 60, {"rate": 2})]
        fleet.attacker = faults.schedule(fleet, fs, faults.Environment())  # type: ignore[attr-defined]
    fleet.start()
    fleet.run_until(hours * 3_600_000)
    return fleet


def test_same_seed_same_frames_byte_for_byte() -> None:
    a = run_fleet(5)
    b = run_fleet(5)
    assert len(a.frames) > 100
    assert [(f.t_ms, f.node, f.payload) for f in a.frames] == [(f.t_ms, f.node, f.payload) for f in b.frames]
    assert a.digest.hexdigest() == b.digest.hexdigest()
    c = run_fleet(6)
    assert c.digest.hexdigest() != a.digest.hexdigest()


def test_every_kind_and_radio_runs_the_real_firmware() -> None:
    fleet = run_fleet(9, with_faults=False)
    assert fleet.counters["firmware_exceptions"] == 0
    sent = {(k, r) for (k, r) in fleet.sent_by}
    for kind in ("smoke", "manhole_tilt", "water_level", "water_meter", "gas_meter", "electricity_meter"):
        for radio in RADIOS:
            if any(s.kind == {"manhole_tilt": "tilt"}.get(kind, kind) and s.radio == radio for s in
                   (v.spec for v in fleet.nodes)):
                assert (kind, radio) in sent, (kind, radio)
    # every frame decodes with the registry's key, times come from the time sync (not 0)
    rs = runner.readings(fleet)
    assert all(r.valid for r in rs)
    assert all(r.fields for r in rs)
    synced = [f for f in fleet.frames if int.from_bytes(f.payload[15:19], "big") > 0]
    assert len(synced) > len(fleet.frames) // 2
    # the ACK answers: at least one per node that asked (heartbeat with ACK_REQ on the first wake)
    assert fleet.gateway_end.counters["ack"] >= len(fleet.nodes) // 2


def test_faults_have_their_effect() -> None:
    fleet = run_fleet(5)
    by = fleet.by_name
    rs = runner.readings(fleet)
    # wrong key: nothing n05 sends verifies with its record's key
    assert [r for r in rs if r.node == "n05"] and not any(r.valid for r in rs if r.node == "n05")
    # corrupt with p=1 for 20 minutes
    assert any(f.corrupted for f in fleet.frames if f.node == "n04")
    # radio loss: n08's frames in the window reached nobody
    lost = [f for f in fleet.frames if f.node == "n08" and 300_000 <= f.t_ms < 2_100_000]
    assert lost and not any(f.heard for f in lost)
    # reboot (RTC memory kept: the node carries on) and brown-out (RTC lost: it boots afresh and its
    # heartbeat reports the brown-out)
    assert by["n01"].resets == [(600_000, 4)] and any(f.t_ms > 700_000 for f in fleet.frames if f.node == "n01")
    causes = {r.node: r.fields.get(2) for r in rs if r.valid and r.kind == schema.K_HEARTBEAT and r.t_s > 900}
    assert causes.get("n02") == 5
    assert by["n03"].hal.drift_ppm == 300
    atk = fleet.attacker  # type: ignore[attr-defined]
    assert atk.replays > 5 and atk.floods > 50  # replays of n00's frames, a minute of forgeries


def test_records_import_into_the_gateway_registry(tmp_path: Path) -> None:
    from lifeline.protocols import keys

    tech = keys.generate()
    fleet = Fleet(seed=1)
    recs = build_fleet(mixed(8), fleet, technician_key=tech)
    path = write_records(tmp_path / "devices.jsonl", recs)
    assert path.stat().st_mode & 0o777 == 0o600
    with Registry(tmp_path / "registry.db") as reg:
        report = reg.import_lines(path.read_text().splitlines(), now_ms=1_700_000_000_000,
                                  trusted={"sim-technician": tech.public_key()})
        assert report.rejected == 0
        assert len(list(reg.all())) == 8
    v = fleet.nodes[0]
    assert v.config["device_id"] == recs[0]["device_id"] and v.config["root_key"] == recs[0]["root_key"]


def test_nbiot_node_speaks_mqtt_to_the_network() -> None:
    fleet = Fleet(seed=2, record_frames=True)
    build_fleet([NodeSpec(name="nb", kind="water_level", radio="nbiot", interval_s=300)], fleet)
    fleet.start()
    fleet.run_until(1_200_000)
    nb = [f for f in fleet.frames if f.radio == "nbiot"]
    assert len(nb) >= 4 and all(f.heard for f in nb)
    assert "ll-" + fleet.nodes[0].dev_id.hex() in fleet.nbiot.sessions  # clean-session-0 client subscribed
    fleet.nbiot.online = False
    fleet.run_until(2_400_000)
    assert not any(f.t_ms > 1_200_000 for f in fleet.frames)  # attach fails: nothing sent


@pytest.mark.parametrize("name", scenario.available())
def test_scenario_expectations_on_the_virtual_air(name: str) -> None:
    sc = scenario.load(name)
    fleet, _ = runner.build(sc)
    VirtualReceivers(fleet, *sc.gateway_site)
    attacker = runner.schedule_faults(sc, fleet)
    fleet.start()
    asyncio.run(runner.run(fleet, sc.test_duration_s))
    out = runner.judge(sc, fleet, attacker=attacker)
    assert out.findings
    assert out.ok, [f for f in out.findings if not f.ok]
    assert fleet.counters["firmware_exceptions"] == 0


def test_fire_alarm_comes_from_the_right_flat_only() -> None:
    sc = scenario.load("apartment-fire")
    fleet, _ = runner.build(sc)
    VirtualReceivers(fleet)
    fleet.start()
    fleet.run_until(sc.test_duration_s * 1000)
    raised = [r for r in runner.readings(fleet) if r.kind == schema.K_ALARM_RAISED]
    assert {r.node for r in raised} == {"smoke-b1-08"}
    assert fleet.by_name["smoke-b1-08"].spec.unit == "flat 3B"
    first = min(r.t_s for r in raised)
    assert 20 * 60 < first <= 24 * 60


def test_scenario_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[nodes]]\nprefix = "x"\nkind = "toaster"\n')
    with pytest.raises(scenario.ScenarioError, match=r"nodes\[0\]\.kind"):
        scenario.load(bad)
    bad.write_text('[[nodes]]\nprefix = "x"\nkind = "smoke"\n[[faults]]\ntype = "reboot"\nnodes = ["nope"]\n')
    with pytest.raises(scenario.ScenarioError, match="no node or group named 'nope'"):
        scenario.load(bad)
    assert scenario.seconds("2h30m", "x") == 9000 and scenario.seconds("90s", "x") == 90
    with pytest.raises(scenario.ScenarioError):
        scenario.seconds("soon", "x")


def test_scaling_keeps_named_nodes() -> None:
    sc = scenario.load("quiet-day", nodes=400)
    assert 380 <= len(sc.nodes) <= 420
    names = {s.name for s in sc.nodes}
    assert {"smoke-02", "smoke-100", "water-02"} <= names  # faults still find their nodes


def test_cli_run_frames_only_json_and_exit_codes() -> None:
    r = subprocess.run([LIFELINE, "sim", "run", "cover-lifted", "--short", "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["mode"] == "frames-only"
    assert {a["cause"] for a in out["alarms_raised"]} == {"cover_open", "cover_displaced"}
    assert out["frames_sent"] == sum(row["sent"] for row in out["by_kind_radio"])
    r = subprocess.run([LIFELINE, "sim", "run", "no-such-scenario"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such scenario" in r.stderr
    r = subprocess.run([LIFELINE, "sim", "run", "--list", "x"], capture_output=True, text=True, timeout=60)
    assert "apartment-fire" in r.stdout.split()


def test_gateway_end_refuses_what_the_gateway_would() -> None:
    fleet = Fleet(seed=3)
    build_fleet(mixed(2), fleet)
    v = fleet.nodes[0]
    up = frame.encode(v.keys, v.dev_id, 5, 0, schema.K_HEARTBEAT, {1: 1}, frame.FLAG_ACK_REQ)
    down = fleet.gateway_end.answer(up)
    assert down is not None
    f = fastpath.decode(down, v.keys, downlink=True)
    assert f.header.kind == schema.C_ACK and f.fields[1] == 5
    assert fleet.gateway_end.answer(up) is None  # the same counter again: a replay
    forged = up[:-8] + bytes(8)
    assert fleet.gateway_end.answer(forged) is None
    assert fleet.gateway_end.counters["replay"] == 1 and fleet.gateway_end.counters["bad_mic"] == 1
