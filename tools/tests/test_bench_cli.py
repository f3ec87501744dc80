"""The bench command runs and reports figures as JSON (no timing assertions: budgets live in the bench)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lifeline.tools import bench


def test_bench_json_smoke() -> None:
    result = CliRunner().invoke(bench.bench, ["--quick", "--only", "protocol", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    names = {f["name"] for f in doc["figures"]}
    assert {"decode_fast_encrypted", "batch_sign_rate"} <= names
    assert all(f["value"] > 0 for f in doc["figures"])


def test_missed_budget_exits_1(monkeypatch: object) -> None:
    def failing(ctx: bench.BenchContext) -> list[bench.Figure]:
        return [bench.Figure("t", "x", 1.0, "ops/s", budget=2.0)]

    bench.BENCHMARKS["failing-test"] = ("lifeline.tools.tests_failing:failing", "")
    try:
        import sys
        import types

        mod = types.ModuleType("lifeline.tools.tests_failing")
        mod.failing = failing  # type: ignore[attr-defined]
        sys.modules["lifeline.tools.tests_failing"] = mod
        result = CliRunner().invoke(bench.bench, ["--only", "failing-test", "--json"])
        assert result.exit_code == 1
        assert json.loads(result.output)["figures"][0]["within_budget"] is False
    finally:
        del bench.BENCHMARKS["failing-test"]
        sys.modules.pop("lifeline.tools.tests_failing", None)


def test_unknown_benchmark_is_a_usage_error() -> None:
    assert CliRunner().invoke(bench.bench, ["--only", "nope"]).exit_code == 2
