"""LoRa physical-layer arithmetic: time on air, duty-cycle waits, and the regional plans Lifeline uses.

Time on air follows the Semtech formula of the SX1276/77/78/79 datasheet, section 4.1.1.7 "Time on air"
(also Semtech application note AN1200.13 "LoRa Modem Designer's Guide", and the "LoRa Calculator"):

    T_sym      = 2**SF / BW
    T_preamble = (n_preamble + 4.25) * T_sym
    n_payload  = 8 + max(ceil((8*PL - 4*SF + 28 + 16*CRC - 20*IH) / (4*(SF - 2*DE))) * (CR + 4), 0)
    T_packet   = T_preamble + n_payload * T_sym

PL = payload bytes, IH = 1 for implicit header (0 when the explicit header is sent), CRC = 1 when the
payload CRC is on, DE = 1 when low-data-rate optimisation is on, CR = 1..4 for coding rate 4/5..4/8.
The SX126x datasheet (section 6.1.4) writes the same thing for SF7..SF12 (its N_bit_CRC=16, +8, and 20-bit
header term add up to the same 8*PL - 4*SF + 44), so one function serves both chip families.

Regional plans are from the LoRaWAN Regional Parameters (RP002-1.0.x; CN470 in its original 96-channel
layout) and, for EU868 duty cycles, ETSI EN 300 220 / CEPT ERC Recommendation 70-03 annex 1. Lifeline frames
are raw LoRa payloads, so "max payload" below is the application payload N of those tables (51 bytes at
SF10..SF12): the whole Lifeline frame must fit in it (frame.MAX_FRAME == 51).

CPython only (the firmware keeps its own small copy of the duty-cycle arithmetic), no numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

SF_MIN = 7
SF_MAX = 12
BANDWIDTHS_KHZ = (125, 250, 500)
CODING_RATES = {1: "4/5", 2: "4/6", 3: "4/7", 4: "4/8"}
MAX_PHY_PAYLOAD = 255  # the LoRa modem's payload length register is one byte
LDRO_SYMBOL_MS = 16.0  # Semtech: use low-data-rate optimisation when a symbol lasts 16 ms or more


def _check(sf: int, bw_khz: int, cr: int, preamble: int) -> None:
    if not SF_MIN <= sf <= SF_MAX:
        raise ValueError(f"spreading factor must be {SF_MIN}..{SF_MAX}, got {sf}")
    if bw_khz not in BANDWIDTHS_KHZ:
        raise ValueError(f"bandwidth must be one of {BANDWIDTHS_KHZ} kHz, got {bw_khz}")
    if cr not in CODING_RATES:
        raise ValueError(f"coding rate index must be 1..4 (4/5..4/8), got {cr}")
    if not 6 <= preamble <= 65535:
        raise ValueError(f"preamble must be 6..65535 symbols, got {preamble}")


def symbol_time_ms(sf: int, bw_khz: int) -> float:
    """Duration of one LoRa symbol, 2**SF / BW, in milliseconds."""
    _check(sf, bw_khz, 1, 8)
    return (1 << sf) / bw_khz


def low_data_rate_optimize(sf: int, bw_khz: int) -> bool:
    """Whether the modem must use low-data-rate optimisation: on when a symbol lasts >= 16 ms.

    At 125 kHz that is SF11 (16.384 ms) and SF12 (32.768 ms); at 250 kHz only SF12; never at 500 kHz.
    LoRaWAN stacks (and Semtech's calculator in automatic mode) apply the same rule.
    """
    return symbol_time_ms(sf, bw_khz) >= LDRO_SYMBOL_MS


def payload_symbols(
    payload_len: int,
    sf: int,
    bw_khz: int,
    cr: int = 1,
    explicit_header: bool = True,
    crc: bool = True,
    low_data_rate: bool | None = None,
) -> int:
    """Number of symbols after the preamble (header + payload + CRC), per the datasheet formula."""
    _check(sf, bw_khz, cr, 8)
    if not 0 <= payload_len <= MAX_PHY_PAYLOAD:
        raise ValueError(f"payload must be 0..{MAX_PHY_PAYLOAD} bytes, got {payload_len}")
    de = low_data_rate_optimize(sf, bw_khz) if low_data_rate is None else low_data_rate
    ih = 0 if explicit_header else 1
    numerator = 8 * payload_len - 4 * sf + 28 + 16 * int(crc) - 20 * ih
    denominator = 4 * (sf - 2 * int(de))
    return 8 + max(math.ceil(numerator / denominator) * (cr + 4), 0)


def time_on_air_ms(
    payload_len: int,
    sf: int,
    bw_khz: int,
    cr: int = 1,
    preamble: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
    low_data_rate: bool | None = None,
) -> float:
    """Time on air of one LoRa packet in milliseconds.

    ``cr`` is the coding-rate index 1..4 (4/5..4/8); ``preamble`` the programmed preamble length in symbols
    (the modem adds 4.25 symbols of sync word and start frame delimiter). ``low_data_rate`` None means
    automatic (:func:`low_data_rate_optimize`). Formula: SX1276 datasheet section 4.1.1.7, AN1200.13.
    """
    _check(sf, bw_khz, cr, preamble)
    t_sym = symbol_time_ms(sf, bw_khz)
    n_payload = payload_symbols(payload_len, sf, bw_khz, cr, explicit_header, crc, low_data_rate)
    return (preamble + 4.25) * t_sym + n_payload * t_sym


def duty_cycle_wait_ms(toa_ms: float, duty: float) -> float:
    """Silence required after a transmission of ``toa_ms`` so that the channel use stays within ``duty``.

    A transmitter at duty cycle d may send T_on in every T_on / d, so it waits T_on * (1/d - 1) after
    each packet (1 %: 99 times the airtime; 10 %: 9 times; 100 %: no wait).
    """
    if not 0.0 < duty <= 1.0:
        raise ValueError(f"duty cycle must be in (0, 1], got {duty}")
    if toa_ms < 0 or not math.isfinite(toa_ms):
        raise ValueError(f"time on air must be a finite non-negative number, got {toa_ms}")
    return toa_ms * (1.0 / duty - 1.0)


@dataclass(frozen=True, slots=True)
class SubBand:
    """A frequency range with one duty-cycle limit (EU: ETSI EN 300 220 sub-bands)."""

    name: str
    lo_hz: int
    hi_hz: int  # inclusive edges; a 125 kHz channel must lie fully inside
    duty: float  # 1.0 = no duty-cycle limit
    max_erp_dbm: float

    def contains(self, freq_hz: int, bw_khz: int = 125) -> bool:
        half = bw_khz * 500
        return self.lo_hz <= freq_hz - half and freq_hz + half <= self.hi_hz


@dataclass(frozen=True, slots=True)
class DataRate:
    """One LoRa data rate of a regional plan."""

    dr: int
    sf: int
    bw_khz: int
    max_payload: int  # N: largest application payload (repeater-compatible), bytes
    max_mac_payload: int  # M: N plus the LoRaWAN FHDR/FPort budget, for reference


@dataclass(frozen=True, slots=True)
class Region:
    """A regional channel plan with the limits Lifeline's radios obey."""

    name: str
    uplink_channels_hz: tuple[int, ...]
    downlink_channels_hz: tuple[int, ...]
    sub_bands: tuple[SubBand, ...]
    data_rates: tuple[DataRate, ...]
    rx2_freq_hz: int
    rx2_dr: int
    default_duty: float  # duty applied where no sub-band says otherwise (1.0 = none)
    max_eirp_dbm: float
    notes: str = ""

    def data_rate(self, sf: int, bw_khz: int) -> DataRate | None:
        """The data rate with this SF and bandwidth, or None when the plan has none."""
        for d in self.data_rates:
            if d.sf == sf and d.bw_khz == bw_khz:
                return d
        return None

    def by_dr(self, dr: int) -> DataRate:
        for d in self.data_rates:
            if d.dr == dr:
                return d
        raise KeyError(f"{self.name} has no DR{dr}")

    def max_payload(self, sf: int, bw_khz: int) -> int | None:
        d = self.data_rate(sf, bw_khz)
        return None if d is None else d.max_payload

    def sub_band(self, freq_hz: int, bw_khz: int = 125) -> SubBand | None:
        for band in self.sub_bands:
            if band.contains(freq_hz, bw_khz):
                return band
        return None

    def duty_for(self, freq_hz: int, bw_khz: int = 125) -> float:
        """The duty-cycle limit on ``freq_hz``: its sub-band's, else the region default."""
        band = self.sub_band(freq_hz, bw_khz)
        return self.default_duty if band is None else band.duty

    @property
    def uplink_duty(self) -> float:
        """The duty cycle of the first (default) uplink channel."""
        return self.duty_for(self.uplink_channels_hz[0])

    @property
    def rx2_duty(self) -> float:
        return self.duty_for(self.rx2_freq_hz)

    def with_duty(self, duty: float) -> Region:
        """A copy with another region-wide duty cycle (CN470: Lifeline's own, configurable limit)."""
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty cycle must be in (0, 1], got {duty}")
        return replace(self, default_duty=duty)


def _lorawan_rates(sf_125: tuple[int, ...], payloads: tuple[int, ...]) -> tuple[DataRate, ...]:
    # M = N + 8 (FHDR without FOpts 7 + FPort 1), as in the Regional Parameters tables.
    return tuple(
        DataRate(dr=i, sf=sf, bw_khz=125, max_payload=n, max_mac_payload=n + 8)
        for i, (sf, n) in enumerate(zip(sf_125, payloads, strict=True))
    )


# EU863-870. Default channels 868.1/868.3/868.5 MHz sit in ETSI sub-band g1 (868.0-868.6 MHz, 1 %);
# RX2 (869.525 MHz, DR0) sits in g3 (869.4-869.65 MHz, 10 %, 500 mW ERP), which is why gateways use it
# for downlinks. Max EIRP 16 dBm for end devices.
EU868 = Region(
    name="EU868",
    uplink_channels_hz=(868_100_000, 868_300_000, 868_500_000),
    downlink_channels_hz=(868_100_000, 868_300_000, 868_500_000, 869_525_000),
    sub_bands=(
        SubBand("h1.4", 863_000_000, 865_000_000, 0.001, 14.0),
        SubBand("h1.5", 865_000_000, 868_000_000, 0.01, 14.0),
        SubBand("g1", 868_000_000, 868_600_000, 0.01, 14.0),
        SubBand("g2", 868_700_000, 869_200_000, 0.001, 14.0),
        SubBand("g3", 869_400_000, 869_650_000, 0.10, 27.0),
        SubBand("g4", 869_700_000, 870_000_000, 0.01, 14.0),
    ),
    data_rates=(
        *_lorawan_rates((12, 11, 10, 9, 8, 7), (51, 51, 51, 115, 222, 222)),
        DataRate(dr=6, sf=7, bw_khz=250, max_payload=222, max_mac_payload=230),
    ),
    rx2_freq_hz=869_525_000,
    rx2_dr=0,
    default_duty=0.01,
    max_eirp_dbm=16.0,
    notes="ETSI EN 300 220: duty cycle per sub-band (g1 1 %, g3 10 % for RX2 downlinks).",
)

# CN470-510, the original LoRaWAN plan: 96 uplink channels 470.3 + 0.2*n MHz (n = 0..95, up to 489.3 MHz),
# 48 downlink channels 500.3 + 0.2*n MHz (n = 0..47), RX2 505.3 MHz DR0, DR0..DR5 = SF12..SF7 at 125 kHz.
# The LoRaWAN plan has no duty cycle. China's SRRC/MIIT short-range rules (MIIT announcement 2019 No. 52)
# open 470-510 MHz to civil metering-type devices at no more than 50 mW (17 dBm) ERP and without
# interfering with broadcasting in that band; check the current text for a deployment. Lifeline is a
# good neighbour and applies its own configurable duty cycle (default 1 %, see Region.with_duty).
CN470 = Region(
    name="CN470",
    uplink_channels_hz=tuple(470_300_000 + 200_000 * n for n in range(96)),
    downlink_channels_hz=tuple(500_300_000 + 200_000 * n for n in range(48)),
    sub_bands=(),
    data_rates=_lorawan_rates((12, 11, 10, 9, 8, 7), (51, 51, 51, 115, 222, 222)),
    rx2_freq_hz=505_300_000,
    rx2_dr=0,
    default_duty=0.01,
    max_eirp_dbm=17.0,
    notes="No duty cycle in the LoRaWAN plan; Lifeline applies a configurable one (default 1 %). "
    "SRRC/MIIT 2019 No. 52: 470-510 MHz, <= 50 mW ERP, civil metering use.",
)

REGIONS: dict[str, Region] = {EU868.name: EU868, CN470.name: CN470}


def region(name: str) -> Region:
    """Look a region up by name (case-insensitive)."""
    try:
        return REGIONS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown region {name!r}; known: {', '.join(sorted(REGIONS))}") from None
