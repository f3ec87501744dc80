"""`lifeline rules check|test`, `lifeline gateway check-config` with rule files, and the daemon as a real
process: SIGHUP reloads (a bad file keeps the old rules, counted), `lifeline gateway mode SET` applied."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifeline.gateway.metrics import parse_text
from lifeline.gateway.rules_engine.cli import rules
from lifeline.gateway.testing import config_text

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rules.toml"

RECORDING = """\
# an underpass floods, the platform goes away, a flat's smoke detector alarms
{"t": "2026-03-01T10:00:00Z", "device": "70b3d57ed0000010", "kind": "water_level", "fields": {"level": 240}}
{"t": "+1m", "device": "70b3d57ed0000010", "kind": "water_level", "fields": {"level": "310 mm"}}
{"t": "+1m", "device": "70b3d57ed0000010", "kind": "water_level", "fields": {"level": 330}}
{"t": "+1m", "device": "70b3d57ed0000010", "kind": "water_level", "fields": {"level": 280}}
{"t": "+1m", "device": "70b3d57ed0000010", "kind": "water_level", "fields": {"level": 240}}
{"t": "+1m", "uplink": "down"}
{"t": "+2m", "device": "70b3d57ed0000001", "kind": "smoke", "fields": {"alarm_state": "alarm", "temperature": 31.5}}
{"t": "+30s", "device": "70b3d57ed0000001", "kind": "smoke", "fields": {"alarm_state": "alarm"}}
{"t": "+1m", "device": "70b3d57ed0000001", "kind": "smoke", "fields": {"alarm_state": "normal"}}
{"t": "+1m", "device": "70b3d57ed0000001", "kind": "smoke", "fields": {"alarm_state": "burning"}}
not json
"""
DEVICES = """\
{"device_id": "70b3d57ed0000001", "kind": "smoke", "location": {"address": "12 Elm Road, flat 3", \
"spatial_unit": "district-7/block-12"}, "data_class": "sensitive", "tags": ["elderly-care"]}
{"device_id": "70b3d57ed0000010", "kind": "water_level", "location": {"address": "Elm underpass", \
"spatial_unit": "district-7/underpass-2"}, "data_class": "public", "tags": []}
"""


def test_rules_check(tmp_path: Path) -> None:
    r = CliRunner().invoke(rules, ["check", str(EXAMPLE)])
    assert r.exit_code == 0 and "ok: 14 rule(s), 4 output(s), 3 contact group(s)" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "x"\nwhen = { type = "silent", interval = "soon" }\n')
    r = CliRunner().invoke(rules, ["check", str(bad), "--json"])
    assert r.exit_code == 3
    out = json.loads(r.output)
    assert (out["file"], out["line"], out["key"]) == (str(bad), 3, "rule[0].when.interval")
    r = CliRunner().invoke(rules, ["check", str(bad)])
    assert r.exit_code == 3 and f"{bad}:3: rule[0].when.interval: 'soon' is not a duration" in r.output


def test_rules_test_dry_run_prints_what_would_fire_and_when(tmp_path: Path) -> None:
    rec, devs = tmp_path / "rec.jsonl", tmp_path / "devices.jsonl"
    rec.write_text(RECORDING)
    devs.write_text(DEVICES)
    r = CliRunner().invoke(rules, ["test", str(EXAMPLE), "--replay", str(rec), "--devices", str(devs)])
    lines = r.output.splitlines()
    assert r.exit_code == 1  # two lines were rejected
    assert f"{rec}:11: skipped: fields.alarm_state: 'burning' is not one of its values" in lines
    assert f"{rec}:12: skipped: not JSON: Expecting value" in lines
    assert "2026-03-01T10:03:00Z  fired      pump-on 70b3d57ed0000010  level=330 mm" in lines
    assert "2026-03-01T10:03:00Z  action     pump-on 70b3d57ed0000010  gpio relays: line 17 on" in lines
    assert "2026-03-01T10:04:00Z  cleared    pump-on 70b3d57ed0000010  level=240 mm (hysteresis)" in lines
    assert any(x.startswith("2026-03-01T10:06:00Z  fired      platform-down") for x in lines)
    sms = [x for x in lines if "smoke-sms" in x and "action" in x]
    assert len(sms) == 1 and "to @grid-district-7(2), @family-70b3d57ed0000001(1)" in sms[0]
    assert "SMOKE ALARM 12 Elm Road, flat 3 at 2026-03-01T18:07:00+08:00" in sms[0]  # the rules' time zone
    assert sum("fired      smoke-siren" in x for x in lines) == 1  # the repeated alarm frame fires nothing
    assert lines[-1].startswith("9 line(s) replayed, 2 rejected:")
    r = CliRunner().invoke(rules, ["test", str(EXAMPLE), "--replay", str(rec), "--devices", str(devs), "--json"])
    objs = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert objs[-1]["lines"] == 9 and objs[-1]["rejected"] == 2
    assert {"t": "2026-03-01T10:03:00Z", "t_ms": 1772359380000, "what": "fired", "rule": "pump-on",
            "device": "70b3d57ed0000010", "detail": "level=330 mm", "line": 5} in objs
    # without device attributes the device conditions of the example's pump rule cannot hold
    r = CliRunner().invoke(rules, ["test", str(EXAMPLE), "--replay", str(rec), "--json"])
    objs = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert not any(o.get("rule") == "pump-on" for o in objs[:-1])
    assert any(o.get("rule") == "flash-flood" and o["what"] == "fired" for o in objs[:-1])


# ------------------------------------------------------------------------------------------- the daemon


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LIFELINE, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    state = tmp_path / "state"
    state.mkdir()
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "smoke"\nwhen = { report = "smoke_alarm" }\n')
    config = tmp_path / "gateway.toml"
    config.write_text(config_text(state, "gw-rules") + '[rules]\nfiles = ["rules.toml"]\n')
    assert _run("gateway", "keygen", "--out", str(state / "gateway.key")).returncode == 0
    yield config, rules


def _metrics(state: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    addr = (state / "metrics.addr").read_text().strip()
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as resp:
        return parse_text(resp.read().decode())


def _metric(state: Path, name: str, **labels: str) -> float:
    return sum(v for lab, v in _metrics(state).get(f"lifeline_gateway_{name}", [])
               if all(lab.get(k) == x for k, x in labels.items()))


def _wait(pred: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_check_config_refuses_an_invalid_rule_file(daemon_dir: tuple[Path, Path]) -> None:
    config, rules_file = daemon_dir
    assert _run("gateway", "check-config", str(config)).returncode == 0
    rules_file.write_text('[[rule]]\nname = "smoke"\nwhen = { report = "smoke" }\n')
    r = _run("gateway", "check-config", str(config), "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["errors"][0].startswith(f"{rules_file}:3: rule[0].when.report: 'smoke' is not")
    r = _run("gateway", "run", "--config", str(config))
    assert r.returncode == 3 and f"{rules_file}:3" in r.stderr


def test_sighup_reloads_and_a_bad_file_keeps_the_old_rules(daemon_dir: tuple[Path, Path]) -> None:
    config, rules_file = daemon_dir
    state = config.parent / "state"
    log = (config.parent / "gw.log").open("wb")
    proc = subprocess.Popen([LIFELINE, "gateway", "run", "--config", str(config)], stdout=log, stderr=log)
    try:
        _wait(lambda: (state / "metrics.addr").exists() and bool((state / "metrics.addr").read_text().strip()),
              "metrics endpoint")
        _wait(lambda: _metric(state, "rules_loaded") == 1, "rules loaded")
        assert _metric(state, "rules_mode", mode="daily") == 1
        rules_file.write_text('[[rule]]\nname = "smoke"\nwhen = { report = "smoke_alarm" \n')  # syntax error
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _metric(state, "rules_reloads_total", result="refused") == 1, "refused reload counted")
        assert _metric(state, "rules_loaded") == 1 and proc.poll() is None
        rules_file.write_text('[[rule]]\nname = "smoke"\nwhen = { report = "smoke_alarm" }\n'
                              '[[rule]]\nname = "cover"\nwhen = { report = "cover_open" }\n')
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _metric(state, "rules_reloads_total", result="ok") == 1, "reload")
        assert _metric(state, "rules_loaded") == 2
        r = _run("gateway", "mode", "emergency", "--config", str(config))
        assert r.returncode == 0 and "emergency requested" in r.stdout
        _wait(lambda: _metric(state, "rules_mode", mode="emergency") == 1, "mode applied")
        r = _run("gateway", "mode", "--config", str(config), "--json")
        assert json.loads(r.stdout) == {"mode": "emergency", "pending": None}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    text = (config.parent / "gw.log").read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "rules reload refused; the old rules stay" in text and f"{rules_file}:3" in text


def test_records_exported_by_the_platform_replay_as_they_are(tmp_path: Path) -> None:
    from lifeline.protocols import batch, schema

    dev = bytes.fromhex("70b3d57ed0000010")
    rx = batch.WireReception("lora-udp", "lora0", 0, -90, 70)
    lines = []
    for i, level in enumerate((240, 420, 300)):
        reading = batch.BatchRecord(dev, i + 1, 0, 1_772_359_200_000 + i * 60_000, schema.K_WATER_LEVEL,
                                    {1: level, 15: 3300}, schema.PUBLIC, (rx,))
        lines.append(json.dumps(batch.record_to_json(reading)))
    event = batch.BatchRecord(bytes(8), 1 << 32, 0, 1_772_359_200_000, 64, {1: b"x"}, 1, (), record_type=1)
    lines.insert(1, json.dumps(batch.record_to_json(event)))
    rec = tmp_path / "export.jsonl"
    rec.write_text("\n".join(lines) + "\n")
    rules_file = tmp_path / "r.toml"
    rules_file.write_text('[[rule]]\nname = "high"\nwhen = { type = "threshold", kind = "water_level", '
                          'field = "level", above = 400, clear = 350 }\n')
    r = CliRunner().invoke(rules, ["test", str(rules_file), "--replay", str(rec)])
    assert r.exit_code == 0, r.output
    assert "2026-03-01T10:01:00Z  fired      high 70b3d57ed0000010  level=420 mm" in r.output
    assert "2026-03-01T10:02:00Z  cleared    high 70b3d57ed0000010  level=300 mm (hysteresis)" in r.output
    assert "3 line(s) replayed, 0 rejected" in r.output
