"""The physical models against their defining formulas and sources (docs/simulator.md section 3)."""

from __future__ import annotations

import itertools
import math

from lifeline.firmware.hal import sim
from lifeline.sim_devices.physics import environment, manhole, meter, smoke, water
from lifeline.sim_devices.physics.base import DailyProfile

ORIGIN = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class _Hal:
    def __init__(self, led: int) -> None:
        self._led = sim.SimPin(self, "smoke_led", None)  # type: ignore[arg-type]
        self._led.v = led

    def pin(self, name: str, out: bool = False) -> sim.SimPin:
        return self._led


def test_fire_grows_with_the_square_of_time_and_cooking_stays_below_the_alarm() -> None:
    m = smoke.SmokeChamber(1, "s", ORIGIN)
    m.add("fire", 100.0)
    m.add("cooking", 5000.0)
    assert m.obscuration_pct(99.0) == smoke.BACKGROUND_PCT
    o60, o120 = m.obscuration_pct(160.0) - 0.02, m.obscuration_pct(220.0) - 0.02
    assert math.isclose(o120 / o60, 4.0, rel_tol=1e-9)  # t²
    assert math.isclose(m.obscuration_pct(340.0), 10.02, rel_tol=1e-9)  # 10 %/m at 240 s
    assert m.obscuration_pct(10_000.0) == smoke.MAX_PCT
    c = smoke.SmokeChamber(1, "c", ORIGIN)
    c.add("cooking", 0.0)
    assert max(c.obscuration_pct(t) for t in range(0, 2000, 5)) < 3.0  # the firmware's default threshold


def test_smoke_adc_is_dark_offset_plus_scatter_when_lit() -> None:
    m = smoke.SmokeChamber(2, "s", ORIGIN)
    dark = sum(m.adc(_Hal(0), 0) for _ in range(200)) / 200
    lit = sum(m.adc(_Hal(1), 0) for _ in range(200)) / 200
    assert abs(dark - smoke.DARK_UV) < 200
    assert abs(lit - dark - (smoke.CLEAN_UV + 0.02 * smoke.UV_PER_PCT)) < 300
    m.stick(0.0)
    assert len({m.adc(_Hal(1), t) for t in range(0, 10_000, 1000)}) == 1  # stuck


def test_scs_unit_hydrograph_and_curve_number_runoff() -> None:
    assert water.unit_hydrograph(1.0) == 1.0 and water.unit_hydrograph(0.0) == 0.0
    assert water.unit_hydrograph(5.0) == 0.0 and math.isclose(water.unit_hydrograph(0.45), 0.39)
    # area of the dimensionless hydrograph ~ 1.33 (qp = 0.75 / tp in NEH 630 ch. 16 units gives 484 ...)
    area = sum(water.unit_hydrograph(i / 1000) for i in range(5000)) / 1000
    assert 1.28 < area < 1.38
    # NRCS example: P = 50 mm, CN = 90 -> S = 28.2 mm, Q = 27.1 mm
    assert math.isclose(water.runoff_mm(50.0, 90.0), 27.09, abs_tol=0.05)
    assert water.runoff_mm(5.0, 90.0) == 0.0  # below the initial abstraction


def test_rain_raises_the_level_and_the_ranger_sees_it() -> None:
    ch = water.WaterChannel(3, "w", ORIGIN)
    dry = ch.level_mm(1800.0)
    ch.add("rain", 3600.0, 1800.0, depth_mm=60.0, tp_min=25.0)
    peak = max(ch.level_mm(t) for t in range(3600, 4 * 3600, 60))
    assert dry < 200 and peak > 1500  # over the firmware's default flood threshold
    assert abs(ch.distance(None, 1_800_000) - (3000 - dry)) < 15  # type: ignore[operator]
    ch.add("blocked", 20_000.0)
    assert ch.distance(None, 20_000_000) < 250  # type: ignore[operator]


def test_manhole_lift_and_traffic() -> None:
    m = manhole.ManholeCover(4, "m", ORIGIN + 10 * 3600, heavy_per_hour=40.0)
    x, y, z = m.accel(None, 0)
    assert abs(math.sqrt(x * x + y * y + z * z) - 1000) < 30
    m.add("lift", 100.0)
    x, y, z = m.accel(None, 120_000)
    tilt = math.degrees(math.acos(max(-1.0, min(1.0, z / math.sqrt(x * x + y * y + z * z)))))
    assert 80 < tilt < 90
    cars = sum(len(m.vehicles(h)) for h in range(10))
    assert 150 < cars < 500  # ~40/h at the daytime peak
    first = m.interrupts(0.0, 3_600_000.0)
    assert first is not None and 0 < first <= 100_000.0


def test_meter_pulses_count_litres_forward_and_reverse() -> None:
    m = meter.PulseMeter(5, "w", ORIGIN, daily_l=0.0)  # no household use: only the episodes
    m.add("leak", 0.0, lph=30.0)
    edges = m.pulses(None, 0, 3_600_000)
    a_rises = [e for e in edges if e[1] == 0 and e[2] == 1]
    assert len(a_rises) == 30 and m.litres_fwd == 30
    times = sorted(e[0] for e in edges)
    assert min(b - a for a, b in itertools.pairwise(times)) >= 25  # debounce-safe
    r = meter.PulseMeter(5, "r", ORIGIN, daily_l=0.0)
    r.add("reverse", 0.0, lph=60.0)
    r.pulses(None, 0, 3_600_000)
    assert r.litres_rev == 60
    h = meter.PulseMeter(5, "h", ORIGIN)
    assert 200 < sum(h._volume(t, t + 3600)[0] for t in range(0, 86400 * 3, 3600)) / 3 < 420  # ~300 L/day


def test_battery_curve_and_charge() -> None:
    b = environment.Battery(1, "b", ORIGIN, temperature=environment.Temperature(ORIGIN, 20.0, 0.0))
    assert b.millivolts(None, 0) == 3650
    b.charge(awake_ms=3_600_000 * 1000, tx_ms=0, sleep_ms=0)  # 1000 h at 45 mA = 45 Ah: past empty
    assert b.used == 1.0 and b.millivolts(None, 0) == 3200
    b2 = environment.Battery(1, "b2", ORIGIN, temperature=environment.Temperature(ORIGIN, 0.0, 0.0))
    assert b2.millivolts(None, 0) == 3610  # -2 mV/degC below 20 degC
    b2.add("sag", 0.0, 60.0)
    assert b2.millivolts(None, 30_000) == 3110


def test_daily_profile_interpolates_and_wraps() -> None:
    p = DailyProfile(tuple(float(h) for h in range(24)))
    assert p.at(0.5) == 0.0 and p.at(1.0) == 0.5 and p.at(23.75) == 23.0 - 23.0 * 0.25
