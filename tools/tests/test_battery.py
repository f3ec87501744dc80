"""lifeline battery: the node power budget from its configuration."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lifeline.protocols import lora_phy
from lifeline.tools import battery
from lifeline.tools.cli import cli


def test_tilt_every_15_minutes_at_sf9_lasts_years() -> None:
    est = battery.estimate("tilt", 900, 9)
    assert est.life_years >= 5
    assert est.airtime_ms == round(lora_phy.time_on_air_ms(est.frame_bytes, 9, 125, 1, 8), 2)
    assert est.frame_bytes <= 51


def test_higher_spreading_factor_and_shorter_interval_cost_life() -> None:
    base = battery.estimate("tilt", 900, 9)
    assert battery.estimate("tilt", 900, 12).life_years < base.life_years < battery.estimate("tilt", 900, 7).life_years
    assert battery.estimate("tilt", 300, 9).life_years < base.life_years


def test_smoke_sampling_every_10_seconds_dominates_its_budget() -> None:
    est = battery.estimate("smoke", 900, 9)
    assert est.samples_mah_per_day > est.reports_mah_per_day
    assert battery.estimate("smoke", 900, 9, sample_s=60).life_years > est.life_years


def test_self_discharge_and_capacity() -> None:
    a = battery.estimate("water_meter", 900, 9, self_discharge_pct_per_year=0)
    b = battery.estimate("water_meter", 900, 9, self_discharge_pct_per_year=3)
    assert b.life_days < a.life_days
    half = battery.estimate("water_meter", 900, 9, capacity_mah=9500, self_discharge_pct_per_year=0)
    assert half.life_days == pytest.approx(a.life_days / 2, rel=0.01)


def test_cli_json_and_table() -> None:
    r = CliRunner().invoke(cli, ["battery", "--kind", "tilt", "--interval", "900", "--sf", "9", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["kind"] == "tilt" and d["life_years"] >= 5 and d["assumptions"]["capacity_mah"] == 19000
    r = CliRunner().invoke(cli, ["battery", "--kind", "smoke"])
    assert r.exit_code == 0 and "estimated life" in r.output


def test_cli_usage_errors_exit_2() -> None:
    assert CliRunner().invoke(cli, ["battery", "--kind", "toaster"]).exit_code == 2
    assert CliRunner().invoke(cli, ["battery", "--kind", "tilt", "--sf", "13"]).exit_code == 2
    assert CliRunner().invoke(cli, ["battery", "--kind", "tilt", "--interval", "5"]).exit_code == 2
