"""Manhole cover tilt: a LIS3DH at register level, integer angles, and traffic versus a lifted cover."""

from __future__ import annotations

import math
import random
from typing import Any

from lifeline.firmware import config
from lifeline.firmware.hal import sim, sim_chips
from lifeline.firmware.sensors import tilt
from lifeline.firmware.simnode import config_for


class Cover:
    """Gravity seen by an accelerometer on the cover's underside, plus traffic vibration."""

    def __init__(self) -> None:
        self.tilt_deg = 0.0
        self.azimuth_deg = 30.0
        self.vibration: list[tuple[int, int]] = []  # (start ms, end ms) of bursts
        self.rnd = random.Random(1)

    def accel(self, hal: Any, t_ms: int) -> tuple[int, int, int]:
        th = math.radians(self.tilt_deg)
        az = math.radians(self.azimuth_deg)
        x = 1000 * math.sin(th) * math.cos(az)
        y = 1000 * math.sin(th) * math.sin(az)
        z = 1000 * math.cos(th)
        for a, b in self.vibration:
            if a <= t_ms < b:  # a truck wheel over the frame: +-0.8 g at 20-40 Hz
                z += 800 * math.sin(2 * math.pi * 30 * t_ms / 1000) + self.rnd.uniform(-200, 200)
                x += self.rnd.uniform(-300, 300)
        return round(x), round(y), round(z)


def make(cover: Cover) -> tuple[sim.SimHal, tilt.TiltSensor, sim_chips.Lis3dh, dict[str, Any]]:
    chip = sim_chips.Lis3dh(cover.accel)
    hal = sim.SimHal(i2c_devices={0x18: chip})
    cfg = config.Config(config_for("tilt", "lora", bytes(8), bytes(32)))
    st: dict[str, Any] = {}
    return hal, tilt.TiltSensor(hal, cfg, st), chip, st


def test_driver_configures_the_chip_by_the_datasheet() -> None:
    _hal, s, chip, st = make(Cover())
    s.sample(0)
    r = chip.regs
    assert r[0x20] == 0x47  # 50 Hz, X/Y/Z on
    assert r[0x23] == 0x88  # BDU, +-2 g, high resolution
    assert r[0x22] == 0x40  # IA1 on INT1
    assert r[0x24] == 0x08  # latched INT1
    assert r[0x32] == 16  # 256 mg / 16 mg per LSB
    assert r[0x33] == 3  # 60 ms at 50 Hz
    assert r[0x30] == 0x2A
    assert st["base"] == [0, 0, 1000]


def test_missing_or_wrong_chip_is_a_sensor_fault() -> None:
    hal = sim.SimHal(i2c_devices={0x18: sim_chips.Lis3dh(lambda h, t: (0, 0, 1000), who_am_i=0x32)})
    cfg = config.Config(config_for("tilt", "lora", bytes(8), bytes(32)))
    assert tilt.TiltSensor(hal, cfg, {}).sample(0) == [("fault", tilt.FAULT_SENSOR, 1)]
    hal = sim.SimHal()
    assert tilt.TiltSensor(hal, cfg, {}).sample(0)[0][0] == "fault"


def test_integer_angle_matches_floating_point_within_a_tenth_of_a_degree() -> None:
    rnd = random.Random(7)
    for _ in range(500):
        a = [rnd.randint(-2000, 2000) for _ in range(3)]
        b = [rnd.randint(-2000, 2000) for _ in range(3)]
        if not any(a) or not any(b):
            continue
        na = math.sqrt(sum(v * v for v in a))
        nb = math.sqrt(sum(v * v for v in b))
        c = max(-1.0, min(1.0, sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)))
        want = math.degrees(math.acos(c)) * 10
        assert abs(tilt.angle_between(a, b) - want) <= 1.5, (a, b)


def test_truck_passing_is_not_an_open_cover() -> None:
    cover = Cover()
    hal, s, _chip, st = make(cover)
    s.sample(0)
    events = []
    for _k in range(20):  # twenty trucks, each a 1.5 s burst that trips the motion interrupt
        t0 = hal.clock.ms
        cover.vibration = [(t0, t0 + 1500)]
        events += s.sample(hal.time(), motion=True)
        hal.sleep_ms(60_000)
    assert not [e for e in events if e[0] == "raise"]
    assert st["state"] == tilt.CLOSED and st["motions"] == 20
    assert s.disturbed > 0  # the bursts were seen and discarded


def test_lifted_cover_is_open_after_confirmation() -> None:
    cover = Cover()
    hal, s, _chip, st = make(cover)
    s.sample(0)
    t0 = hal.clock.ms
    cover.vibration = [(t0, t0 + 1200)]  # levering it up rattles first
    cover.tilt_deg = 75.0  # then it leans against the frame
    ev = s.sample(hal.time(), motion=True)
    assert ev == [("raise", tilt.CAUSE_OPEN, st["angle"])]
    assert abs(st["angle"] - 750) <= 3
    cover.tilt_deg = 0.5
    cover.vibration = []
    ev = s.sample(hal.time(), motion=True)
    assert ev == [("clear", tilt.CAUSE_OPEN, st["angle"])]


def test_cover_dragged_away_is_open_even_without_a_stable_reading() -> None:
    cover = Cover()
    hal, s, _chip, _st = make(cover)
    s.sample(0)
    t0 = hal.clock.ms
    cover.vibration = [(t0, t0 + 60_000)]  # continuous motion far longer than any vehicle
    ev = s.sample(hal.time(), motion=True)
    assert ("raise", tilt.CAUSE_OPEN) in [e[:2] for e in ev]


def test_slightly_displaced_cover() -> None:
    cover = Cover()
    hal, s, _chip, st = make(cover)
    s.sample(0)
    cover.tilt_deg = 8.0
    assert s.sample(hal.time(), motion=True) == [("raise", tilt.CAUSE_DISPLACED, st["angle"])]
    assert s.report()[2] == tilt.DISPLACED
