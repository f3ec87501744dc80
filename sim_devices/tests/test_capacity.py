"""Capacity experiment: the delivery ratio falls with load and follows pure ALOHA exp(-2G) without capture."""

from __future__ import annotations

import json

from click.testing import CliRunner

from lifeline.sim_devices.capacity import aloha_success, run_curve, run_point
from lifeline.tools.cli import cli

TOLERANCE = 0.03  # absolute; statistical spread at 4000 packets is ~0.008, finite N adds up to ~0.015


def test_sf7_delivery_ratio_follows_aloha_and_falls_with_load() -> None:
    points = run_curve([10, 40, 100, 200], sf=7, interval_s=10.0, packets=4000, seed=3)
    ratios = [p.ratio for p in points]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] - ratios[-1] > 0.6
    for p in points:
        assert p.sent >= 3900
        assert abs(p.ratio - aloha_success(p.offered_load)) < TOLERANCE, p
    assert points[-1].offered_load > 1.0  # past the ALOHA optimum (G = 0.5)


def test_sf12_is_congested_by_far_fewer_nodes() -> None:
    p12 = run_point(20, sf=12, interval_s=60.0, packets=3000, seed=4)
    p7 = run_point(20, sf=7, interval_s=60.0, packets=3000, seed=4)
    assert p12.toa_ms > 20 * p7.toa_ms
    assert abs(p12.ratio - p12.aloha) < TOLERANCE
    assert p12.ratio < 0.5 < 0.95 < p7.ratio


def test_capture_beats_aloha_and_is_deterministic() -> None:
    with_capture = run_point(100, sf=7, interval_s=10.0, packets=3000, capture=True, seed=9)
    without = run_point(100, sf=7, interval_s=10.0, packets=3000, capture=False, seed=9)
    assert with_capture.ratio > without.ratio + 0.02
    assert run_point(100, sf=7, interval_s=10.0, packets=3000, capture=True, seed=9) == with_capture


def test_cli_capacity_json_and_usage_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["sim", "capacity", "--sf", "7", "--nodes", "10,50", "--nodes", "100",
                                 "--interval", "10", "--packets", "1000", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [p["nodes"] for p in out["points"]] == [10, 50, 100]
    assert all(0 <= p["delivery_ratio"] <= 1 for p in out["points"])
    table = runner.invoke(cli, ["sim", "capacity", "--nodes", "5", "--packets", "200"])
    assert table.exit_code == 0 and "ALOHA" in table.output
    for bad in (["--nodes", "0"], ["--nodes", "a"], ["--sf", "13", "--nodes", "5"], []):
        assert runner.invoke(cli, ["sim", "capacity", *bad]).exit_code == 2
