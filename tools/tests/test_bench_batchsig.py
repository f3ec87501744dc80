"""`lifeline bench --only batch_suites` runs and reports both suites side by side (no timing assertions)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lifeline.tools import bench


def test_batch_suites_bench_reports_both_suites() -> None:
    result = CliRunner().invoke(bench.bench, ["--quick", "--only", "batch_suites", "--json"])
    assert result.exit_code == 0, result.output
    figs = {f["name"]: f for f in json.loads(result.output)["figures"]}
    for suite in ("intl", "sm"):
        for name in ("batch_sign_rate", "batch_verify_rate", "signature_verify_rate", "x5chain_overhead",
                     "verify_chain_cold_us", "verify_chain_warm_us"):
            assert figs[f"{name}_{suite}"]["value"] > 0
    assert figs["batch_sign_rate_sm"]["baseline"] == "batch_sign_rate_intl"
    assert 200 < figs["x5chain_overhead_sm"]["value"] < 2000  # one certificate's DER in the header
