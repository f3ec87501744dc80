"""The pytest plugin (entry point lifeline_hil): inert without --dut, drills selected by markers, --fast
deselects, usage errors, KPIs and results recorded as the drills run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lifeline.hil_tests import kpi
from lifeline.hil_tests.plugin import DRILLS_DIR

REPO = Path(__file__).resolve().parents[2]


def pytest_run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def _collected(out: str) -> list[str]:
    return [line for line in out.splitlines() if "::" in line]


def _fast_drill_files() -> set[str]:
    return {p.name for p in DRILLS_DIR.glob("test_*.py") if "@pytest.mark.fast" in p.read_text()}


def test_drills_are_not_collected_without_dut() -> None:
    r = pytest_run(str(DRILLS_DIR), "--collect-only", "-q")
    assert r.returncode == 5, r.stdout + r.stderr  # "no tests collected"
    assert not _collected(r.stdout)


def test_every_drill_is_collected_with_dut_and_fast_selects_the_subset() -> None:
    full = _collected(pytest_run(str(DRILLS_DIR), "--dut", "sim", "--collect-only", "-q").stdout)
    numbers = {int(Path(n.split("::")[0]).name.split("_")[1]) for n in full}
    assert numbers == set(range(1, 13)), numbers
    fast = _collected(pytest_run(str(DRILLS_DIR), "--dut", "sim", "--fast", "--collect-only", "-q").stdout)
    assert {Path(n.split("::")[0]).name for n in fast} == _fast_drill_files()
    assert 0 < len(fast) < len(full)
    marked = _collected(pytest_run(str(DRILLS_DIR), "-m", "hil and fast", "--collect-only", "-q").stdout)
    assert sorted(marked) == sorted(fast)  # -m hil turns the plugin on too (with --dut sim implied)


def test_markers_are_registered() -> None:
    out = pytest_run("--markers").stdout
    assert "@pytest.mark.hil:" in out and "@pytest.mark.fast:" in out and "@pytest.mark.drill(number, title)" in out


def test_a_bad_dut_is_a_usage_error() -> None:
    r = pytest_run(str(DRILLS_DIR), "--dut", "usb0", "--collect-only", "-q")
    assert r.returncode == 4 and "expected sim or serial:PORT" in r.stderr


def test_hil_fixtures_refuse_to_run_without_dut(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x(bench):\n    pass\n")
    r = pytest_run(str(tmp_path / "test_x.py"), "-q", cwd=tmp_path)
    assert r.returncode == 1 and "HIL fixtures need --dut" in r.stdout


def test_results_and_kpis_are_recorded_as_drills_run(tmp_path: Path) -> None:
    (tmp_path / "test_d.py").write_text(
        "import pytest\n"
        "@pytest.mark.fast\n"
        "@pytest.mark.drill(42, 'A drill about answers')\n"
        "def test_answer(kpi):\n"
        "    kpi.value('answer', 42, 'units', why='tests')\n"
        "    kpi.samples('latency_ms', [1, 2, 3], 'ms')\n"
        "@pytest.mark.drill(43, 'A failing drill')\n"
        "def test_broken(kpi):\n"
        "    assert 1 == 2, 'the check that failed'\n"
        "def test_not_a_drill():\n"
        "    pass\n")
    out = tmp_path / "kpi.jsonl"
    r = pytest_run(str(tmp_path / "test_d.py"), "--dut", "sim", "--hil-kpi", str(out), "--hil-logs",
                   str(tmp_path / "logs"), "--junitxml", str(tmp_path / "j.xml"), "-q", cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    lines = kpi.read(out)
    (session,) = [x for x in lines if x["type"] == "session"]
    assert [c["drill"] for c in session["collected"]] == [42, 43] and session["dut"] == "sim"
    results = {x["drill"]: x for x in lines if x["type"] == "result"}
    assert results[42]["outcome"] == "passed" and results[43]["outcome"] == "failed"
    assert "the check that failed" in results[43]["message"]
    figures = {x["name"]: x for x in lines if x["type"] == "kpi"}
    assert figures["answer"]["value"] == 42 and figures["answer"]["labels"] == {"why": "tests"}
    assert figures["latency_ms"]["summary"]["p50"] == 2.0
    junit = (tmp_path / "j.xml").read_text()
    assert 'name="drill" value="42"' in junit and "A drill about answers" in junit
    json.dumps(lines)  # every line is plain JSON
