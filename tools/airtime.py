"""`lifeline airtime`: LoRa time on air and the duty-cycle wait, for one payload or for every frame kind.

Exit codes: 0 fits, 1 the payload is larger than the region allows at that data rate (or the SF/bandwidth
is not a data rate of the region), 2 usage error.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import click

from lifeline.protocols import frame, frame_sizes, lora_phy, schema

CODING_RATES = {"4/5": 1, "4/6": 2, "4/7": 3, "4/8": 4, "1": 1, "2": 2, "3": 3, "4": 4}
SFS = tuple(range(lora_phy.SF_MIN, lora_phy.SF_MAX + 1))


@dataclass(frozen=True, slots=True)
class KindBudget:
    """The largest frame of one kind and its airtime at every SF."""

    kind: int
    name: str
    direction: str  # "up" | "down"
    frame_bytes: int
    airtime_ms: dict[int, float]  # SF -> ms
    fits: dict[int, bool]  # SF -> frame within the region's max payload at that SF
    wait_sf12_ms: float  # duty-cycle wait after one such frame at SF12


def _duty(region: lora_phy.Region, duty_percent: float | None, downlink: bool = False) -> float:
    if duty_percent is not None:
        return duty_percent / 100.0
    return region.rx2_duty if downlink else region.uplink_duty


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 10_000 else f"{ms:.1f} ms"


def kind_budgets(region: lora_phy.Region, bw_khz: int, cr: int, duty_percent: float | None) -> list[KindBudget]:
    """Every report kind and downlink command of the registry at its maximum encoded size."""
    keys = frame.derive_keys(bytes(32), bytes(8))
    out = []
    for kind in sorted(schema.KINDS):
        down = schema.is_downlink_kind(kind)
        flags = frame.FLAG_DOWN | frame.FLAG_ACK_REQ if down else frame.FLAG_ACK_REQ
        data = frame.encode(keys, bytes(8), 0xFFFFFFFF, 0xFFFFFFFF, kind, frame_sizes.max_fields(kind), flags)
        n = len(data)
        air = {sf: lora_phy.time_on_air_ms(n, sf, bw_khz, cr) for sf in SFS}
        fits = {sf: n <= (region.max_payload(sf, bw_khz) or 0) for sf in SFS}
        wait = lora_phy.duty_cycle_wait_ms(air[12], _duty(region, duty_percent, down))
        out.append(KindBudget(kind, str(schema.KINDS[kind][0]), "down" if down else "up", n, air, fits, wait))
    return out


def _all_kinds(region: lora_phy.Region, bw: int, cr: int, duty_percent: float | None, as_json: bool) -> int:
    budgets = kind_budgets(region, bw, cr, duty_percent)
    ok = all(b.fits[sf] for b in budgets for sf in SFS if region.data_rate(sf, bw) is not None)
    if as_json:
        click.echo(json.dumps({
            "region": region.name, "bw_khz": bw, "cr": f"4/{cr + 4}", "ok": ok,
            "kinds": [
                {"kind": b.kind, "name": b.name, "direction": b.direction, "frame_bytes": b.frame_bytes,
                 "airtime_ms": {f"SF{sf}": round(ms, 3) for sf, ms in b.airtime_ms.items()},
                 "fits": {f"SF{sf}": b.fits[sf] for sf in SFS}, "wait_sf12_ms": round(b.wait_sf12_ms, 1)}
                for b in budgets
            ],
        }, indent=1))
        return 0 if ok else 1
    from rich.console import Console
    from rich.table import Table

    up_duty = _duty(region, duty_percent)
    down_duty = _duty(region, duty_percent, downlink=True)
    table = Table(
        title=f"Largest frame of every kind: time on air in ms, {region.name}, {bw} kHz, CR 4/{cr + 4}",
    )
    table.add_column("kind", justify="right")
    table.add_column("name")
    table.add_column("dir")
    table.add_column("bytes", justify="right")
    for sf in SFS:
        table.add_column(f"SF{sf}", justify="right")
    table.add_column("wait@SF12", justify="right")
    for b in budgets:
        cells = [f"{b.airtime_ms[sf]:.1f}" + ("" if b.fits[sf] or region.data_rate(sf, bw) is None else "*")
                 for sf in SFS]
        table.add_row(str(b.kind), b.name, b.direction, str(b.frame_bytes), *cells, _fmt_ms(b.wait_sf12_ms))
    console = Console(width=max(120, Console().width), soft_wrap=False)
    console.print(table)
    console.print(f"wait@SF12: silence after one such frame at SF12 (duty up {up_duty:.0%}, down {down_duty:.0%}); "
                  "* = over the data rate's payload limit.", highlight=False, soft_wrap=True)
    return 0 if ok else 1


@click.command("airtime", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--region", "region_name", type=click.Choice(sorted(lora_phy.REGIONS), case_sensitive=False),
              default="CN470", show_default=True, help="Regional plan (payload limits, duty cycle).")
@click.option("--sf", type=click.IntRange(lora_phy.SF_MIN, lora_phy.SF_MAX), help="Spreading factor 7..12.")
@click.option("--bw", type=click.Choice(["125", "250", "500"]), default="125", show_default=True,
              help="Bandwidth in kHz.")
@click.option("--payload", type=click.IntRange(0, lora_phy.MAX_PHY_PAYLOAD), help="LoRa payload in bytes.")
@click.option("--cr", type=click.Choice(list(CODING_RATES)), default="4/5", show_default=True,
              help="Coding rate (4/5..4/8).")
@click.option("--preamble", type=click.IntRange(6, 65535), default=8, show_default=True,
              help="Programmed preamble length in symbols.")
@click.option("--duty-percent", type=click.FloatRange(0.0, 100.0, min_open=True), default=None,
              help="Duty-cycle limit in percent (default: the region's; CN470: Lifeline's 1 %).")
@click.option("--all-kinds", is_flag=True, help="Table of every frame kind at its largest size, SF7..SF12.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def airtime_cmd(region_name: str, sf: int | None, bw: str, payload: int | None, cr: str, preamble: int,
                duty_percent: float | None, all_kinds: bool, as_json: bool) -> None:
    """LoRa time on air (Semtech SX127x/SX126x formula) and the duty-cycle wait after one packet.

    Exit 0 when the payload fits the region at that data rate, 1 when it does not, 2 on usage errors.
    """
    region = lora_phy.region(region_name)
    if duty_percent is not None:
        region = region.with_duty(duty_percent / 100.0)
    bw_khz = int(bw)
    cr_i = CODING_RATES[cr]
    if all_kinds:
        sys.exit(_all_kinds(region, bw_khz, cr_i, duty_percent, as_json))
    if sf is None or payload is None:
        raise click.UsageError("--sf and --payload are required (or use --all-kinds)")
    toa = lora_phy.time_on_air_ms(payload, sf, bw_khz, cr_i, preamble=preamble)
    duty = _duty(region, duty_percent)
    wait = lora_phy.duty_cycle_wait_ms(toa, duty)
    dr = region.data_rate(sf, bw_khz)
    fits = dr is not None and payload <= dr.max_payload
    result: dict[str, Any] = {
        "region": region.name,
        "sf": sf,
        "bw_khz": bw_khz,
        "cr": f"4/{cr_i + 4}",
        "preamble": preamble,
        "payload_bytes": payload,
        "low_data_rate_optimize": lora_phy.low_data_rate_optimize(sf, bw_khz),
        "symbol_ms": lora_phy.symbol_time_ms(sf, bw_khz),
        "time_on_air_ms": round(toa, 3),
        "duty_cycle": duty,
        "duty_cycle_wait_ms": round(wait, 3),
        "data_rate": None if dr is None else f"DR{dr.dr}",
        "max_payload_bytes": None if dr is None else dr.max_payload,
        "fits": fits,
    }
    if as_json:
        click.echo(json.dumps(result, indent=1))
    else:
        click.echo(f"{region.name} SF{sf} {bw_khz} kHz CR {result['cr']}, {payload} B payload, "
                   f"preamble {preamble}{', LDRO on' if result['low_data_rate_optimize'] else ''}")
        click.echo(f"  time on air        {toa:.3f} ms")
        click.echo(f"  duty cycle         {duty:.2%} -> wait {_fmt_ms(wait)} before the next packet")
        if dr is None:
            click.echo(f"  not a data rate of {region.name}: SF{sf} at {bw_khz} kHz", err=True)
        else:
            verdict = "fits" if fits else f"TOO LARGE by {payload - dr.max_payload} B"
            click.echo(f"  DR{dr.dr} max payload  {dr.max_payload} B: {verdict}")
    sys.exit(0 if fits else 1)
