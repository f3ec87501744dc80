"""``lifeline sim``: experiments on the virtual air (and, later, the fleet simulator's ``run``)."""

from __future__ import annotations

import json
import sys

import click

from lifeline.protocols import lora_phy


def _node_counts(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[int]:
    counts: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 1 <= int(part) <= 100_000:
                raise click.BadParameter(f"{part!r} is not a node count 1..100000", ctx, param)
            counts.append(int(part))
    if not counts:
        raise click.BadParameter("give at least one node count", ctx, param)
    return counts


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def sim() -> None:
    """Simulations on Lifeline's virtual LoRa air (deterministic, virtual time)."""


@sim.command()
@click.option("--sf", type=click.IntRange(lora_phy.SF_MIN, lora_phy.SF_MAX), default=7, show_default=True,
              help="Spreading factor of every node (125 kHz).")
@click.option("--nodes", "node_counts", multiple=True, required=True, callback=_node_counts,
              help="Node counts to simulate: repeat the option or separate with commas (--nodes 10,50,100).")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
              help="Mean seconds between a node's packets (Poisson).")
@click.option("--payload", "payload_len", type=click.IntRange(1, 255), default=20, show_default=True,
              help="Packet length in bytes (a Lifeline frame is at most 51).")
@click.option("--packets", type=click.IntRange(100, 10_000_000), default=5000, show_default=True,
              help="Packets sent per node count (all nodes together).")
@click.option("--capture/--no-capture", default=False, show_default=True,
              help="Let the stronger of two overlapping packets survive (6 dB capture).")
@click.option("--region", type=click.Choice(sorted(lora_phy.REGIONS)), default="EU868", show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def capacity(sf: int, node_counts: list[int], interval_s: float, payload_len: int, packets: int, capture: bool,
             region: str, seed: int, as_json: bool) -> None:
    """Delivery ratio of N nodes sharing one channel, against pure ALOHA exp(-2G), G = N*ToA/interval."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from lifeline.sim_devices.capacity import CapacityPoint, run_point

    console = Console(stderr=True)
    points: list[CapacityPoint] = []
    with Progress(console=console, transient=True, disable=as_json or not console.is_terminal) as progress:
        task = progress.add_task("simulating", total=len(node_counts))
        for n in node_counts:
            points.append(run_point(n, sf=sf, interval_s=interval_s, payload_len=payload_len, packets=packets,
                                    capture=capture, seed=seed, region=region))
            progress.advance(task)
    if as_json:
        out = {"sf": sf, "interval_s": interval_s, "payload": payload_len, "capture": capture,
               "region": region, "seed": seed, "points": [p.as_dict() for p in points]}
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(title=f"SF{sf}/125 kHz, {payload_len} B (ToA {points[0].toa_ms:.1f} ms), mean interval "
                        f"{interval_s:g} s, capture {'on' if capture else 'off'}")
    for column in ("nodes", "G", "sent", "delivered", "ratio", "ALOHA exp(-2G)", "diff"):
        table.add_column(column, justify="right")
    for p in points:
        table.add_row(str(p.nodes), f"{p.offered_load:.3f}", str(p.sent), str(p.delivered), f"{p.ratio:.3f}",
                      f"{p.aloha:.3f}", f"{p.ratio - p.aloha:+.3f}")
    Console(file=sys.stdout).print(table)
