"""LoRa time on air against Semtech's calculator values, monotonicity properties, and the regional plans."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifeline.protocols import frame, lora_phy
from lifeline.protocols.lora_phy import CN470, EU868, duty_cycle_wait_ms, time_on_air_ms

# Values from the Semtech LoRa Calculator (SX1276, explicit header, CRC on, preamble 8, LDRO automatic);
# the 13-byte and 64-byte rows are the classic LoRaWAN figures (empty frame, 51-byte FRMPayload).
KNOWN = [
    # payload, sf, bw, cr, ms
    (51, 7, 125, 1, 102.656),
    (51, 12, 125, 1, 2465.792),
    (13, 7, 125, 1, 46.336),
    (13, 12, 125, 1, 1155.072),
    (64, 12, 125, 1, 2793.472),
    (51, 11, 125, 1, 1314.816),
    (51, 10, 125, 1, 616.448),
    (51, 7, 250, 1, 51.328),
    (51, 7, 125, 4, 151.808),
]


@pytest.mark.parametrize(("payload", "sf", "bw", "cr", "ms"), KNOWN)
def test_known_values_from_the_semtech_calculator(payload: int, sf: int, bw: int, cr: int, ms: float) -> None:
    assert time_on_air_ms(payload, sf, bw, cr=cr) == pytest.approx(ms, abs=1e-9)


def test_symbol_time_and_ldro_rule() -> None:
    assert lora_phy.symbol_time_ms(7, 125) == pytest.approx(1.024)
    assert lora_phy.symbol_time_ms(12, 125) == pytest.approx(32.768)
    on = {(sf, bw) for sf in range(7, 13) for bw in (125, 250, 500) if lora_phy.low_data_rate_optimize(sf, bw)}
    assert on == {(11, 125), (12, 125), (12, 250)}


def test_ldro_changes_the_symbol_count_at_sf11() -> None:
    # With LDRO, SF11 carries 2 bits fewer per symbol: 51 bytes take 68 instead of 58 payload symbols.
    assert lora_phy.payload_symbols(51, 11, 125) == 68
    assert lora_phy.payload_symbols(51, 11, 125, low_data_rate=False) == 58
    assert time_on_air_ms(51, 11, 125, low_data_rate=False) < time_on_air_ms(51, 11, 125)


def test_header_and_crc_terms() -> None:
    # Implicit header saves 20 bits, CRC off saves 16: each can only shorten the packet.
    base = time_on_air_ms(20, 9, 125)
    assert time_on_air_ms(20, 9, 125, explicit_header=False) <= base
    assert time_on_air_ms(20, 9, 125, crc=False) <= base
    # SF9: 8*20-36+28+16 = 168 bits / 36 per block = 5 blocks; without CRC 152/36 = 5 blocks too (same),
    # at 21 bytes: 176/36 -> 5 vs 160/36 -> 5; at 22 bytes 184/36 -> 6 vs 168/36 -> 5.
    assert time_on_air_ms(22, 9, 125, crc=False) < time_on_air_ms(22, 9, 125)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((51, 6, 125), "spreading factor"),
        ((51, 13, 125), "spreading factor"),
        ((51, 7, 200), "bandwidth"),
        ((256, 7, 125), "payload"),
        ((-1, 7, 125), "payload"),
    ],
)
def test_rejects_impossible_settings(args: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        time_on_air_ms(*args)
    with pytest.raises(ValueError, match="coding rate"):
        time_on_air_ms(10, 7, 125, cr=5)


sfs = st.integers(7, 12)
bws = st.sampled_from(lora_phy.BANDWIDTHS_KHZ)
crs = st.integers(1, 4)
payloads = st.integers(0, 254)


@given(payloads, sfs, bws, crs)
def test_monotone_in_payload(n: int, sf: int, bw: int, cr: int) -> None:
    assert time_on_air_ms(n + 1, sf, bw, cr) >= time_on_air_ms(n, sf, bw, cr)


@given(payloads, st.integers(7, 11), bws, crs)
def test_strictly_slower_at_higher_sf(n: int, sf: int, bw: int, cr: int) -> None:
    assert time_on_air_ms(n, sf + 1, bw, cr) > time_on_air_ms(n, sf, bw, cr)


@given(payloads, sfs, st.sampled_from((125, 250)), crs)
def test_strictly_faster_at_wider_bandwidth(n: int, sf: int, bw: int, cr: int) -> None:
    assert time_on_air_ms(n, sf, bw * 2, cr) < time_on_air_ms(n, sf, bw, cr)


@given(payloads, sfs, bws, st.integers(1, 3))
def test_monotone_in_coding_rate(n: int, sf: int, bw: int, cr: int) -> None:
    assert time_on_air_ms(n, sf, bw, cr + 1) >= time_on_air_ms(n, sf, bw, cr)


@given(payloads, sfs, bws, crs, st.integers(6, 100))
def test_each_preamble_symbol_costs_one_symbol_time(n: int, sf: int, bw: int, cr: int, pre: int) -> None:
    t_sym = lora_phy.symbol_time_ms(sf, bw)
    delta = time_on_air_ms(n, sf, bw, cr, preamble=pre + 1) - time_on_air_ms(n, sf, bw, cr, preamble=pre)
    assert delta == pytest.approx(t_sym)


@given(payloads, sfs, bws, crs)
def test_payload_symbols_come_in_coding_blocks(n: int, sf: int, bw: int, cr: int) -> None:
    symbols = lora_phy.payload_symbols(n, sf, bw, cr)
    assert symbols >= 8
    assert (symbols - 8) % (cr + 4) == 0


def test_duty_cycle_wait() -> None:
    assert duty_cycle_wait_ms(100.0, 0.01) == pytest.approx(9900.0)
    assert duty_cycle_wait_ms(100.0, 0.10) == pytest.approx(900.0)
    assert duty_cycle_wait_ms(100.0, 1.0) == 0.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="duty"):
            duty_cycle_wait_ms(100.0, bad)
    with pytest.raises(ValueError):
        duty_cycle_wait_ms(-1.0, 0.01)


@given(st.floats(1e-3, 1e6), st.floats(0.001, 1.0))
def test_duty_cycle_is_respected_over_one_period(toa: float, duty: float) -> None:
    wait = duty_cycle_wait_ms(toa, duty)
    assert wait >= 0
    assert toa / (toa + wait) == pytest.approx(duty)


def test_eu868_plan() -> None:
    assert EU868.uplink_channels_hz == (868_100_000, 868_300_000, 868_500_000)
    for f in EU868.uplink_channels_hz:
        band = EU868.sub_band(f)
        assert band is not None and band.name == "g1" and band.duty == 0.01
    rx2 = EU868.sub_band(EU868.rx2_freq_hz)
    assert rx2 is not None and rx2.name == "g3" and rx2.duty == 0.10
    assert EU868.rx2_duty == 0.10 and EU868.uplink_duty == 0.01
    assert EU868.by_dr(EU868.rx2_dr).sf == 12
    # 868.6-868.7 MHz lies between g1 and g2: no sub-band, so the region default applies.
    assert EU868.sub_band(868_650_000) is None
    assert EU868.max_payload(7, 250) == 222
    assert EU868.data_rate(7, 500) is None


def test_cn470_plan() -> None:
    up = CN470.uplink_channels_hz
    assert len(up) == 96 and up[0] == 470_300_000 and up[-1] == 489_300_000
    assert all(b - a == 200_000 for a, b in itertools.pairwise(up))
    down = CN470.downlink_channels_hz
    assert len(down) == 48 and all(470_000_000 <= f <= 510_000_000 for f in up + down)
    assert CN470.rx2_freq_hz in down
    assert CN470.uplink_duty == 0.01  # Lifeline's own default
    relaxed = CN470.with_duty(0.05)
    assert relaxed.uplink_duty == 0.05 and CN470.uplink_duty == 0.01
    with pytest.raises(ValueError):
        CN470.with_duty(0)
    assert CN470.data_rate(7, 250) is None
    assert "SRRC" in CN470.notes


@pytest.mark.parametrize("region", [EU868, CN470], ids=lambda r: r.name)
def test_lifeline_frame_fits_every_data_rate(region: lora_phy.Region) -> None:
    """The 51-byte frame budget is the smallest application payload of both plans (SF10..SF12)."""
    assert min(d.max_payload for d in region.data_rates) == frame.MAX_FRAME
    for sf in (10, 11, 12):
        assert region.max_payload(sf, 125) == frame.MAX_FRAME


def test_region_lookup_and_frozen_tables() -> None:
    assert lora_phy.region("cn470") is CN470
    with pytest.raises(ValueError, match="unknown region"):
        lora_phy.region("US915")
    with pytest.raises(dataclasses.FrozenInstanceError):
        EU868.default_duty = 1.0  # type: ignore[misc]
