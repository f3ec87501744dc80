"""``lifeline demo``: a district, its gateway and the city platform on this machine, playing a short story.

One command starts a local Mosquitto as the platform's broker (and another as the site's), the real
gateway daemon as a child process (``lifeline gateway run --config FILE``, its configuration, key, rules
and SQLite files in a work directory), the reference platform sink, and a simulated district of a few
hundred nodes of every kind on all four radios (LoRa over the emulated modem's pty and the packet
forwarder's UDP, NB-IoT over MQTT, BLE over bumble), then plays: a normal day, a fire in a flat, a
platform outage (local rules act, the backlog grows), the platform back (the backlog drains, alarms
first), and a summary. docs/demo.md explains each panel.

Exit codes: 0 everything the gateway accepted reached the platform; 1 something was lost (or the hash
chain broke, or the backlog did not drain in time); 2 usage; 3 a part could not start; 130/143 stopped
by SIGINT/SIGTERM (every child process is stopped first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

EXIT_OK, EXIT_LOST, EXIT_ENV = 0, 1, 3
EXIT_SIGNAL = {int(signal.SIGINT): 130, int(signal.SIGTERM): 143}


class _Output:
    """Where the demo speaks: the live dashboard, or plain lines (``--no-tui``, not a terminal, CI)."""

    def __init__(self, *, tui: bool, to_stderr: bool, status_every_s: float) -> None:
        from rich.console import Console

        self.console = Console(stderr=to_stderr, highlight=False)
        if not self.console.is_terminal and "COLUMNS" not in os.environ:
            self.console.width = 150  # log files and CI: room for the summary table
        self.tui = tui and self.console.is_terminal
        self.status_every_s = status_every_s
        self._next_status = 0.0
        self._live: Any = None
        self.demo: Any = None

    def say(self, text: str) -> None:
        if self.tui:
            self.console.print(f"[dim]demo[/] {text}")
        else:
            self.console.print(f"[demo] {text}", markup=False, soft_wrap=True)

    def event(self, t_s: float, text: str) -> None:
        if not self.tui:
            self.console.print(f"[{t_s:6.1f}s] {text}", markup=False, soft_wrap=True)

    def show(self, snap: Any, phase: str) -> None:
        from lifeline.tools import demo_view

        if self.tui:
            if self._live is None:
                from rich.live import Live

                self._live = Live(console=self.console, auto_refresh=False, transient=False)
                self._live.start()
            self._live.update(demo_view.dashboard(snap, self.demo.story, phase, self.demo.meta), refresh=True)
            return
        now = time.monotonic()
        if now >= self._next_status:
            self._next_status = now + self.status_every_s
            self.console.print(demo_view.status_line(snap, phase), markup=False, soft_wrap=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _capture(path: Path, demo: Any, summary: dict[str, Any] | None) -> None:
    from lifeline.tools import demo_view

    parts = []
    for phase, snap in demo.captures:
        text = demo_view.capture_text(demo_view.dashboard(snap, demo.story, phase, demo.meta)).rstrip()
        parts.append(f"<!-- {phase} -->\n```text\n{text}\n```\n")
    if summary is not None:
        text = demo_view.capture_text(demo_view.summary_table(summary)).rstrip()
        parts.append(f"<!-- summary table -->\n```text\n{text}\n```\n")
    path.write_text("\n".join(parts), encoding="utf-8")


@click.command()
@click.option("--duration", type=click.FloatRange(20, 3600), default=120.0, show_default=True,
              help="Total seconds of the story (its four phases are scaled to it; the drain follows).")
@click.option("--nodes", type=click.IntRange(30, 3000), default=300, show_default=True,
              help="Nodes in the district (about; every kind and radio keeps some).")
@click.option("--seed", type=int, default=1, show_default=True, help="The district's seed (same seed, same frames).")
@click.option("--no-tui", is_flag=True, help="Plain log lines instead of the live dashboard (CI, screenshots).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout (progress goes to stderr).")
@click.option("--no-ble", is_flag=True, help="Leave out the BLE nodes (no bumble controllers).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the run's files here (configs, gateway log, databases); default: a temporary directory.")
@click.option("--capture", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a text capture of the dashboard at the end of each phase and of the summary.")
def demo(duration: float, nodes: int, seed: int, no_tui: bool, as_json: bool, no_ble: bool, workdir: Path | None,
         capture: Path | None) -> None:
    """Run the end-to-end demo: district -> gateway daemon -> platform, through a fire and an outage."""
    from lifeline.tools import demo_view
    from lifeline.tools.broker import BrokerError
    from lifeline.tools.demo_gateway import GatewayError
    from lifeline.tools.demo_run import Demo, DemoFailed, Interrupted, Options
    from lifeline.tools.demo_stack import StackError
    from lifeline.tools.platform_sink import SinkError

    own_dir = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="lifeline-demo-")) if workdir is None else workdir
    wd.mkdir(parents=True, exist_ok=True)
    # libraries' warnings (bumble, paho) go to a file, not across the dashboard
    logging.basicConfig(filename=str(wd / "demo.log"), level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = _Output(tui=not no_tui, to_stderr=as_json, status_every_s=max(2.0, duration / 20))
    code = EXIT_OK
    summary: dict[str, Any] | None = None
    received: list[int] = []
    demo_obj: Demo | None = None

    async def main() -> dict[str, Any]:
        nonlocal demo_obj
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: int) -> None:
            received.append(sig)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, int(sig))
        demo_obj = Demo(Options(duration, nodes, seed, wd, ble=not no_ble), say=out.say, show=out.show)
        out.demo = demo_obj
        demo_obj.watch.on_event = out.event
        try:
            return await demo_obj.run(stop)
        finally:
            out.close()
            left = demo_obj.stack.child_pids()
            out.say("stopped " + ", ".join(f"{k} pid {v}" for k, v in demo_obj.stack.spawned)
                    + (f"; STILL RUNNING: {left}" if left else ""))

    try:
        summary = asyncio.run(main())
    except Interrupted:
        sig = received[0] if received else signal.SIGINT
        out.console.print(f"demo: stopped by {signal.Signals(sig).name}; every child process is stopped",
                          markup=False)
        code = EXIT_SIGNAL.get(sig, 130)
    except DemoFailed as e:
        out.console.print(f"demo: FAILED: {e}", markup=False)
        code = EXIT_LOST
    except (StackError, GatewayError, BrokerError, SinkError, OSError) as e:
        out.console.print(f"demo: environment error: {e}", markup=False)
        code = EXIT_ENV
    finally:
        out.close()
        if capture is not None and demo_obj is not None:
            with contextlib.suppress(OSError):
                _capture(capture, demo_obj, summary)
        if own_dir:
            shutil.rmtree(wd, ignore_errors=True)
    if summary is not None:
        if as_json:
            click.echo(json.dumps(summary, indent=1, default=str))
        else:
            out.console.print(demo_view.summary_table(summary))
            if not summary["settled"]:
                out.console.print("[red]the backlog did not drain before the timeout[/]")
        code = EXIT_OK if summary["ok"] else EXIT_LOST
    sys.exit(code)
