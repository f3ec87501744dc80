"""Smoke chamber logic against a physical chamber model: dust settling over weeks versus a fire."""

from __future__ import annotations

from typing import Any

from lifeline.firmware import config
from lifeline.firmware.hal import sim
from lifeline.firmware.sensors import buzzer, smoke
from lifeline.firmware.simnode import config_for

DARK_UV = 50_000
CLEAN_UV = 200_000
UV_PER_PCT = 60_000  # photodiode signal per 1 %/m obscuration (scatter grows ~linearly at low density)


class Chamber:
    """Scatter signal = clean-chamber reflection + dust film (slowly growing) + smoke (%/m)."""

    def __init__(self) -> None:
        self.smoke_pct_per_m = 0.0
        self.dust_uv = 0
        self.led_open = False

    def adc(self, hal: Any, t_ms: int) -> int:
        lit = hal.pin("smoke_led", True).v and not self.led_open
        return DARK_UV + (int(CLEAN_UV + self.dust_uv + self.smoke_pct_per_m * UV_PER_PCT) if lit else 0)


def make(chamber: Chamber, button: list[int] | None = None) -> tuple[sim.SimHal, smoke.SmokeSensor, dict[str, Any]]:
    btn = button if button is not None else [0]
    hal = sim.SimHal(providers={"smoke_adc": chamber.adc, "test_button": lambda h, t: btn[0]})
    raw = config_for("smoke", "lora", bytes(8), bytes(32),
                     {"sensor": {"clean_uv": CLEAN_UV, "uv_per_pct": UV_PER_PCT}, "sample_interval": 10})
    cfg = config.Config(raw)
    st: dict[str, Any] = {}
    return hal, smoke.SmokeSensor(hal, cfg, st), st


def run(hal: sim.SimHal, s: smoke.SmokeSensor, seconds: int, step: int) -> list[tuple[Any, ...]]:
    events = []
    for _ in range(seconds // step):
        hal.sleep_ms(step * 1000)
        events += s.sample(hal.time())
    return events


def test_clean_air_reads_zero() -> None:
    hal, s, _st = make(Chamber())
    run(hal, s, 60, 10)
    assert s.report() == {1: smoke.NORMAL, 2: 0, 3: smoke.CH_OK}


def test_fire_raises_the_alarm_within_a_minute_and_clears_with_hysteresis() -> None:
    ch = Chamber()
    hal, s, _st = make(ch)
    run(hal, s, 3600, 10)
    ev = []
    for _ in range(120):  # smouldering fire: +0.1 %/m every 2 s (3 %/m per minute)
        ch.smoke_pct_per_m += 0.1
        hal.sleep_ms(2000)
        ev += s.sample(hal.time())
        if ("raise", smoke.CAUSE_SMOKE) in [e[:2] for e in ev]:
            break
    raised = [e for e in ev if e[0] == "raise"]
    assert raised and raised[0][2] >= 300
    assert ch.smoke_pct_per_m < 4.5  # within ~3 confirmation samples of crossing 3 %/m
    assert s.busy()
    ch.smoke_pct_per_m = 2.0  # below the alarm level but above the clear level: stays in alarm
    assert not [e for e in run(hal, s, 60, 2) if e[0] == "clear"]
    ch.smoke_pct_per_m = 0.5
    assert [e[0] for e in run(hal, s, 20, 2)].count("clear") == 1
    assert s.report()[1] == smoke.NORMAL


def test_dust_settling_over_weeks_is_compensated_and_reported_dirty_not_as_fire() -> None:
    ch = Chamber()
    hal, s, st = make(ch)
    events = []
    for day in range(120):  # dust film adds the equivalent of 0.05 %/m per day
        ch.dust_uv = int(day * 0.05 * UV_PER_PCT)
        events += run(hal, s, 86400, 1800)
    assert not [e for e in events if e[0] == "raise"]
    assert s.report()[2] < 50  # compensated obscuration stays near zero
    assert st["ch"] == smoke.CH_DIRTY  # 6 %/m of compensation: clean or replace the chamber
    assert [e for e in events if e[0] == "report"]  # the chamber state change was reported


def test_open_led_is_a_chamber_fault_not_silence() -> None:
    ch = Chamber()
    hal, s, _st = make(ch)
    run(hal, s, 30, 10)
    ch.led_open = True
    ev = run(hal, s, 30, 10)
    assert ("fault", smoke.FAULT_SENSOR, 2) in ev
    assert s.report()[3] == smoke.CH_FAULT


def test_test_button_runs_a_self_test_and_hushes_an_alarm() -> None:
    ch = Chamber()
    btn = [0]
    hal, s, st = make(ch, btn)
    btn[0] = 1
    s.sample(hal.time())
    btn[0] = 0
    assert s.report()[4] == 1  # self-test passed (reported once)
    ch.smoke_pct_per_m = 5.0
    run(hal, s, 10, 2)
    assert st["state"] == smoke.ALARM
    btn[0] = 1
    s.sample(hal.time())
    btn[0] = 0
    assert st["state"] == smoke.HUSHED and not st["bz"]


def test_buzzer_sounds_temporal_three_and_an_ack_stops_the_escalation() -> None:
    assert [buzzer.temporal3(t) for t in range(0, 4000, 250)] == [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    ch = Chamber()
    hal, s, st = make(ch)
    ch.smoke_pct_per_m = 6.0
    run(hal, s, 10, 2)
    loud = hal.pin("buzzer_loud", True)
    tone = hal.pin("buzzer", True)
    tone.log = []
    for _ in range(4 * 90):  # 90 s awake, ticking every 250 ms
        hal.sleep_ms(250)
        s.tick(hal.ticks_ms())
    assert loud.v == 1  # no platform acknowledgement after 60 s: escalated
    assert len(tone.log) >= 2 * 3 * 20  # on/off edges of the temporal-3 pattern
    s.on_ack(1, 1)
    hal.sleep_ms(250)
    s.tick(hal.ticks_ms())
    assert loud.v == 0 and st["bz"] == 1  # escalation stopped, the local alarm continues
