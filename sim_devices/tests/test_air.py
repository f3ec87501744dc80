"""The virtual air: time on air, path loss, sensitivity, collisions and capture, windows, duty cycle."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from lifeline.gateway.ingress import lora_p2p
from lifeline.protocols import lora_phy
from lifeline.sim_devices.air import (
    AirChannel,
    DutyCycleExceeded,
    LoraParams,
    PathLossModel,
    RadioBusy,
    VirtualClock,
    noise_floor_dbm,
    open_rx_window,
    sensitivity_dbm,
)

P = LoraParams(868_100_000, 9, 125)


def quiet_air(**kw: object) -> tuple[VirtualClock, AirChannel]:
    clock = VirtualClock(0.0)
    air = AirChannel(clock, seed=1, path_loss=PathLossModel(sigma_db=0.0), region=None, **kw)  # type: ignore[arg-type]
    return clock, air


def test_virtual_clock_runs_timers_in_order_and_sleep_advances() -> None:
    clock = VirtualClock(100.0)
    seen: list[tuple[str, float]] = []
    clock.call_at(300.0, lambda: seen.append(("b", clock.now())))
    clock.call_at(200.0, lambda: seen.append(("a", clock.now())))
    cancelled = clock.call_at(250.0, lambda: seen.append(("x", clock.now())))
    cancelled.cancel()
    asyncio.run(clock.sleep(0.25))
    assert seen == [("a", 200.0), ("b", 300.0)] and clock.now() == 350.0
    assert clock.now_ms() == 350 and clock.monotonic() == 0.35


def test_time_on_air_is_the_datasheet_formula() -> None:
    _clock, air = quiet_air()
    air.add_radio("a")
    tx = air.transmit("a", b"x" * 51, LoraParams(868_100_000, 12, 125))
    assert tx.toa_ms == pytest.approx(lora_phy.time_on_air_ms(51, 12, 125))
    assert tx.toa_ms == pytest.approx(2465.792, abs=0.01)  # SF12, 51 B, LDRO on (Semtech calculator)


def test_path_loss_model_and_sensitivity_table() -> None:
    model = PathLossModel()
    assert model.mean_db(40.0, 868e6) == pytest.approx(127.41)
    assert model.mean_db(400.0, 868e6) == pytest.approx(127.41 + 20.8)
    assert model.mean_db(40.0, 470.3e6) == pytest.approx(127.41 - 5.32, abs=0.01)
    assert sensitivity_dbm(12, 125) == -136 and sensitivity_dbm(7, 125) == -123 and sensitivity_dbm(7, 500) == -116
    assert noise_floor_dbm(125) == pytest.approx(-117.03, abs=0.01)


def test_reception_above_sensitivity_and_loss_below() -> None:
    clock, air = quiet_air()
    gw = air.add_radio("gw")
    gw.listen(P)
    near = air.add_radio("near", 100.0, 0.0)
    far = air.add_radio("far", 3000.0, 0.0)
    a = near.transmit(b"near", P)
    clock.advance(a.toa_ms + 1)
    b = far.transmit(b"far", P)
    clock.advance(b.toa_ms + 1)
    got = {d.tx.sender: d for d in air.deliveries}
    assert got["near"].ok and got["near"].rssi_dbm == pytest.approx(14 - PathLossModel().mean_db(100, 868.1e6))
    assert got["far"].reason == "below_sensitivity" and got["far"].rssi_dbm < sensitivity_dbm(9, 125)
    assert got["near"].snr_db == pytest.approx(got["near"].rssi_dbm - noise_floor_dbm(125))


def test_same_seed_same_result_other_seed_other_shadowing() -> None:
    def run(seed: int) -> list[float]:
        clock = VirtualClock(0.0)
        air = AirChannel(clock, seed=seed, region=None)
        air.add_radio("gw").listen(P)
        node = air.add_radio("n", 150.0, 0.0)
        out = []
        for _ in range(20):
            tx = node.transmit(b"abc", P)
            clock.advance(tx.toa_ms + 10)
            out.append(air.deliveries[-1].rssi_dbm)
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)
    spread = run(5)
    assert max(spread) - min(spread) > 3  # shadowing, sigma 3.57 dB


def test_overlap_on_the_same_channel_and_sf_collides() -> None:
    clock, air = quiet_air(capture=False)
    air.add_radio("gw").listen([P, LoraParams(868_100_000, 10, 125), LoraParams(868_300_000, 9, 125)])
    a, b, c, d = (air.add_radio(n, 50.0 + i, 0.0) for i, n in enumerate("abcd"))
    ta = a.transmit(b"a" * 10, P)
    clock.advance(ta.toa_ms / 2)
    b.transmit(b"b" * 10, P)  # same channel and SF, overlapping
    c.transmit(b"c" * 10, LoraParams(868_100_000, 10, 125))  # other SF: orthogonal
    d.transmit(b"d" * 10, LoraParams(868_300_000, 9, 125))  # other channel
    clock.advance(5000)
    result = {x.tx.sender: x.reason for x in air.deliveries}
    assert result == {"a": "collision", "b": "collision", "c": "ok", "d": "ok"}


def test_capture_effect_needs_6_db() -> None:
    clock, air = quiet_air(capture=True)
    air.add_radio("gw").listen(P)
    strong = air.add_radio("strong", 30.0, 0.0)
    weak = air.add_radio("weak", 150.0, 0.0)  # ~14.5 dB weaker
    close = air.add_radio("close", 33.0, 0.0)  # < 1 dB weaker than "strong"
    strong.transmit(b"s" * 10, P)
    weak.transmit(b"w" * 10, P)
    clock.advance(2000)
    assert {x.tx.sender: x.reason for x in air.deliveries} == {"strong": "captured", "weak": "collision"}
    air.deliveries.clear()
    strong.transmit(b"s" * 10, P)
    close.transmit(b"c" * 10, P)
    clock.advance(2000)
    assert {x.tx.sender: x.reason for x in air.deliveries} == {"strong": "collision", "close": "collision"}


def test_half_duplex_and_one_packet_at_a_time() -> None:
    clock, air = quiet_air()
    gw = air.add_radio("gw")
    gw.listen(P)
    node = air.add_radio("n", 50.0, 0.0)
    tx = node.transmit(b"up", P)
    with pytest.raises(RadioBusy):
        node.transmit(b"again", P)
    gw.transmit(b"down", P)  # the gateway talks over the uplink it should be hearing
    clock.advance(tx.toa_ms + 1000)
    assert [x.reason for x in air.deliveries if x.receiver == "gw"] == ["half_duplex"]


def test_receive_window_rules() -> None:
    clock, air = quiet_air()
    gw = air.add_radio("gw")
    node = air.add_radio("n", 50.0, 0.0)
    gw.listen(P)
    up = node.transmit(b"up", P)
    clock.advance(up.toa_ms)
    window = open_rx_window(node, up)
    assert window.start_ms == pytest.approx(up.end_ms + lora_p2p.RX1_DELAY_MS)
    assert window.end_ms - window.start_ms == lora_p2p.RX_WINDOW_MS
    t_sym = lora_phy.symbol_time_ms(9, 125)
    # the other IQ polarity in the window: not demodulated
    clock.advance_to(window.start_ms + 10)
    gw.transmit(b"wrong-iq", replace(P.downlink(), iq_inverted=not P.downlink().iq_inverted))
    clock.advance(400)
    # a downlink whose preamble starts too late in the window (fewer than 5 symbols inside)
    up2 = node.transmit(b"up2", P)
    clock.advance(up2.toa_ms)
    w2 = open_rx_window(node, up2)
    clock.advance_to(w2.end_ms - 4 * t_sym)
    gw.transmit(b"late", P.downlink())
    clock.advance(1000)
    up3 = node.transmit(b"up3", P)
    clock.advance(up3.toa_ms)
    w3 = open_rx_window(node, up3)
    clock.advance_to(lora_p2p.downlink_start_ms(up3.end_ms))
    assert w3.start_ms < clock.now() < w3.end_ms
    gw.transmit(b"in-window", P.downlink())
    clock.advance(1000)
    assert [x.tx.payload for x in air.received_by("n")] == [b"in-window"]


def test_duty_cycle_per_region_and_sub_band() -> None:
    clock = VirtualClock(0.0)
    air = AirChannel(clock, seed=1, region="EU868")
    node = air.add_radio("n")
    tx = node.transmit(b"x" * 20, P)
    clock.advance(tx.toa_ms)
    with pytest.raises(DutyCycleExceeded) as info:
        node.transmit(b"x" * 20, P)
    assert info.value.wait_ms == pytest.approx(99 * tx.toa_ms)  # g1: 1 %
    g3 = LoraParams(869_525_000, 9, 125)
    t3 = node.transmit(b"x" * 20, g3)  # another sub-band has its own budget
    clock.advance(t3.toa_ms + 9 * t3.toa_ms)
    node.transmit(b"x" * 20, g3)  # g3: 10 %, 9x the airtime later is fine
    cn = AirChannel(VirtualClock(0.0), seed=1, region="CN470", default_duty=0.25)
    m = cn.add_radio("m")
    t = m.transmit(b"y", LoraParams(470_300_000, 9, 125))
    cn.clock.advance(t.toa_ms + 2.9 * t.toa_ms)
    with pytest.raises(DutyCycleExceeded):
        m.transmit(b"y", LoraParams(470_300_000, 9, 125))
    cn.clock.advance(0.2 * t.toa_ms)
    m.transmit(b"y", LoraParams(470_300_000, 9, 125))
