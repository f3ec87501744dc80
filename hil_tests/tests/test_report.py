"""The drill report is built from the run's files only: figures that were measured, "not measured in this
run" for those that were not, failures with their message and logs, everything escaped."""

from __future__ import annotations

import json
from pathlib import Path

from lifeline.hil_tests import kpi, report
from lifeline.hil_tests.kpi import KpiRecorder, percentile


def _run(tmp_path: Path, *, with_failure: bool) -> Path:
    path = tmp_path / "kpi.jsonl"
    d3 = "hil_tests/drills/test_03_alarm_latency.py::test_alarm[smoke]"
    d9 = "hil_tests/drills/test_09_security.py::test_attacks"
    kpi.append(path, {"type": "session", "dut": "sim", "fast": True, "collected": [
        {"nodeid": d3, "drill": 3, "title": "Alarm"}, {"nodeid": d9, "drill": 9, "title": "Security"}]})
    k3 = KpiRecorder(path, d3, 3, "Alarm")
    k3.samples("alarm_latency_ms", [4.0, 6.0, 120.0], "ms", kind="smoke", basis="node_tx")
    k3.value("delivery_ratio", 0.9, "", stored=9, sent=10)
    kpi.append(path, {"type": "result", "nodeid": d3, "drill": 3, "title": "Alarm", "outcome": "passed",
                      "duration_s": 4.5, "message": "", "logs": []})
    k9 = KpiRecorder(path, d9, 9, "Security")
    k9.counts("frames_rejected", {"replay": 8, "bad_mic": 12})
    kpi.append(path, {"type": "result", "nodeid": d9, "drill": 9, "title": "Security",
                      "outcome": "failed" if with_failure else "passed", "duration_s": 11.0,
                      "message": "AssertionError: <script>alert(1)</script> forwarded" if with_failure else "",
                      "logs": ["/tmp/x/gateway.log"]})
    with open(path, "a") as fh:
        fh.write('{"type": "kpi", "cut by a kill')  # a line a killed run left half written
    return path


def test_headlines_come_from_the_run(tmp_path: Path) -> None:
    r = report.write(tmp_path / "out", _run(tmp_path, with_failure=False))
    heads = {n: (v, d) for n, v, d in r.headlines}
    assert heads["Alarm latency node -> platform"][0] == (
        f"p50 6 / p95 {percentile([4, 6, 120], 95):g} / p99 {percentile([4, 6, 120], 99):g} ms")
    assert heads["Delivery ratio"][0] == "0.9000"
    assert heads["Frames rejected by reason"][0] == "bad_mic 12, replay 8"
    for missing in ("Recovery time after outage", "Backlog drained", "Node battery estimate"):
        assert heads[missing][0] == "not measured in this run"
    assert r.passed
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# Lifeline HIL drill report: PASS") and "| 3 | Alarm end-to-end latency" in md
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ok"] is True and summary["items"] == 2 and summary["failed"] == []


def test_failures_are_reported_and_escaped(tmp_path: Path) -> None:
    r = report.write(tmp_path / "out", _run(tmp_path, with_failure=True), meta={"dut": "sim", "commit": "abc1234"})
    assert not r.passed
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "FAIL" in page and "/tmp/x/gateway.log" in page and "abc1234" in page
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Failures" in md and "test_09_security.py::test_attacks (failed)" in md


def test_a_collected_drill_without_a_result_is_not_a_pass(tmp_path: Path) -> None:
    path = tmp_path / "kpi.jsonl"
    kpi.append(path, {"type": "session", "dut": "sim", "collected": [{"nodeid": "a::b", "drill": 5, "title": "x"}]})
    r = report.build(path)
    assert not r.passed and r.items[0].outcome == "not run"


def test_percentiles_interpolate_like_numpy() -> None:
    assert percentile([1.0], 99) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0, 20.0], 95) == 19.5
