"""``lifeline sim``: experiments on the virtual air (``capacity``) and the fleet simulator (``run``)."""

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


def _host_port(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise click.BadParameter(f"{value!r} is not host:port", ctx, param)
    return (host or "127.0.0.1", int(port))


@sim.command("run")
@click.argument("scenario_name", metavar="SCENARIO")
@click.option("--nodes", type=click.IntRange(1, 1_000_000), default=None,
              help="Scale the fleet to about N nodes (groups keep their proportions).")
@click.option("--speed", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Virtual seconds per real second (1 = real time). Default: as fast as possible.")
@click.option("--seed", type=int, default=None, help="Override the scenario's seed.")
@click.option("--duration", default=None, help="Virtual duration (e.g. 90m, 24h); default: the scenario's.")
@click.option("--short", is_flag=True, help="Use the scenario's shortened test duration.")
@click.option("--broker", callback=_host_port, default=None, metavar="HOST:PORT",
              help="Node broker of a running gateway: NB-IoT frames are published there.")
@click.option("--serial", "serial_path", type=click.Path(dir_okay=False), default=None, metavar="PTY",
              help="Create the emulated RAK3172 at this path (a running gateway's lora-serial port).")
@click.option("--udp", callback=_host_port, default=None, metavar="HOST:PORT",
              help="A running gateway's lora-udp port: the emulated packet forwarder sends there.")
@click.option("--testbed", "testbed_dir", type=click.Path(file_okay=False), default=None,
              help="Start a whole deployment here (gateway daemon in-process, brokers, platform sink) and judge "
                   "the scenario's expectations against what the platform stored.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def run_cmd(scenario_name: str, nodes: int | None, speed: float | None, seed: int | None, duration: str | None,
            short: bool, broker: tuple[str, int] | None, serial_path: str | None, udp: tuple[str, int] | None,
            testbed_dir: str | None, list_only: bool, as_json: bool) -> None:
    """Run a fleet scenario (a name from sim_devices/scenarios or a TOML file): real firmware on every
    node, physics, faults, virtual time. Without --broker/--serial/--udp/--testbed, frames are only judged
    on the virtual air and counted (capacity planning). Exit 1 when an expectation fails."""
    import asyncio
    import time
    from pathlib import Path

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from lifeline.sim_devices import runner, scenario

    console = Console(stderr=True)
    if list_only or scenario_name == "list":
        names = scenario.available()
        click.echo(json.dumps(names) if as_json else "\n".join(names))
        return
    try:
        sc = scenario.load(scenario_name, nodes=nodes, seed=seed)
        total_s = (scenario.seconds(duration, "--duration") if duration is not None
                   else sc.test_duration_s if short else sc.duration_s)
    except scenario.ScenarioError as e:
        raise click.UsageError(str(e)) from None
    external = broker is not None or serial_path is not None or udp is not None

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=as_json or not console.is_terminal) as bar:
        task = bar.add_task(sc.name, total=total_s, status="")

        def progress(fleet: object) -> None:
            f = fleet  # a Fleet
            bar.update(task, completed=f.now_ms / 1000.0,  # type: ignore[attr-defined]
                       status=f"{f.counters['frames_sent']} frames, {f.counters['alarm_frames']} alarm frames")  # type: ignore[attr-defined]

        async def go() -> dict[str, object]:
            if testbed_dir is not None:
                from lifeline.sim_devices import testbed

                _, _, summary = await testbed.run_scenario(sc, Path(testbed_dir), duration_s=total_s,
                                                           speed=speed, progress=progress)
                return summary
            fleet, _records = runner.build(sc, record_frames=True)
            wall0 = time.monotonic()
            links = None
            if external:
                from lifeline.sim_devices.links import GatewayLinks

                links = GatewayLinks(fleet, serial_path=Path(serial_path) if serial_path else None, udp=udp,
                                     broker=broker, site=sc.gateway_site)
                await links.start()
            else:
                from lifeline.sim_devices.links import VirtualReceivers

                VirtualReceivers(fleet, *sc.gateway_site)
            from lifeline.sim_devices.faults import Environment

            env = Environment(publish_raw=links.bridge.raw if links is not None and links.bridge else None)
            attacker = runner.schedule_faults(sc, fleet, env)
            fleet.start()
            try:
                cpu = await runner.run(fleet, total_s, speed=speed, progress=progress, cooperative=external)
            finally:
                if links is not None:
                    await links.stop()
            outcome = runner.judge(sc, fleet, attacker=attacker)
            extra = {"mode": "gateway" if external else "frames-only"}
            if links is not None:
                extra["links"] = links.counters()
            return runner.summarize(fleet, outcome, cpu, time.monotonic() - wall0, extra)

        try:
            summary = asyncio.run(go())
        except (OSError, TimeoutError) as e:
            console.print(f"[red]environment error:[/] {e}")
            sys.exit(3)
    summary = {"scenario": sc.name, **summary}
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary)
    if summary.get("ok") is False:
        sys.exit(1)


def _print_summary(s: dict[str, object]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(file=sys.stdout)
    out.print(f"[bold]{s['scenario']}[/]: {s['nodes']} nodes, {s['virtual_s']} virtual s in {s['wall_s']} s "
              f"(x{s.get('speed')}), CPU {s['cpu_s']} s = {s['cpu_per_node_hour_s']} s per node-hour")
    t = Table(title="frames by kind and radio")
    for col in ("kind", "radio", "sent", "heard"):
        t.add_column(col, justify="right" if col in ("sent", "heard") else "left")
    for row in s["by_kind_radio"]:  # type: ignore[attr-defined]
        t.add_row(row["kind"], row["radio"], str(row["sent"]), str(row["heard"]))
    t.add_row("[bold]total", "", str(s["frames_sent"]), str(s["frames_heard"]))
    out.print(t)
    alarms = s.get("alarms_raised") or []
    out.print(f"alarms raised: {len(alarms)}" + "".join(  # type: ignore[arg-type]
        f"\n  {a['t_s']:>9.1f} s  {a['node']}  {a['cause']}" for a in alarms))  # type: ignore[attr-defined]
    for key in ("platform_records", "gateway_rejects", "links"):
        if key in s:
            out.print(f"{key}: {s[key]}")
    exp = s.get("expectations") or []
    if exp:
        e = Table(title="expectations")
        e.add_column("check")
        e.add_column("ok")
        e.add_column("detail")
        for f in exp:  # type: ignore[attr-defined]
            e.add_row(f["check"], "[green]yes[/]" if f["ok"] else "[red]NO[/]", f["detail"])
        out.print(e)
    out.print(f"digest {s['digest']}")
