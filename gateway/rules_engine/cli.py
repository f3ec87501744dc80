"""``lifeline rules check|test`` and ``lifeline gateway mode``.

Exit codes: 0 ok, 1 the check failed (bad replay lines), 2 usage, 3 invalid rule files / config / state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from lifeline.gateway.rules_engine import MODES

if TYPE_CHECKING:  # the model is loaded with the rules (not by every `lifeline` command, the daemon included)
    from lifeline.gateway.rules_engine import model as m

EXIT_FAILED, EXIT_CONFIG = 1, 3


def _err(msg: str, code: int) -> NoReturn:
    from rich.console import Console  # only when there is an error to print (keeps the daemon's RSS down)

    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(code)


def _load(files: tuple[Path, ...]) -> m.RuleSet:
    from lifeline.gateway.rules_engine.loader import RulesError, load_files

    try:
        return load_files(files)
    except RulesError as e:
        _err(str(e), EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def rules() -> None:
    """Local failover rules of the gateway: validate rule files, dry-run them against recordings."""


@rules.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def check(files: tuple[Path, ...], as_json: bool) -> None:
    """Validate rule FILES as the daemon would (exit 3 with FILE:LINE: KEY: REASON when invalid)."""
    from lifeline.gateway.rules_engine.loader import RulesError, load_files

    try:
        rs = load_files(files)
    except RulesError as e:
        if as_json:
            click.echo(json.dumps({"ok": False, "file": e.file, "line": e.line, "key": e.key, "reason": e.reason,
                                   "error": str(e)}))
            sys.exit(EXIT_CONFIG)
        _err(str(e), EXIT_CONFIG)
    summary = {"ok": True, "rules": [r.name for r in rs.rules], "outputs": sorted(rs.outputs),
               "contacts": sorted(rs.contacts), "digest": rs.digest[:8].hex()}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"ok: {len(rs.rules)} rule(s), {len(rs.outputs)} output(s), {len(rs.contacts)} contact group(s)")


def _devices(path: Path | None) -> dict[bytes, Any]:
    """Device attributes from provisioning records (JSON lines) or a registry database."""
    from lifeline.gateway.rules_engine.engine import DeviceAttrs
    from lifeline.gateway.rules_engine.service import attrs_from_registry
    from lifeline.protocols import schema

    if path is None:
        return {}
    if path.suffix in (".db", ".sqlite"):
        return dict(attrs_from_registry(path))
    out: dict[bytes, DeviceAttrs] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        _err(f"cannot read {path}: {type(e).__name__}", EXIT_CONFIG)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            loc = d.get("location", {})
            cls = d.get("data_class", "internal")
            out[bytes.fromhex(d["device_id"])] = DeviceAttrs(
                d["kind"], loc.get("spatial_unit", ""), schema.CLASS_NAMES.index(cls) if cls in schema.CLASS_NAMES
                else 1, frozenset(d.get("tags", ())), loc.get("address", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            _err(f"{path}:{n}: not a provisioning record", EXIT_CONFIG)
    return out


@rules.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replay", "replay_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Recorded or simulated readings (JSON lines, docs/rules.md \"Replay files\"); - for stdin.")
@click.option("--devices", "devices_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Device attributes: provisioning records (JSON lines) or a registry .db.")
@click.option("--tail", default="0s", show_default=True, help="Let time run on after the last line (e.g. 30m).")
@click.option("--tick", default="1s", show_default=True, help="Time step of the virtual clock.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per outcome.")
def test(files: tuple[Path, ...], replay_file: Path, devices_file: Path | None, tail: str, tick: str,
         as_json: bool) -> None:
    """Dry-run rule FILES against a recording: print what would have fired, cleared and acted, and when.

    Nothing is sent: actions are listed with their rendered topic, line, recipients and text, and
    suppressed ones with the reason (cooldown, duplicate, rate_limited)."""
    from lifeline.gateway.rules_engine import timeparse
    from lifeline.gateway.rules_engine.replay import DryRun, Outcome, iso, read_steps

    rs = _load(files)
    try:
        tail_ms = timeparse.duration_ms(tail)
        tick_ms = max(1, timeparse.duration_ms(tick))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    try:
        text = sys.stdin.read() if str(replay_file) == "-" else replay_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        _err(f"cannot read {replay_file}: {type(e).__name__}", EXIT_CONFIG)
    steps, bad = read_steps(text.splitlines())
    for n, reason in bad:
        click.echo(f"{replay_file}:{n}: skipped: {reason}", err=True)

    def show(o: Outcome) -> None:
        if as_json:
            click.echo(json.dumps(o.to_json()))
            return
        who = " ".join(x for x in (o.rule, o.device) if x)
        click.echo(f"{iso(o.t_ms)}  {o.what:<10} {who}  {o.detail}".rstrip())

    dry = DryRun(rs, _devices(devices_file), tick_ms=tick_ms, on_outcome=show)
    outcomes = dry.run(steps, tail_ms)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.what] = counts.get(o.what, 0) + 1
    if as_json:
        click.echo(json.dumps({"summary": counts, "lines": len(steps), "rejected": len(bad)}))
    else:
        click.echo(f"{len(steps)} line(s) replayed, {len(bad)} rejected: "
                   + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing fired"))
    sys.exit(EXIT_FAILED if bad else 0)


# ------------------------------------------------------------------------------- lifeline gateway mode


@click.command("mode")
@click.argument("mode", required=False, type=click.Choice(MODES))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("/etc/lifeline/gateway.toml"), show_default=True, help="Gateway TOML configuration.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def mode_cmd(mode: str | None, config_path: Path, as_json: bool) -> None:
    """Show the operating mode, or switch it (daily, holiday, emergency); the daemon applies it within a
    second and reports the change to the platform."""
    import sqlite3

    from lifeline.gateway.config import ConfigError, load
    from lifeline.gateway.rules_engine import state

    try:
        cfg = load(config_path)
    except ConfigError as e:
        _err(str(e), EXIT_CONFIG)
    path = cfg.rules.state_db
    try:
        if mode is not None:
            req = state.request_mode(path, mode, "local")
            out: dict[str, Any] = {"requested": mode, "request": req}
        else:
            if not path.exists():
                _err(f"{path} does not exist (the daemon has not run with rules yet)", EXIT_CONFIG)
            out = state.read_mode(path)
    except (OSError, sqlite3.Error) as e:
        _err(f"rules state {path}: {e}", EXIT_CONFIG)
    if as_json:
        click.echo(json.dumps(out))
    elif mode is not None:
        click.echo(f"mode {mode} requested; the daemon applies it within a second")
    else:
        click.echo(f"mode: {out['mode']}" + (f" (requested: {out['pending']})" if out.get("pending") else ""))
