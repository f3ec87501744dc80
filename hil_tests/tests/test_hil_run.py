"""``lifeline hil run --dut sim --fast``: what CI runs. The report must exist, every fast drill must have
passed, and every headline figure must have been measured by this run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lifeline.hil_tests.plugin import DRILLS_DIR

LIFELINE = str(Path(sys.executable).with_name("lifeline"))


def _fast_drills() -> set[int]:
    return {int(p.name.split("_")[1]) for p in DRILLS_DIR.glob("test_*.py") if "@pytest.mark.fast" in p.read_text()}


@pytest.mark.slow
def test_fast_subset_on_simulated_nodes_writes_a_passing_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    r = subprocess.run([LIFELINE, "hil", "run", "--dut", "sim", "--fast", "--report", str(out), "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + (out / "pytest.log").read_text()[-6000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["failed"] == [] and summary["pytest_exit"] == 0
    for name in ("report.html", "report.md", "summary.json", "junit.xml", "kpi.jsonl"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "kpi.jsonl").read_text().splitlines()]
    results = [x for x in lines if x["type"] == "result"]
    assert {x["drill"] for x in results} == _fast_drills()
    assert all(x["outcome"] == "passed" for x in results)
    assert summary["items"] == len(results) == summary["passed"]
    # every key figure measured in this run (none filled in)
    for name, value in summary["headlines"].items():
        assert value != "not measured in this run", name
    html = (out / "report.html").read_text()
    assert "PASS" in html and "Alarm latency node -&gt; platform" in html
    assert "not measured in this run" not in (out / "report.md").read_text()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["--dut", "usb0"], ["--dut", "serial:/dev/ttyUSB0"]):
        r = subprocess.run([LIFELINE, "hil", "run", *args, "--report", str(tmp_path / "r")], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "--dut" in r.stderr or "--bench-modem" in r.stderr
