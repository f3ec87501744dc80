"""Flood water level: A02YYUW frames, a rain event versus a stuck or blocked sensor."""

from __future__ import annotations

import random
from typing import Any

from lifeline.firmware import config
from lifeline.firmware.hal import sim, sim_chips
from lifeline.firmware.sensors import a02yyuw, water_level
from lifeline.firmware.simnode import config_for

MOUNT = 3000


def frame_of(d: int) -> bytes:
    return bytes((0xFF, d >> 8, d & 0xFF, (0xFF + (d >> 8) + (d & 0xFF)) & 0xFF))


def test_parser_resynchronises_and_counts_garbage() -> None:
    p = a02yyuw.FrameParser()
    stream = b"\x12\x34" + frame_of(1500) + b"\xff\x05\xdc\x00" + frame_of(0x0FFF) + frame_of(2000)[:2]
    assert p.feed(stream) == [1500, 0x0FFF]
    assert p.bad_checksum >= 1 and p.skipped >= 2
    assert p.feed(frame_of(2000)[2:]) == [2000]  # a frame split across reads
    rnd = random.Random(3)
    p2 = a02yyuw.FrameParser()
    for _ in range(200):  # pure noise never raises and yields only checksum-valid frames
        for d in p2.feed(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 40)))):
            assert 0 <= d <= 0xFFFF


class Channel:
    """Water surface below the sensor, with ultrasonic jitter of a few mm; or a failure mode."""

    def __init__(self) -> None:
        self.level_mm = 200.0
        self.mode = "ok"  # ok | stuck | blocked | silent
        self.rnd = random.Random(5)

    def distance(self, hal: Any, t_ms: int) -> int | None:
        if self.mode == "silent":
            return None
        if self.mode == "stuck":
            return 1200
        if self.mode == "blocked":
            return 120 + self.rnd.randint(-2, 2)
        return int(MOUNT - self.level_mm) + self.rnd.randint(-3, 3)


def make(ch: Channel) -> tuple[sim.SimHal, water_level.WaterLevelSensor, dict[str, Any]]:
    hal = sim.SimHal(uart_devices={"ranger": sim_chips.A02yyuw(ch.distance)})
    cfg = config.Config(config_for("water_level", "lora", bytes(8), bytes(32),
                                   {"sensor": {"mount_mm": MOUNT}, "thresholds": {"high": 1500, "low": 1200}}))
    st: dict[str, Any] = {}
    return hal, water_level.WaterLevelSensor(hal, cfg, st), st


def advance(hal: sim.SimHal, s: water_level.WaterLevelSensor, ch: Channel, rise_mm_h: float) -> list[Any]:
    wait = s.next_sample_s()
    hal.sleep_ms(wait * 1000)
    ch.level_mm += rise_mm_h * wait / 3600
    return s.sample(hal.time())


def test_rain_event_raises_a_flood_alarm_and_reports_faster() -> None:
    ch = Channel()
    hal, s, st = make(ch)
    events = []
    for _ in range(8):
        events += advance(hal, s, ch, 0)
    assert s.next_sample_s() == 900 and st["fault"] == 0
    while ch.level_mm < 1700:  # storm: +600 mm/h
        events += advance(hal, s, ch, 600)
        if ch.level_mm > 400:
            assert s.next_sample_s() == 60  # rising: sample every minute
    assert ("raise", water_level.CAUSE_FLOOD) in [e[:2] for e in events]
    assert 400 <= st["rate"] <= 800
    assert s.report()[1] >= 1500
    while ch.level_mm > 1000:  # water recedes
        events += advance(hal, s, ch, -900)
    assert ("clear", water_level.CAUSE_FLOOD) in [e[:2] for e in events]


def test_stuck_sensor_is_a_fault_and_never_a_flood() -> None:
    ch = Channel()
    hal, s, st = make(ch)
    advance(hal, s, ch, 0)
    ch.mode = "stuck"  # frozen at 1800 mm of "water": above the alarm level, but perfectly still
    events = []
    for _ in range(10):
        events += advance(hal, s, ch, 0)
    assert ("fault", water_level.FAULT_SENSOR, water_level.FAULT_BLOCKED) in events
    assert not [e for e in events if e[0] == "raise"]
    assert st["alarm"] == 0
    assert s.report()[3] == water_level.FAULT_BLOCKED


def test_blocked_and_silent_sensor_faults() -> None:
    ch = Channel()
    hal, s, st = make(ch)
    ch.mode = "blocked"
    assert ("fault", water_level.FAULT_SENSOR, water_level.FAULT_BLOCKED) in advance(hal, s, ch, 0)
    ch.mode = "silent"
    assert ("fault", water_level.FAULT_SENSOR, water_level.FAULT_NO_ECHO) in advance(hal, s, ch, 0)
    ch.mode = "ok"
    assert advance(hal, s, ch, 0) == [("report",)]
    assert st["fault"] == 0
