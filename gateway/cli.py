"""``lifeline gateway ...``: run the daemon, check its config, make its key, inspect it, manage devices.

Exit codes: 0 ok, 1 check failed (rejected records, daemon not running), 2 usage, 3 environment/config.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from lifeline.gateway.config import DEFAULT_PATH, ConfigError, GatewayConfig, load

EXIT_FAILED, EXIT_CONFIG = 1, 3
_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                              default=DEFAULT_PATH, show_default=True, help="Gateway TOML configuration.")


def _err(msg: str, code: int) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False, markup=True, soft_wrap=True)
    sys.exit(code)


def _load(path: Path) -> GatewayConfig:
    try:
        return load(path)
    except ConfigError as e:
        _err(str(e), EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def gateway() -> None:
    """Run and manage the Lifeline gateway daemon."""


@gateway.command()
@_config_option
def run(config_path: Path) -> None:
    """Run the daemon (systemd Type=notify; stops cleanly on SIGTERM/SIGINT)."""
    from lifeline.gateway.daemon import run as run_daemon

    sys.exit(run_daemon(config_path))


@gateway.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def check_config(file: Path, as_json: bool) -> None:
    """Validate FILE exactly as `run` would (adapter options too), without starting anything."""
    from lifeline.gateway.clock import SystemClock
    from lifeline.gateway.ingress import registry as adapters

    problems: list[str] = []
    cfg: GatewayConfig | None = None
    try:
        cfg = load(file)
        ctx = adapters.AdapterContext(cfg.gateway.id, cfg.gateway.state_dir, SystemClock())
        for i, spec in enumerate(cfg.ingress):
            try:
                adapters.create(spec, ctx)
            except adapters.AdapterOptionError as e:
                key = f"ingress[{i}].options" + (f".{e.option}" if e.option else "")
                raise ConfigError(str(file), key, e.reason) from None
            except adapters.AdapterUnavailable as e:
                raise ConfigError(str(file), f"ingress[{i}].type", str(e)) from None
    except ConfigError as e:
        problems.append(str(e))
    if as_json:
        out: dict[str, Any] = {"file": str(file), "ok": not problems, "errors": problems}
        if cfg is not None and not problems:
            out["gateway_id"] = cfg.gateway.id
            out["ingress"] = [f"{s.type}:{s.name}" for s in cfg.ingress]
            out["uplink_endpoints"] = [e.name for e in cfg.uplink.endpoints]
        click.echo(json.dumps(out))
    elif problems:
        for p in problems:
            Console(stderr=True).print(f"[red]invalid:[/red] {p}", highlight=False, soft_wrap=True)
    else:
        assert cfg is not None
        click.echo(f"{file}: ok (gateway {cfg.gateway.id}, {len(cfg.ingress)} ingress adapter(s), "
                   f"{len(cfg.uplink.endpoints)} uplink endpoint(s))")
    sys.exit(EXIT_CONFIG if problems else 0)


@gateway.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the private key (PEM, mode 0600).")
@click.option("--force", is_flag=True, help="Replace an existing key file (the platform must learn the new key).")
def keygen(out: Path, force: bool) -> None:
    """Create the gateway's Ed25519 signing key; prints the public key (hex) for the platform."""
    from lifeline.protocols import keys

    key = keys.generate()
    try:
        keys.save_private_key(key, out, overwrite=force)
    except FileExistsError as e:
        _err(str(e), EXIT_FAILED)
    except OSError as e:
        _err(f"cannot write {out}: {e.strerror}", EXIT_CONFIG)
    click.echo(keys.public_key_hex(key))


# ---------------------------------------------------------------------------------------------- status


def _metrics_url(cfg: GatewayConfig) -> str:
    host, port = cfg.metrics.listen, cfg.metrics.port
    if port == 0:
        try:
            host, _, p = (cfg.gateway.state_dir / "metrics.addr").read_text().strip().rpartition(":")
            port = int(p)
        except (OSError, ValueError):
            return ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def _from_db(cfg: GatewayConfig) -> dict[str, Any]:
    path = cfg.gateway.buffer_db
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        backlog = dict.fromkeys(("alarm", "event", "periodic"), 0)
        for prio, n in conn.execute("SELECT priority, count(*) FROM readings WHERE batch IS NULL GROUP BY priority"):
            backlog[("alarm", "event", "periodic")[prio]] = n
        oldest = conn.execute("SELECT min(rx_ms) FROM readings WHERE batch IS NULL").fetchone()[0]
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        chain = conn.execute("SELECT next_seq FROM chain WHERE id=0").fetchone()
    except sqlite3.Error:
        return {}
    finally:
        conn.close()
    return {"backlog": backlog, "outbox_batches": outbox, "next_seq": chain[0] if chain else 0,
            "oldest_buffered_age_s": None if oldest is None else round(time.time() - oldest / 1000, 1)}


def _summarise(parsed: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    p = "lifeline_gateway_"

    def one(name: str) -> float:
        return sum(v for _, v in parsed.get(p + name, []))

    def by(name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in parsed.get(p + name, []):
            out[labels.get(label, "")] = out.get(labels.get(label, ""), 0) + v
        return out

    return {
        "running": True,
        "backlog": by("backlog", "priority"),
        "outbox_batches": one("outbox_batches"),
        "oldest_buffered_age_s": one("oldest_buffered_age_seconds"),
        "drain_rate": one("drain_rate"),
        "drain_eta_s": one("drain_eta_seconds"),
        "uplink": {lab.get("endpoint", ""): lab.get("state", "") for lab, _ in parsed.get(p + "uplink_up", [])},
        "frames_in": by("frames_in_total", "radio"),
        "accepted": by("readings_accepted_total", "radio"),
        "out": by("readings_out_total", "lane"),
        "rejects": by("rejects_total", "reason"),
        "drops": by("buffer_drops_total", "reason"),
        "disk_bytes": by("disk_bytes", "db"),
        "next_seq": one("next_seq"),
        "devices": by("devices", "status"),
    }


@gateway.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path, as_json: bool) -> None:
    """Summarise a running daemon (its metrics endpoint), or the buffer on disk if it is not running."""
    from lifeline.gateway.metrics import parse_text

    cfg = _load(config_path)
    url = _metrics_url(cfg)
    summary: dict[str, Any]
    try:
        if not url:
            raise OSError("no metrics address")
        with urllib.request.urlopen(url, timeout=3) as resp:
            summary = _summarise(parse_text(resp.read().decode()))
    except (OSError, urllib.error.URLError, ValueError):
        summary = {"running": False, **_from_db(cfg)}
    summary["gateway_id"] = cfg.gateway.id
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        _print_status(summary)
    sys.exit(0 if summary["running"] else EXIT_FAILED)


def _print_status(s: dict[str, Any]) -> None:
    con = Console()
    state = "[green]running[/green]" if s["running"] else "[red]not running[/red] (figures from the buffer file)"
    con.print(f"[bold]gateway {s['gateway_id']}[/bold]: {state}")
    t = Table(show_header=False, box=None)
    for key, label in (("backlog", "backlog"), ("outbox_batches", "outbox batches"),
                       ("oldest_buffered_age_s", "oldest buffered (s)"), ("drain_rate", "drain rate (/s)"),
                       ("drain_eta_s", "drain ETA (s)"), ("next_seq", "next batch seq"), ("uplink", "uplink"),
                       ("frames_in", "frames in"), ("accepted", "accepted"), ("out", "out (PUBACKed)"),
                       ("rejects", "rejects"), ("drops", "drops"), ("disk_bytes", "disk bytes"),
                       ("devices", "devices")):
        if key in s:
            v = s[key]
            if isinstance(v, dict):
                v = ", ".join(f"{k}={int(x) if isinstance(x, float) and x.is_integer() else x}"
                              for k, x in v.items()) or "-"
            t.add_row(label, str(v))
    con.print(t)


# ---------------------------------------------------------------------------------------------- devices


@gateway.group()
def devices() -> None:
    """Device registry: import provisioning records, list, revoke."""


def _registry_path(config_path: Path, db: Path | None) -> tuple[Path, Path | None]:
    if db is not None:
        return db, None
    cfg = _load(config_path)
    return cfg.gateway.registry_db, cfg.gateway.trusted_technicians


_db_option = click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
                          help="Registry database (default: from the config).")


@devices.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_config_option
@_db_option
@click.option("--rekey", is_flag=True, help="Accept a new root key for an existing device (counters restart).")
@click.option("--trusted", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Trusted technician keys (JSON name -> Ed25519 public key hex); default from the config.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def import_cmd(file: Path, config_path: Path, db: Path | None, rekey: bool, trusted: Path | None,
               as_json: bool) -> None:
    """Import provisioning records (JSON lines) from FILE. Exit 1 if any record was rejected."""
    from lifeline.gateway.registry import Registry, RegistryError, load_trusted_technicians

    path, trusted_cfg = _registry_path(config_path, db)
    trusted_path = trusted or trusted_cfg
    try:
        tech = load_trusted_technicians(trusted_path) if trusted_path else None
        lines = file.read_text(encoding="utf-8").splitlines()
    except RegistryError as e:
        _err(str(e), EXIT_CONFIG)
    except (OSError, UnicodeDecodeError) as e:
        _err(f"cannot read {file}: {getattr(e, 'strerror', None) or type(e).__name__}", EXIT_CONFIG)
    try:
        with Registry(path) as reg:
            report = reg.import_lines(lines, now_ms=time.time_ns() // 1_000_000, rekey=rekey, trusted=tech)
    except (OSError, sqlite3.Error) as e:
        _err(f"registry {path}: {e}", EXIT_CONFIG)
    counts = {k: report.count(k) for k in ("added", "updated", "rekeyed", "unchanged", "rejected")}
    if as_json:
        click.echo(json.dumps({"counts": counts, "records": [
            {"line": o.line, "device_id": o.device_id, "outcome": o.outcome, "reason": o.reason}
            for o in report.outcomes]}))
    else:
        for o in report.outcomes:
            if o.outcome == "rejected":
                click.echo(f"line {o.line}: {o.device_id or '-'}: rejected: {o.reason}", err=True)
        click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))
    sys.exit(EXIT_FAILED if report.rejected else 0)


@devices.command("list")
@_config_option
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (never includes keys).")
def list_cmd(config_path: Path, db: Path | None, as_json: bool) -> None:
    """List registered devices (keys are never shown)."""
    from lifeline.gateway.registry import Registry

    path, _ = _registry_path(config_path, db)
    if not path.exists():
        _err(f"registry {path} does not exist (import devices first)", EXIT_CONFIG)
    with Registry(path) as reg:
        rows = [d.public_dict() for d in reg.all()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    t = Table(title=f"{len(rows)} device(s)")
    t.add_column("device", no_wrap=True)
    for col in ("kind", "status", "class", "installed", "life", "address", "tags"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["device_id"], r["kind"], r["status"], r["data_class"], r["install_date"],
                  f"{r['design_life_years']}y", r["location"]["address"], ",".join(r["tags"]))
    Console().print(t)


@devices.command("revoke")
@click.argument("device_id")
@_config_option
@_db_option
def revoke_cmd(device_id: str, config_path: Path, db: Path | None) -> None:
    """Revoke DEVICE_ID (16 hex): its frames are rejected from now on (a running daemon reloads within seconds)."""
    from lifeline.gateway.registry import Registry

    dev = device_id.lower()
    if len(dev) != 16 or any(c not in "0123456789abcdef" for c in dev):
        raise click.BadParameter("expected 16 hex characters", param_hint="DEVICE_ID")
    path, _ = _registry_path(config_path, db)
    with Registry(path) as reg:
        found = reg.revoke(bytes.fromhex(dev), now_ms=time.time_ns() // 1_000_000)
    if not found:
        _err(f"device {dev} is not registered", EXIT_FAILED)
    click.echo(f"{dev}: revoked")
