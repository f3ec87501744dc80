"""``lifeline hil run``: the drills in a pytest subprocess, then the drill report (HTML, Markdown, JSON).

    lifeline hil run                                  # every drill on simulated nodes -> hil-report/
    lifeline hil run --fast --report /tmp/ci-report   # the CI subset
    lifeline hil run --dut serial:/dev/ttyUSB0 --bench-modem /dev/ttyUSB1 --bench-records records.jsonl

Exit codes: 0 every drill passed, 1 a drill failed, 2 usage, 3 environment (no Mosquitto, pytest could not
run the drills).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

DRILLS_DIR = Path(__file__).resolve().parent / "drills"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ENV = 0, 1, 2, 3


def _commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        r = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def pytest_command(*, dut: str, report_dir: Path, fast: bool, keyword: str | None, options: dict[str, Any],
                   extra: tuple[str, ...]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", str(DRILLS_DIR), "--dut", dut, "--import-mode=importlib",
           "-p", "no:cacheprovider", "-p", "no:randomly", "-q", "-rfE",
           "--hil-kpi", str(report_dir / "kpi.jsonl"), "--hil-logs", str(report_dir / "logs"),
           "--junitxml", str(report_dir / "junit.xml"), "--basetemp", str(report_dir / "work")]
    if fast:
        cmd.append("--fast")
    if keyword:
        cmd += ["-k", keyword]
    for name, value in options.items():
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    return cmd + list(extra)


def _progress(proc: subprocess.Popen[bytes], kpi_path: Path, tty: bool) -> None:
    from lifeline.hil_tests.kpi import read

    seen: set[str] = set()
    total: int | None = None
    if tty:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task("collecting drills", total=None)
            while proc.poll() is None:
                time.sleep(0.25)
                for x in read(kpi_path):
                    if x.get("type") == "session" and total is None:
                        total = len(x.get("collected", []))
                        bar.update(task, total=total, description="running drills")
                    if x.get("type") == "result" and x["nodeid"] not in seen:
                        seen.add(x["nodeid"])
                        mark = "[green]passed[/]" if x["outcome"] == "passed" else "[red]FAILED[/]"
                        bar.console.print(f"drill {x.get('drill')}: {x['nodeid'].split('::')[-1]} {mark} "
                                          f"({x.get('duration_s', 0):.1f} s)")
                        bar.update(task, completed=len(seen))
        return
    while proc.poll() is None:
        time.sleep(0.5)
        for x in read(kpi_path):
            if x.get("type") == "result" and x["nodeid"] not in seen:
                seen.add(x["nodeid"])
                click.echo(f"drill {x.get('drill')}: {x['nodeid'].split('::')[-1]} {x['outcome']} "
                           f"({x.get('duration_s', 0):.1f} s)")


@click.group("hil", context_settings={"help_option_names": ["-h", "--help"]})
def hil() -> None:
    """Hardware-in-the-loop drills for QA (simulated nodes or a bench board) and their report."""


@hil.command("run", context_settings={"ignore_unknown_options": True})
@click.option("--dut", default="sim", show_default=True,
              help="Device under test: sim (simulated nodes) or serial:PORT (a provisioned board on a bench).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("hil-report"),
              show_default=True, help="Directory for report.html, report.md, summary.json, junit.xml, logs.")
@click.option("--fast", is_flag=True, help="Only the drills marked fast (the CI subset).")
@click.option("-k", "keyword", default=None, help="Select drills by pytest keyword expression.")
@click.option("--bench-modem", default=None, help="Bench: the gateway's LoRa modem port.")
@click.option("--bench-records", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Bench: provisioning records file with the board's record.")
@click.option("--bench-firmware", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Bench: MicroPython image for the provisioning drill.")
@click.option("--bench-power", default=None, help="Bench: relay command ('{state}' becomes on/off).")
@click.option("--alarm-budget-ms", type=click.FloatRange(1, 600_000), default=None,
              help="Alarm latency budget node -> platform (p99), default 3000 ms.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def run(dut: str, report_dir: Path, fast: bool, keyword: str | None, bench_modem: str | None,
        bench_records: Path | None, bench_firmware: Path | None, bench_power: str | None,
        alarm_budget_ms: float | None, as_json: bool, pytest_args: tuple[str, ...]) -> None:
    """Run the drills (extra arguments go to pytest) and write the drill report."""
    if dut != "sim" and not (dut.startswith("serial:") and len(dut) > 7):
        raise click.UsageError(f"--dut {dut!r}: expected sim or serial:PORT")
    if dut != "sim" and bench_modem is None:
        raise click.UsageError("--dut serial:... needs --bench-modem PORT (the gateway's LoRa modem)")
    from lifeline.hil_tests import report
    from lifeline.tools.broker import BrokerError, find_mosquitto

    try:
        find_mosquitto()
    except BrokerError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_ENV)
    report_dir = report_dir.resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("kpi.jsonl", "junit.xml", "report.html", "report.md", "summary.json"):
        (report_dir / stale).unlink(missing_ok=True)
    options = {"bench_modem": bench_modem, "bench_records": bench_records, "bench_firmware": bench_firmware,
               "bench_power": bench_power, "alarm_budget_ms": alarm_budget_ms}
    cmd = pytest_command(dut=dut, report_dir=report_dir, fast=fast, keyword=keyword, options=options,
                         extra=pytest_args)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    log_path = report_dir / "pytest.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            _progress(proc, report_dir / "kpi.jsonl", tty=sys.stdout.isatty() and not as_json)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(60)
            raise
        rc = proc.wait()
    meta = {"dut": dut, "fast": fast, "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "duration_s": round(time.monotonic() - t0, 1), "commit": _commit(), "host": socket.gethostname(),
            "pytest_exit": rc}
    r = report.write(report_dir, report_dir / "kpi.jsonl", report_dir / "junit.xml", meta)
    summary = dict(r.summary(), report=str(report_dir / "report.html"), markdown=str(report_dir / "report.md"),
                   pytest_log=str(log_path), pytest_exit=rc)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(f"{'PASS' if r.passed else 'FAIL'}: {summary['passed']} of {summary['items']} drill runs passed "
                   f"({meta['duration_s']} s)")
        for name, value, _detail in r.headlines:
            click.echo(f"  {name}: {value}")
        for nodeid in summary["failed"]:
            click.echo(f"  failed: {nodeid}")
        click.echo(f"report: {report_dir / 'report.html'} (and report.md); pytest output: {log_path}")
    if not r.items:  # pytest could not even collect the drills
        click.echo(f"error: no drill ran (pytest exit {rc}); see {log_path}", err=True)
        sys.exit(EXIT_ENV)
    if rc in (2, 3, 4) and not r.passed and all(i.outcome == "not run" for i in r.items):
        sys.exit(EXIT_ENV)
    sys.exit(EXIT_OK if r.passed and rc == 0 else EXIT_FAILED)
