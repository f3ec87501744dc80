"""Utility meters: reed pulses (debounce, quadrature, tamper, leak at night), Modbus RTU and the SDM120."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from lifeline.firmware import config
from lifeline.firmware.hal import sim, sim_chips
from lifeline.firmware.sensors import electricity, meter, modbus, pulse, sdm120
from lifeline.firmware.simnode import SimNode, config_for, sdm120_registers
from lifeline.protocols import schema

DAY = 86400


class WaterMeter:
    """A meter register with a rotating magnet: reed A closes once per litre, reed B a quarter turn later
    (forward) or earlier (reverse). Contacts bounce for 3 ms. ``draws`` are (start s, end s, L/h)."""

    def __init__(self) -> None:
        self.draws: list[tuple[int, int, float]] = []
        self.reverse: list[tuple[int, int, float]] = []
        self.magnet: list[tuple[int, int]] = []

    def _pulse_times(self, spans: list[tuple[int, int, float]], t0: int, t1: int) -> list[int]:
        out = []
        for a, b, lph in spans:
            period_ms = int(3_600_000 / lph)
            t = a * 1000
            while t < b * 1000:
                if t0 <= t < t1:
                    out.append(t)
                t += period_ms
        return out

    def edges(self, hal: Any, t0: int, t1: int) -> list[tuple[int, int, int]]:
        ev = []
        for rev, spans in ((False, self.draws), (True, self.reverse)):
            for t in self._pulse_times(spans, t0, t1):
                b_first = rev
                if b_first:
                    ev += [(t - 400, 1, 1)]
                ev += [(t, 0, 1), (t + 1, 0, 0), (t + 3, 0, 1)]  # bounce on closing
                if not b_first:
                    ev += [(t + 400, 1, 1)]
                ev += [(t + 800, 0, 0), (t + 1200, 1, 0)]
        for a, b in self.magnet:
            if t0 <= a * 1000 < t1:
                ev += [(a * 1000, 2, 1), (a * 1000 + 5, 0, 1)]  # hall sees the field, reed A held closed
            if t0 <= b * 1000 < t1:
                ev += [(b * 1000, 2, 0), (b * 1000 + 5, 0, 0)]
        return [e for e in ev if t0 <= e[0] < t1]


def make(m: WaterMeter, clock_ok: bool = True) -> tuple[sim.SimHal, meter.PulseMeter, dict[str, Any]]:
    hal = sim.SimHal(pulse_providers={"meter": m.edges})
    hal.set_time(0)
    cfg = config.Config(config_for("water_meter", "lora", bytes(8), bytes(32),
                                   {"thresholds": {"high": 1}, "sensor": {"night": [1, 5]}}))
    st: dict[str, Any] = {}
    s = meter.PulseMeter(hal, cfg, st, schema.K_WATER_METER)
    s.clock_ok = clock_ok
    return hal, s, st


def run_days(hal: sim.SimHal, s: meter.PulseMeter, days: int) -> list[Any]:
    ev = []
    for _ in range(days * 96):
        hal.sleep_ms(900_000)
        ev += s.sample(hal.time())
    return ev


def household(m: WaterMeter, days: int) -> None:
    for d in range(days):
        base = d * DAY
        m.draws += [(base + 7 * 3600, base + 7 * 3600 + 600, 600.0),  # morning shower
                    (base + 19 * 3600, base + 19 * 3600 + 1800, 300.0)]  # evening


def test_debounce_and_quadrature_decode() -> None:
    st: dict[str, Any] = {}
    d = pulse.PulseDecoder(st, 20, True)
    m = WaterMeter()
    m.draws = [(0, 100, 360.0)]  # 1 L every 10 s
    m.reverse = [(200, 250, 360.0)]
    d.feed(m.edges(None, 0, 300_000), 300_000)
    assert (st["fwd"], st["rev"]) == (10, 5)
    assert d.net() == 5


def test_normal_use_is_not_a_leak() -> None:
    m = WaterMeter()
    household(m, 5)
    hal, s, _st = make(m)
    ev = run_days(hal, s, 5)
    assert not [e for e in ev if e[0] == "raise"]
    assert s.report()[1] == 5 * (100 + 150)


def test_continuous_night_flow_is_a_leak() -> None:
    m = WaterMeter()
    household(m, 4)
    m.draws.append((2 * DAY + 12 * 3600, 5 * DAY, 12.0))  # a running toilet from day 2 noon: 12 L/h
    hal, s, _st = make(m)
    ev = run_days(hal, s, 4)
    leaks = [e for e in ev if e[:2] == ("raise", meter.CAUSE_LEAK)]
    assert len(leaks) == 1
    assert s.report()[3] & meter.F_LEAK


def test_leak_without_a_synchronised_clock_uses_the_24_hour_rule() -> None:
    m = WaterMeter()
    m.draws.append((0, 3 * DAY, 12.0))
    hal, s, _st = make(m, clock_ok=False)
    ev = run_days(hal, s, 2)
    assert [e[:2] for e in ev if e[0] == "raise"] == [("raise", meter.CAUSE_LEAK)]


def test_magnet_on_the_meter_is_tamper() -> None:
    m = WaterMeter()
    m.draws = [(0, 2 * 3600, 120.0)]
    m.magnet = [(3600, 5400)]  # a magnet is put on the meter: pulses stop, the hall input fires
    hal, s, _st = make(m)
    ev = []
    for _ in range(12):
        hal.sleep_ms(900_000)
        ev += s.sample(hal.time())
    assert ("raise", meter.CAUSE_TAMPER) in [e[:2] for e in ev]
    assert ("clear", meter.CAUSE_TAMPER) in [e[:2] for e in ev]
    assert s.report()[1] < 240  # litres under the magnet were not counted (that is the fraud)


def test_reverse_flow_alarm() -> None:
    m = WaterMeter()
    m.reverse = [(600, 1500, 60.0)]
    hal, s, _st = make(m)
    ev = []
    for _ in range(4):
        hal.sleep_ms(900_000)
        ev += s.sample(hal.time())
    assert ("raise", meter.CAUSE_REVERSE) in [e[:2] for e in ev]


def test_count_survives_deep_sleep_and_power_loss() -> None:
    m = WaterMeter()
    m.draws = [(0, 10 * 3600, 60.0)]
    sn = SimNode("water_meter", pulses={"meter": m.edges})
    for _ in range(4):
        sn.cycle()  # 15-minute wakes: RTC memory carries the count
    sn.hal.power_loss(0)  # battery swap: RTC memory gone, the flash copy remains
    sn.cycle()
    idx = [f.fields[1] for f in sn.decoded() if f.header.kind == schema.K_WATER_METER]
    assert idx == sorted(idx) and idx[-1] > idx[-2] > 0  # continued from the flash copy, not from zero


def test_modbus_crc_and_request_bytes() -> None:
    assert modbus.read_input_request(1, 0, 2) == bytes.fromhex("010400000002 71cb".replace(" ", ""))
    assert modbus.crc16(b"123456789") == 0x4B37  # CRC-16/MODBUS check value


@pytest.mark.parametrize(
    "bad", [b"", b"\x01\x04\x04\x00\x00", b"\x01\x84\x02\xc2\xc1", b"\x02\x04\x02\x00\x01\x00\x00"])
def test_modbus_response_errors_are_reasons(bad: bytes) -> None:
    with pytest.raises(modbus.ModbusError):
        modbus.parse_read_input(1, 1, bad)


def test_float32_to_scaled_integer_without_floats() -> None:
    rnd = random.Random(2)
    for _ in range(2000):
        v = rnd.uniform(-1e5, 1e5)
        raw = int.from_bytes(struct.pack(">f", v), "big")
        f32 = struct.unpack(">f", struct.pack(">f", v))[0]
        assert abs(sdm120.f32_scaled(raw >> 16, raw & 0xFFFF, 1000) - f32 * 1000) <= 0.5 + abs(f32) * 1e-9
    assert sdm120.f32_scaled(0x7FC0, 0, 1) is None  # NaN


def test_electricity_meter_over_modbus() -> None:
    regs = {"v": sdm120_registers(2301, 1500, 1234567, 0)}
    slave = sim_chips.Sdm120(lambda h, t: regs["v"](h, t))
    hal = sim.SimHal(uart_devices={"rs485": slave})
    cfg = config.Config(config_for("electricity_meter", "lora", bytes(8), bytes(32)))
    st: dict[str, Any] = {}
    s = electricity.ElectricityMeter(hal, cfg, st)
    assert s.sample(0) == []
    assert s.report() == {1: 1234567, 2: 1500, 3: 0, 4: 2301}
    regs["v"] = sdm120_registers(2299, -800, 1234600, 250)  # solar export starts
    assert [e[:2] for e in s.sample(900)] == [("raise", electricity.CAUSE_REVERSE)]
    assert s.report()[2] == -800
    hal.uart_devices.clear()
    hal2 = sim.SimHal()  # no meter on the bus: time-out -> sensor fault, once
    s2 = electricity.ElectricityMeter(hal2, cfg, {})
    assert s2.sample(0) == [("fault", electricity.FAULT_SENSOR, 2)]
    assert s2.sample(900) == []
