"""``lifeline gateway ...``: run the daemon, check its config, make its key, inspect it, manage devices.

Exit codes: 0 ok, 1 check failed (rejected records, daemon not running), 2 usage, 3 environment/config.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:  # rich and urllib load only for the commands that print or fetch (the daemon's RSS)
    from rich.console import Console

    from lifeline.gateway.registry import Registry

from lifeline.gateway.config import DEFAULT_PATH, ConfigError, GatewayConfig, load

EXIT_FAILED, EXIT_CONFIG = 1, 3
T = TypeVar("T")
_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                              default=DEFAULT_PATH, show_default=True, help="Gateway TOML configuration.")


def _console(**kw: Any) -> Console:
    from rich.console import Console

    return Console(**kw)


def _err(msg: str, code: int) -> NoReturn:
    _console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False, markup=True, soft_wrap=True)
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
        if cfg.rules.files:
            from lifeline.gateway.rules_engine.loader import RulesError, load_files

            try:
                load_files(cfg.rules.files)
            except RulesError as e:
                problems.append(str(e))
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
            _console(stderr=True).print(f"[red]invalid:[/red] {p}", highlight=False, soft_wrap=True)
    else:
        assert cfg is not None
        click.echo(f"{file}: ok (gateway {cfg.gateway.id}, {len(cfg.ingress)} ingress adapter(s), "
                   f"{len(cfg.uplink.endpoints)} uplink endpoint(s))")
    sys.exit(EXIT_CONFIG if problems else 0)


@gateway.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the private key (PEM, mode 0600).")
@click.option("--force", is_flag=True, help="Replace an existing key file (the platform must learn the new key).")
@click.option("--suite", type=click.Choice(["intl", "sm"]), default="intl", show_default=True,
              help="intl: Ed25519; sm: SM2 (with SM3). Set the same [gateway] suite in gateway.toml.")
def keygen(out: Path, force: bool, suite: str) -> None:
    """Create the gateway's signing key; prints the public key (hex) for the platform (Ed25519: 32 bytes;
    SM2: 65 bytes 04||x||y)."""
    from lifeline.protocols import keys

    key = keys.generate_for(suite)
    try:
        keys.save_private_key(key, out, overwrite=force)
    except FileExistsError as e:
        _err(str(e), EXIT_FAILED)
    except OSError as e:
        _err(f"cannot write {out}: {e.strerror}", EXIT_CONFIG)
    click.echo(keys.public_key_hex(key))


@gateway.command()
@_config_option
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the request here (PEM) instead of standard output.")
@click.option("--json", "as_json", is_flag=True, help="JSON: gateway id, suite, the request PEM.")
def csr(config_path: Path, out: Path | None, as_json: bool) -> None:
    """Write a certificate signing request (PKCS#10 PEM) for the gateway's signing key, for the city CA.

    Subject CN and SAN dNSName are the gateway id; an SM2 key's request is signed with SM2-with-SM3
    (1.2.156.10197.1.501). The key is the one the daemon signs with (key_file, or [keys.pkcs11]
    signing_key_label: the token signs the request). Install the issued chain as [gateway] certificate_file
    (docs/operations.md)."""
    from lifeline.gateway.keystore import KeyStoreError, open_keys
    from lifeline.protocols import gwcert

    cfg = _load(config_path)
    try:
        opened = open_keys(cfg, signer=True, kek=False)  # the key file, or the key in the PKCS#11 token
    except KeyStoreError as e:
        _err(str(e), EXIT_CONFIG)
    try:
        assert opened.signer is not None
        pem = gwcert.make_csr(opened.signer, cfg.gateway.id)
    except gwcert.CertError as e:
        _err(f"{opened.signer_source}: {e}", EXIT_CONFIG)
    finally:
        opened.close()
    if out is not None:
        try:
            out.write_bytes(pem)
        except OSError as e:
            _err(f"cannot write {out}: {e.strerror}", EXIT_CONFIG)
    if as_json:
        click.echo(json.dumps({"gateway_id": cfg.gateway.id, "suite": cfg.gateway.suite,
                               "out": str(out) if out else None, "csr": pem.decode("ascii")}))
    elif out is None:
        click.echo(pem.decode("ascii"), nl=False)
    else:
        click.echo(f"{out}: certificate request for {cfg.gateway.id} (suite {cfg.gateway.suite})")


@gateway.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the key-encryption key (mode 0600).")
@click.option("--suite", type=click.Choice(["intl", "sm"]), default="intl", show_default=True,
              help="intl: AES-256-GCM; sm: SM4-GCM.")
@click.option("--force", is_flag=True, help="Replace an existing file (root keys wrapped under it become unreadable).")
def kekgen(out: Path, suite: str, force: bool) -> None:
    """Create a registry key-encryption key file; set [keys] kek_file to it (docs/keys.md)."""
    from lifeline.gateway import kek as keywrap

    try:
        keywrap.generate_file(out, suite, overwrite=force)
    except FileExistsError as e:
        _err(str(e), EXIT_FAILED)
    except OSError as e:
        _err(f"cannot write {out}: {e.strerror}", EXIT_CONFIG)
    click.echo(f"{out}: {keywrap.CIPHER_NAMES[keywrap.SUITES[suite]]} key-encryption key (0600)")


@gateway.command("token-keys")
@_config_option
@click.option("--import-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Put this Ed25519 PEM key into the token as the signing key instead of generating one "
                   "(the platform keeps trusting the same public key; delete the file afterwards).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def token_keys(config_path: Path, import_key: Path | None, as_json: bool) -> None:
    """Create the keys [keys.pkcs11] names that the token does not hold yet (signing key, registry KEK)."""
    from lifeline.gateway import hsm
    from lifeline.protocols import keys

    cfg = _load(config_path)
    t = cfg.keys.pkcs11
    if t is None:
        _err(f"{config_path}: keys.pkcs11: not configured", EXIT_CONFIG)
    out: dict[str, Any] = {"token": t.token_label}
    try:
        token = hsm.Token.from_config(t, rw=True)
    except hsm.TokenError as e:
        _err(str(e), EXIT_CONFIG)
    try:
        if t.signing_key_label is not None:
            try:
                pub = token.signer(t.signing_key_label).public_key()
                out["signing_key"] = "present"
            except hsm.TokenError as e:
                if not e.missing:
                    raise
                if import_key is not None:
                    pub = token.import_signing_key(t.signing_key_label, keys.load_private_key(import_key))
                    out["signing_key"] = "imported"
                else:
                    pub = token.generate_signing_key(t.signing_key_label)
                    out["signing_key"] = "created"
            out["public_key"] = keys.public_key_hex(pub)
        if t.kek_label is not None:
            try:
                token.kek(t.kek_label)
                out["kek"] = "present"
            except hsm.TokenError as e:
                if not e.missing:
                    raise
                token.generate_kek(t.kek_label)
                out["kek"] = "created"
    except (hsm.TokenError, keys.KeyFileError) as e:
        _err(str(e), EXIT_CONFIG)
    finally:
        token.close()
    if as_json:
        click.echo(json.dumps(out))
        return
    for k in ("signing_key", "kek"):
        if k in out:
            click.echo(f"{k}: {out[k]}")
    if "public_key" in out:
        click.echo(f"public key for the platform: {out['public_key']}")


@gateway.command("init")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("/etc/lifeline"),
              show_default=True, help="Where gateway.toml, gateway.key and status.token go.")
@click.option("--id", "gateway_id", default=None, help="Gateway id for a new config (default gw-<hostname>).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="state_dir for a new config (default /var/lib/lifeline).")
@click.option("--owner", default=None, help="Daemon user owning the key, token and state dir (root only).")
@click.option("--force", is_flag=True, help="Rewrite an existing config (the key and token are never replaced).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def init_cmd(directory: Path, gateway_id: str | None, state_dir: Path | None, owner: str | None, force: bool,
             as_json: bool) -> None:
    """Create a commented starter config, the signing key and the status page token (only what is missing)."""
    from lifeline.gateway.init import InitError, init, next_steps

    try:
        r = init(directory, gateway_id=gateway_id, state_dir=state_dir, owner=owner, force=force)
    except InitError as e:
        _err(str(e), e.code)
    if as_json:
        click.echo(json.dumps(r.as_json(), sort_keys=True))
        return
    for path, new, what in ((r.config, r.config_written, "config"), (r.key, r.key_created, "signing key (0600)"),
                            (r.token, r.token_created, "status page token (0600)")):
        click.echo(f"{'created' if new else 'kept   '} {path}  {what}")
    click.echo(f"gateway {r.gateway_id}, public key {r.public_key_hex}\n\nNext steps:")
    for i, step in enumerate(next_steps(r, owner or "lifeline"), 1):
        click.echo(f"  {i}. {step}")


# ---------------------------------------------------------------------------------------------- status


def _addr_url(cfg: GatewayConfig, listen: str, port: int, addr_file: str, path: str) -> str:
    host = listen
    if port == 0:
        try:
            host, _, p = (cfg.gateway.state_dir / addr_file).read_text().strip().rpartition(":")
            port = int(p)
        except (OSError, ValueError):
            return ""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}{path}"


def _metrics_url(cfg: GatewayConfig) -> str:
    return _addr_url(cfg, cfg.metrics.listen, cfg.metrics.port, "metrics.addr", "/metrics")


def _disk(cfg: GatewayConfig) -> dict[str, Any]:
    import contextlib
    import shutil

    def size(path: Path) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += Path(str(path) + suffix).stat().st_size
        return total

    out: dict[str, Any] = {"buffer_bytes": size(cfg.gateway.buffer_db), "registry_bytes": size(cfg.gateway.registry_db),
                           "quota_bytes": cfg.buffer.quota_mb * 1024 * 1024, "over_quota": False,
                           "free_bytes": None, "total_bytes": None}
    with contextlib.suppress(OSError):
        u = shutil.disk_usage(cfg.gateway.state_dir)
        out["free_bytes"], out["total_bytes"] = u.free, u.total
    return out


def _from_db(cfg: GatewayConfig) -> dict[str, Any]:
    path = cfg.gateway.buffer_db
    if not path.exists():
        return {"disk": _disk(cfg)}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        backlog = dict.fromkeys(("alarm", "event", "periodic"), 0)
        for prio, n in conn.execute("SELECT priority, count(*) FROM readings WHERE batch IS NULL GROUP BY priority"):
            backlog[("alarm", "event", "periodic")[prio]] = n
        oldest = conn.execute("SELECT min(rx_ms) FROM readings WHERE batch IS NULL").fetchone()[0]
        outbox = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        chain = conn.execute("SELECT next_seq FROM chain WHERE id=0").fetchone()
    except sqlite3.Error:
        return {"disk": _disk(cfg)}
    finally:
        conn.close()
    return {"backlog": backlog, "outbox_batches": outbox, "next_seq": chain[0] if chain else 0,
            "oldest_buffered_age_s": None if oldest is None else round(time.time() - oldest / 1000, 1),
            "disk": _disk(cfg)}


def _summarise(parsed: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    from lifeline.gateway.statusinfo import summarise

    return summarise(parsed)


def _status_page_facts(cfg: GatewayConfig) -> tuple[str, dict[str, Any]]:
    """(state, facts) from the running daemon's status page: last alarms and devices heard. The token
    file is readable by root and the daemon user only; others get ("no_token_access", {})."""
    from lifeline.gateway.statuspage import StatusPageError, load_token

    sp = cfg.status_page
    if sp.token_file is None:
        return "off", {}
    try:
        token = load_token(sp.token_file)
    except StatusPageError:
        return "no_token_access", {}
    url = _addr_url(cfg, sp.listen, sp.port, "status.addr", "/status.json?limit=0")
    if not url:
        return "unreachable", {}
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            facts = json.loads(resp.read().decode())
    except (OSError, urllib.error.URLError, ValueError):
        return "unreachable", {}
    return "ok", {"last_alarms": facts.get("last_alarms", []), "devices_heard": facts.get("devices_heard"),
                  "open_alarms": facts.get("open_alarms", []), "active_firings": facts.get("active_firings", [])}


@gateway.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path, as_json: bool) -> None:
    """Summarise a running daemon (its metrics endpoint), or the buffer on disk if it is not running.

    Health, radios, backlog, uplink, last alarms (from the status page; needs read access to its token
    file: run as root or the daemon user) and disk.
    """
    import urllib.error
    import urllib.request

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
    if summary["running"]:
        state, facts = _status_page_facts(cfg)
        summary["status_page"] = state
        summary["last_alarms"] = facts.get("last_alarms")
        summary["devices_heard"] = facts.get("devices_heard")
        summary["open_alarms"] = facts.get("open_alarms")
        summary["active_firings"] = facts.get("active_firings")
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        _print_status(summary)
    sys.exit(0 if summary["running"] else EXIT_FAILED)


def _print_status(s: dict[str, Any]) -> None:
    from lifeline.gateway.statusinfo import age_text, size_text

    def n(v: Any) -> str:
        return f"{int(v):,}" if isinstance(v, int | float) and float(v).is_integer() else str(v)

    def joined(d: dict[str, Any]) -> str:
        return " · ".join(f"{k} {n(v)}" for k, v in d.items() if v) or "-"

    from rich.table import Table

    con = _console(highlight=False)
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    if not s["running"]:
        con.print(f"[bold]gateway {s['gateway_id']}[/bold]  [red]● not running[/red] (figures from the buffer file)")
    else:
        health = s.get("health", {})
        stale = health.get("stale_stages", [])
        hl = "[green]ok[/green]" if not stale else f"[red]STALLED: {', '.join(stale)}[/red]"
        up = s.get("uplink", {})
        ul = ("[green]connected[/green]" if s.get("uplink_connected") else "[yellow]down, buffering[/yellow]") \
            if up else "[yellow]none configured, buffering[/yellow]"
        con.print(f"[bold]gateway {s['gateway_id']}[/bold]  [green]● running[/green]  health {hl}  uplink {ul}")
        stages = health.get("stages", {})
        t.add_row("health", f"{len(stages) - len(stale)}/{len(stages)} stages beating" + (
            "" if not stale else " · " + ", ".join(f"{k} {age_text(stages[k])} ago" for k in stale)))
        radios = s.get("radios", {})
        for i, (name, r) in enumerate(sorted(radios.items())):
            frames = f"{n(r['frames_in'])} frame" + ("" if r["frames_in"] == 1 else "s")
            t.add_row("radios" if i == 0 else "", f"{name}: {frames} · {n(r['accepted'])} accepted"
                      f" · {n(r['duplicates'])} dupes · {n(r['rejected'])} rejected  [dim]"
                      f"{', '.join(sorted(r['adapters']))}[/dim]")
        if not radios:
            t.add_row("radios", "no frames yet")
    b = s.get("backlog") or {}
    if b or "outbox_batches" in s:
        bl = f"{n(b.get('alarm', 0))} alarm · {n(b.get('event', 0))} event · {n(b.get('periodic', 0))} periodic"
        bl += f" · outbox {n(s.get('outbox_batches', 0))}"
        if any(b.values()):
            bl += f" · oldest {age_text(s.get('oldest_buffered_age_s'))}"
        if s["running"]:
            eta = s.get("drain_eta_s")
            bl += f" · drain {n(s.get('drain_rate', 0))}/s" + (", not draining" if eta == -1 else
                                                                 f", ETA {age_text(eta)}" if eta else "")
        t.add_row("backlog", bl)
    if s["running"]:
        up = s.get("uplink", {})
        t.add_row("uplink", " · ".join(f"{k} [{'green' if v == 'connected' else 'yellow'}]{v}[/]"
                                       for k, v in sorted(up.items())) or "no endpoints (buffering only)")
        out = joined(s.get("out", {}))
        t.add_row("out", "none yet" if out == "-" else out + " (PUBACKed)")
        alarms = s.get("last_alarms")
        last_age = s.get("last_alarm_age_s")
        if alarms:
            a = alarms[0]
            more = f"; {len(alarms) - 1} more" if len(alarms) > 1 else ""
            rssi = f", {a['rssi']} dBm" if a.get("rssi") is not None else ""
            t.add_row("alarms", f"[red]last {age_text(a['age_s'])} ago[/red]: {a['device_id']} {a['kind']}"
                      f"{' (test)' if a.get('test') else ''} ({a['adapter']}{rssi}){more}")
        elif last_age is not None:
            t.add_row("alarms", f"last {age_text(last_age)} ago [dim](details: status page token needed)[/dim]")
        else:
            t.add_row("alarms", "none since start")
        rules = s.get("rules")
        if rules:
            mode = rules.get("mode") or "?"
            line = (f"mode [{'yellow' if mode == 'emergency' else 'green'}]{mode}[/] · {n(rules['loaded'])} loaded"
                    f" · {n(rules['active'])} firing")
            if rules.get("failover"):
                line += " · [yellow]failover (uplink down)[/yellow]"
            stages = joined(rules.get("alarm_stages", {}))
            t.add_row("rules", line + ("" if stages == "-" else f" · node alarms: {stages}"))
            for a in (s.get("open_alarms") or [])[:5]:
                t.add_row("", f"[red]open[/red] {a['device_id']} {a['cause']} #{a['alarm_id']} {a['stage']}"
                          f"{' escalated' if a['escalated'] else ''} · raised {age_text(a['raised_age_s'])} ago")
            for f in (s.get("active_firings") or [])[:5]:
                t.add_row("", f"[yellow]firing[/yellow] {f['rule']} {f['device_id']} since "
                          f"{age_text(f['since_age_s'])}")
    d = s.get("disk") or {}
    if d:
        dl = f"buffer {size_text(d.get('buffer_bytes'))} / {size_text(d.get('quota_bytes'))} quota"
        if d.get("over_quota"):
            dl += " [red]OVER QUOTA[/red]"
        dl += f" · registry {size_text(d.get('registry_bytes'))}"
        if d.get("free_bytes") is not None:
            dl += f" · free {size_text(d['free_bytes'])} of {size_text(d.get('total_bytes'))}"
        t.add_row("disk", dl)
    if s["running"]:
        heard = s.get("devices_heard")
        registered = s.get("devices", {})
        t.add_row("devices", f"{n(sum(registered.values()))} registered"
                  + (f" ({joined(registered)})" if any(registered.values()) else "")
                  + (f" · {n(heard)} heard since start" if heard is not None else ""))
        t.add_row("rejects", joined(s.get("rejects", {})))
        t.add_row("drops", joined(s.get("drops", {})))
    if "next_seq" in s:
        t.add_row("next seq", n(s["next_seq"]))
    ks = s.get("keys") or {}
    if ks:
        parts = [f"{k} {v['where']}" + (f" {v['cipher']}" if v.get("cipher") not in ("", "none") else "")
                 for k, v in ks.items()]
        if ks.get("registry", {}).get("where") == "plaintext":
            parts[0] = "[yellow]registry PLAINTEXT[/yellow] (docs/keys.md)"
        t.add_row("keys", " · ".join(parts))
    con.print(t)


# ---------------------------------------------------------------------------------------------- devices


@gateway.group()
def devices() -> None:
    """Device registry: import provisioning records, list, revoke, re-key over the air."""


def _registry_path(config_path: Path, db: Path | None) -> tuple[Path, Path | None]:
    if db is not None:
        return db, None
    cfg = _load(config_path)
    return cfg.gateway.registry_db, cfg.gateway.trusted_technicians


_db_option = click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
                          help="Registry database (default: from the config).")
_kek_option = click.option("--kek-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                           help="Registry key-encryption key file (default: from the config; with --db: none).")


def _registry_keys(config_path: Path, db: Path | None, kek_file: Path | None) -> Any:
    """The registry KEK (a GatewayKeys whose ``kek`` may be None: plaintext registry); errors exit 3."""
    from lifeline.gateway import kek as keywrap
    from lifeline.gateway.keystore import GatewayKeys, KeyStoreError, load_registry_kek

    try:
        if kek_file is not None:
            return GatewayKeys(keywrap.load_file(kek_file), None)
        if db is not None:
            return GatewayKeys(None, None)
        return load_registry_kek(_load(config_path))
    except (KeyStoreError, keywrap.KekError) as e:
        _err(str(e), EXIT_CONFIG)


def _on_registry(path: Path, config_path: Path, db: Path | None, kek_file: Path | None,
                 op: Callable[[Registry], T], *, refused: int) -> T:
    """Run ``op`` on the registry at ``path`` opened with its KEK (closed either way). A registry refusal
    exits with ``refused``; an I/O or SQLite error exits 3 naming the file."""
    from lifeline.gateway.registry import Registry, RegistryError

    keys = _registry_keys(config_path, db, kek_file)
    try:
        with Registry(path, keys.kek) as reg:
            return op(reg)
    except RegistryError as e:
        _err(str(e), refused)
    except (OSError, sqlite3.Error) as e:
        _err(f"registry {path}: {e}", EXIT_CONFIG)
    finally:
        keys.close()


@devices.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_config_option
@_db_option
@click.option("--rekey", is_flag=True, help="Accept a new root key for an existing device (counters restart).")
@click.option("--trusted", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Trusted technician keys (JSON name -> Ed25519 public key hex); default from the config.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@_kek_option
def import_cmd(file: Path, config_path: Path, db: Path | None, rekey: bool, trusted: Path | None,
               as_json: bool, kek_file: Path | None) -> None:
    """Import provisioning records (JSON lines) from FILE. Exit 1 if any record was rejected."""
    from lifeline.gateway.registry import RegistryError, load_trusted_technicians

    path, trusted_cfg = _registry_path(config_path, db)
    trusted_path = trusted or trusted_cfg
    try:
        tech = load_trusted_technicians(trusted_path) if trusted_path else None
        lines = file.read_text(encoding="utf-8").splitlines()
    except RegistryError as e:
        _err(str(e), EXIT_CONFIG)
    except (OSError, UnicodeDecodeError) as e:
        _err(f"cannot read {file}: {getattr(e, 'strerror', None) or type(e).__name__}", EXIT_CONFIG)
    report = _on_registry(path, config_path, db, kek_file, lambda reg: reg.import_lines(
        lines, now_ms=time.time_ns() // 1_000_000, rekey=rekey, trusted=tech), refused=EXIT_CONFIG)
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


@devices.command("rewrap")
@_config_option
@_db_option
@click.option("--kek-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The current key-encryption key file (default: the one the config names).")
@click.option("--new-kek-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The new key-encryption key file (`gateway kekgen`; default: the KEK the config names, e.g. "
                   "a token key after keys.pkcs11.kek_label was set and `gateway token-keys` made it).")
def rewrap_cmd(config_path: Path, db: Path | None, kek_file: Path | None, new_kek_file: Path | None) -> None:
    """KEK rotation: re-wrap every root key under a new key-encryption key (stop the daemon first).

    File to file: --new-kek-file NEW (then point keys.kek_file at it). File to token: edit the config to
    name the token KEK (keys.pkcs11.kek_label, no keys.kek_file), run `gateway token-keys`, then
    `devices rewrap --kek-file OLD`.
    """
    from lifeline.gateway import kek as keywrap
    from lifeline.gateway.keystore import GatewayKeys, KeyStoreError, load_registry_kek
    from lifeline.gateway.registry import Registry, RegistryError

    if kek_file is None and new_kek_file is None:
        raise click.UsageError("give --new-kek-file, or --kek-file with the config naming the new KEK")
    path, _ = _registry_path(config_path, db)
    if not path.exists():
        _err(f"registry {path} does not exist", EXIT_CONFIG)
    old = _registry_keys(config_path, db, kek_file)
    new = GatewayKeys(None, None)
    try:
        if new_kek_file is not None:
            new = GatewayKeys(keywrap.load_file(new_kek_file), None)
        else:
            new = load_registry_kek(_load(config_path))
        if new.kek is None:
            _err(f"{config_path}: names no key-encryption key to re-wrap under", EXIT_CONFIG)
        with Registry(path, old.kek) as reg:
            n = reg.rewrap(new.kek)
        where = keywrap.describe(new.kek)
    except (keywrap.KekError, KeyStoreError, RegistryError) as e:
        _err(str(e), EXIT_CONFIG)
    finally:
        old.close()
        new.close()
    hint = (f"; set keys.kek_file = \"{new_kek_file}\" before starting the daemon" if new_kek_file is not None
            else "")
    click.echo(f"{n} root key(s) now wrapped under {where}{hint}")


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
    with Registry(path, metadata_only=True) as reg:  # never needs (or touches) the root keys
        rows = [d.public_dict() for d in reg.all()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    from rich.table import Table

    t = Table(title=f"{len(rows)} device(s)")
    t.add_column("device", no_wrap=True)
    for col in ("kind", "status", "suite", "class", "installed", "life", "address", "tags"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["device_id"], r["kind"], r["status"], r["suite"], r["data_class"], r["install_date"],
                  f"{r['design_life_years']}y", r["location"]["address"], ",".join(r["tags"]))
    _console().print(t)


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
    with Registry(path, metadata_only=True) as reg:
        found = reg.revoke(bytes.fromhex(dev), now_ms=time.time_ns() // 1_000_000)
    if not found:
        _err(f"device {dev} is not registered", EXIT_FAILED)
    click.echo(f"{dev}: revoked")


@devices.command("rekey")
@click.argument("device_id")
@_config_option
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
@_kek_option
def rekey_cmd(device_id: str, config_path: Path, db: Path | None, as_json: bool, kek_file: Path | None) -> None:
    """Re-key DEVICE_ID (16 hex) over the air (docs/keys.md): store its pending key; the running daemon
    queues the `rekey` downlink and switches keys when the node confirms. Idempotent while pending."""
    dev = device_id.lower()
    if len(dev) != 16 or any(c not in "0123456789abcdef" for c in dev):
        raise click.BadParameter("expected 16 hex characters", param_hint="DEVICE_ID")
    path, _ = _registry_path(config_path, db)
    if not path.exists():
        _err(f"registry {path} does not exist (import devices first)", EXIT_CONFIG)
    p = _on_registry(path, config_path, db, kek_file, lambda reg: reg.begin_rekey(
        bytes.fromhex(dev), now_ms=time.time_ns() // 1_000_000), refused=EXIT_FAILED)
    if as_json:
        click.echo(json.dumps({"device_id": dev, "pending_epoch": p.epoch}))
    else:
        click.echo(f"{dev}: re-key to epoch {p.epoch} pending (the daemon sends it at the node's next window)")


# ---------------------------------------------------------------------------------------------- mode

from lifeline.gateway.rules_engine.cli import mode_cmd  # noqa: E402 - small: click only until it runs

gateway.add_command(mode_cmd, "mode")
