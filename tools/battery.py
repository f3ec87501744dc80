"""Battery-life estimate for a Lifeline node from its configuration (``lifeline battery``).

A charge budget per day, built from the wakes the firmware actually makes (see docs/firmware.md, "Power
budget"): every wake boots MicroPython from deep sleep and reads the sensor; report wakes also talk to
the RAK3172 over UART, transmit one frame (time on air from lifeline.protocols.lora_phy, i.e. the SX127x /
SX126x datasheet formula) and keep a receive window open. Between wakes the ESP32 is in deep sleep and the
RAK3172 in its low-power mode. Life = usable capacity / (daily consumption + self-discharge).

Currents are datasheet typical values (ESP32 Series Datasheet v4.x, "Power Consumption by Power Modes";
RAK3172 WisDuo module datasheet, "Operating Current"); every one can be overridden on the command line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

import click

from lifeline.protocols import frame, frame_sizes, lora_phy, schema

KIND_IDS = {"smoke": schema.K_SMOKE, "tilt": schema.K_TILT, "water_level": schema.K_WATER_LEVEL,
            "water_meter": schema.K_WATER_METER, "gas_meter": schema.K_GAS_METER,
            "electricity_meter": schema.K_ELECTRICITY_METER}

# Time the ESP32 spends awake reading each sensor, per wake (ms), from the firmware's drivers:
#   smoke: 4 dark/lit ADC pairs with 100 us LED pulses; tilt: one 16-sample window at 50 Hz (320 ms);
#   water level: ranger power-up and a 9-frame burst at 10 frames/s; meters: pulse decoding;
#   electricity: two Modbus RTU transactions at 2400 baud (request 8 B + reply up to 33 B, 3.5-char gaps).
SENSOR_MS = {"smoke": 5, "tilt": 330, "water_level": 1000, "water_meter": 10, "gas_meter": 10,
             "electricity_meter": 250}
# Wakes that only sample (no radio) between reports: the smoke chamber is sampled every sample interval.
DEFAULT_SAMPLE_S = {"smoke": 10}


@dataclass(frozen=True, slots=True)
class Currents:
    """Supply currents in mA (typical, 3.6 V)."""

    esp32_active_ma: float = 25.0  # ESP32 modem-sleep, CPU 80 MHz (datasheet: 20-31 mA), radio off
    esp32_deep_sleep_ua: float = 10.0  # ESP32 deep sleep, RTC timer + RTC memory (datasheet: 10 uA)
    board_sleep_ua: float = 5.0  # LDO quiescent + sensor standby + divider leakage (design target)
    lora_tx_ma: float = 45.0  # RAK3172 TX at 14 dBm, 868 MHz (datasheet ~45 mA; 87 mA at 22 dBm)
    lora_rx_ma: float = 5.3  # RAK3172 RX (datasheet ~5.3 mA)
    lora_sleep_ua: float = 1.7  # RAK3172 low-power mode (datasheet 1.69 uA)


@dataclass(frozen=True, slots=True)
class Estimate:
    kind: str
    interval_s: int
    sf: int
    bw_khz: int
    frame_bytes: int
    airtime_ms: float
    report_wake_mas: float
    sample_wake_mas: float
    sleep_mah_per_day: float
    reports_mah_per_day: float
    samples_mah_per_day: float
    heartbeat_mah_per_day: float
    total_mah_per_day: float
    self_discharge_mah_per_day: float
    usable_mah: float
    life_days: float
    life_years: float
    assumptions: dict[str, float | int | str] = field(default_factory=dict)


def frame_bytes(kind: str) -> int:
    """Size of the kind's report with every field at its longest encoding (conservative)."""
    kid = KIND_IDS[kind]
    keys = frame.derive_keys(bytes(32), bytes(8))
    return len(frame.encode(keys, bytes(8), 0xFFFFFFFF, 0xFFFFFFFF, kid, frame_sizes.max_fields(kid)))


def estimate(kind: str, interval_s: int, sf: int, *, bw_khz: int = 125, cr: int = 1, preamble: int = 8,
             heartbeat_s: int = 86400, sample_s: int | None = None, rx_ms: int = 1000, boot_ms: int = 350,
             uart_ms: int = 60, capacity_mah: float = 19000.0, derate: float = 0.85,
             self_discharge_pct_per_year: float = 1.0, currents: Currents | None = None) -> Estimate:
    if kind not in KIND_IDS:
        raise ValueError(f"unknown kind {kind!r}")
    if interval_s <= 0 or heartbeat_s <= 0:
        raise ValueError("intervals must be positive")
    c = currents or Currents()
    n = frame_bytes(kind)
    toa = lora_phy.time_on_air_ms(n, sf, bw_khz, cr, preamble)
    hb_toa = lora_phy.time_on_air_ms(frame_bytes_heartbeat(), sf, bw_khz, cr, preamble)
    awake_ms = boot_ms + SENSOR_MS[kind]

    def radio_wake(tx_ms: float) -> float:  # mA*s of one wake that transmits
        esp_ms = awake_ms + uart_ms + tx_ms + rx_ms  # the ESP32 waits for TXP2P DONE and the RX window
        return (esp_ms * c.esp32_active_ma + tx_ms * c.lora_tx_ma + rx_ms * c.lora_rx_ma) / 1000

    report_mas = radio_wake(toa)
    sample_mas = awake_ms * c.esp32_active_ma / 1000
    reports_per_day = 86400 / interval_s
    s_int = sample_s if sample_s is not None else DEFAULT_SAMPLE_S.get(kind)
    samples_per_day = max(0.0, 86400 / s_int - reports_per_day) if s_int else 0.0
    sleep_ua = c.esp32_deep_sleep_ua + c.board_sleep_ua + c.lora_sleep_ua
    sleep_mah = sleep_ua / 1000 * 24
    reports_mah = report_mas * reports_per_day / 3600
    samples_mah = sample_mas * samples_per_day / 3600
    # a heartbeat goes out in a wake that is already up: one more UART exchange, transmission and window
    hb_mas = ((uart_ms + hb_toa + rx_ms) * c.esp32_active_ma + hb_toa * c.lora_tx_ma + rx_ms * c.lora_rx_ma) / 1000
    hb_mah = hb_mas * (86400 / heartbeat_s) / 3600
    total = sleep_mah + reports_mah + samples_mah + hb_mah
    sd = capacity_mah * self_discharge_pct_per_year / 100 / 365
    usable = capacity_mah * derate
    days = usable / (total + sd)
    return Estimate(
        kind=kind, interval_s=interval_s, sf=sf, bw_khz=bw_khz, frame_bytes=n, airtime_ms=round(toa, 2),
        report_wake_mas=round(report_mas, 3), sample_wake_mas=round(sample_mas, 3),
        sleep_mah_per_day=round(sleep_mah, 4), reports_mah_per_day=round(reports_mah, 4),
        samples_mah_per_day=round(samples_mah, 4), heartbeat_mah_per_day=round(hb_mah, 4),
        total_mah_per_day=round(total, 4), self_discharge_mah_per_day=round(sd, 4), usable_mah=usable,
        life_days=round(days, 1), life_years=round(days / 365.25, 2),
        assumptions={**asdict(c), "boot_ms": boot_ms, "sensor_ms": SENSOR_MS[kind],
                     "uart_ms": uart_ms, "rx_ms": rx_ms, "cr": f"4/{cr + 4}", "preamble": preamble,
                     "capacity_mah": capacity_mah, "derate": derate,
                     "self_discharge_pct_per_year": self_discharge_pct_per_year,
                     "sample_s": s_int or 0, "heartbeat_s": heartbeat_s},
    )


def frame_bytes_heartbeat() -> int:
    keys = frame.derive_keys(bytes(32), bytes(8))
    k = schema.K_HEARTBEAT
    return len(frame.encode(keys, bytes(8), 0xFFFFFFFF, 0xFFFFFFFF, k, frame_sizes.max_fields(k)))


@click.command("battery")
@click.option("--kind", type=click.Choice(sorted(KIND_IDS)), required=True, help="Node kind.")
@click.option("--interval", type=click.IntRange(10, 86400), default=900, show_default=True,
              help="Report interval in seconds.")
@click.option("--sf", type=click.IntRange(7, 12), default=9, show_default=True, help="LoRa spreading factor.")
@click.option("--bw", "bw_khz", type=click.Choice(["125", "250", "500"]), default="125", show_default=True,
              help="LoRa bandwidth, kHz.")
@click.option("--heartbeat", type=click.IntRange(60, 604800), default=86400, show_default=True,
              help="Heartbeat interval in seconds.")
@click.option("--sample-interval", type=click.IntRange(1, 86400), default=None,
              help="Sensor-only wakes between reports (default: 10 s for smoke, none otherwise).")
@click.option("--rx-ms", type=click.IntRange(0, 10000), default=1000, show_default=True,
              help="Receive window after each uplink.")
@click.option("--boot-ms", type=click.IntRange(50, 5000), default=350, show_default=True,
              help="Deep-sleep wake to application code (MicroPython start, .mpy imports).")
@click.option("--capacity", "capacity_mah", type=click.FloatRange(100, 100000), default=19000, show_default=True,
              help="Cell capacity in mAh (ER34615 Li-SOCl2 D cell: 19 Ah).")
@click.option("--derate", type=click.FloatRange(0.1, 1.0), default=0.85, show_default=True,
              help="Usable fraction of the capacity (temperature, pulse load, end voltage).")
@click.option("--self-discharge", "self_discharge", type=click.FloatRange(0, 20), default=1.0, show_default=True,
              help="Self-discharge, percent of capacity per year (Li-SOCl2: <= 1 %).")
@click.option("--tx-ma", type=click.FloatRange(1, 200), default=None, help="Override the LoRa TX current (mA).")
@click.option("--sleep-ua", type=click.FloatRange(0, 10000), default=None,
              help="Override the ESP32 deep-sleep current (uA).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def battery_cmd(kind: str, interval: int, sf: int, bw_khz: str, heartbeat: int, sample_interval: int | None,
                rx_ms: int, boot_ms: int, capacity_mah: float, derate: float, self_discharge: float,
                tx_ma: float | None, sleep_ua: float | None, as_json: bool) -> None:
    """Estimate a node's battery life from its configuration (model and sources: docs/firmware.md)."""
    c = Currents()
    if tx_ma is not None or sleep_ua is not None:
        c = Currents(**{**asdict(c), **({"lora_tx_ma": tx_ma} if tx_ma is not None else {}),
                        **({"esp32_deep_sleep_ua": sleep_ua} if sleep_ua is not None else {})})
    try:
        est = estimate(kind, interval, sf, bw_khz=int(bw_khz), heartbeat_s=heartbeat, sample_s=sample_interval,
                       rx_ms=rx_ms, boot_ms=boot_ms, capacity_mah=capacity_mah, derate=derate,
                       self_discharge_pct_per_year=self_discharge, currents=c)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if as_json:
        click.echo(json.dumps(asdict(est), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{kind}: report every {interval} s at SF{sf}/{bw_khz} kHz, {capacity_mah:.0f} mAh")
    t.add_column("item")
    t.add_column("value", justify="right")
    rows = [
        ("frame size", f"{est.frame_bytes} B"),
        ("time on air", f"{est.airtime_ms} ms"),
        ("charge per report wake", f"{est.report_wake_mas} mA*s"),
        ("charge per sample wake", f"{est.sample_wake_mas} mA*s"),
        ("sleep", f"{est.sleep_mah_per_day} mAh/day"),
        ("reports", f"{est.reports_mah_per_day} mAh/day"),
        ("sensor-only wakes", f"{est.samples_mah_per_day} mAh/day"),
        ("heartbeat", f"{est.heartbeat_mah_per_day} mAh/day"),
        ("self-discharge", f"{est.self_discharge_mah_per_day} mAh/day"),
        ("total", f"{est.total_mah_per_day + est.self_discharge_mah_per_day:.4f} mAh/day"),
        ("estimated life", f"{est.life_years} years ({est.life_days} days)"),
    ]
    for r in rows:
        t.add_row(*r)
    Console(file=sys.stdout).print(t)
