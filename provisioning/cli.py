"""``lifeline provision ...``: what a field technician runs to flash, key, register and test nodes.

Exit codes: 0 every device passed (or was already done), 1 a device failed or was refused, 2 bad
inputs (CSV rows, options), 3 environment (port, files, keys).
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from lifeline.provisioning.errors import EXIT_CHECK_FAILED, EXIT_ENV, EXIT_USAGE, ProvisionError

_err = Console(stderr=True)


class RichSink:
    """Step progress on stderr: one line per step, a byte bar for flash and install."""

    def __init__(self, progress: Progress, label: str, *, quiet: bool = False) -> None:
        self.p = progress
        self.label = label
        self.quiet = quiet
        self.task: TaskID | None = None

    def start(self, step: str, total: int | None = None) -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(f"{self.label} {step}", total=total)

    def advance(self, done: int, total: int) -> None:
        if self.task is not None:
            self.p.update(self.task, completed=done, total=total)

    def finish(self, step: str, status: str, note: str = "") -> None:
        if self.task is not None:
            self.p.remove_task(self.task)
            self.task = None
        if self.quiet:
            return
        mark = {"pass": "[green]ok[/]", "skip": "[cyan]skip[/]", "fail": "[red]FAIL[/]"}.get(status, status)
        self.p.console.print(f"{self.label} {step:<9} {mark} {note}", markup=True, highlight=False)


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                    console=_err, disable=not enabled, transient=True)


def _fail(exc: ProvisionError, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": exc.reason, "message": str(exc)}))
    else:
        _err.print(f"[red]error[/] ({exc.reason}): {exc}", highlight=False)
    sys.exit(exc.exit_code)


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--firmware", type=click.Path(path_type=Path, dir_okay=False), required=True,
                     help="MicroPython firmware .bin (merged image for 0x1000)."),
        click.option("--technician", required=True, help="Your name as listed in the gateway's trusted keys."),
        click.option("--technician-key", type=click.Path(path_type=Path, dir_okay=False), required=True,
                     help="Your Ed25519 key file (lifeline provision technician-key)."),
        click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=Path("provisioning-run"),
                     show_default=True, help="records.jsonl (0600), state.json, audit.jsonl and labels/ live here."),
        click.option("--force", is_flag=True, help="Re-provision boards that already carry a configuration."),
        click.option("--hal", type=click.Choice(["auto", "device", "sim"]), default="auto", show_default=True,
                     help="Bundle variant: ESP32 HAL or simulated HAL (auto: sim only on the emulated board)."),
        click.option("--max-baud", type=click.Choice(["921600", "460800", "230400", "115200"]), default="921600",
                     show_default=True, help="Fastest baud rate to try."),
        click.option("--gateway", default=None, metavar="nbiot://HOST[:PORT]",
                     help="Node broker of a gateway that knows the device (nbiot-mqtt ingress; mqtt:// is the "
                     "same): the self-test publishes the test frame there and waits for the gateway's ACK."),
        click.option("--gateway-import", default=None, metavar="CMD",
                     help="Command run after the register step to import the records file into that gateway, "
                     "{records} = its path (e.g. 'lifeline gateway devices import {records} --config gw.toml')."),
        click.option("--gateway-timeout", type=click.FloatRange(1, 120), default=10.0, show_default=True,
                     help="Seconds to wait for the gateway's ACK."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _setup(firmware: Path, technician: str, technician_key: Path, workdir: Path, gateway: str | None,
           gateway_import: str | None, gateway_timeout: float) -> dict[str, Any]:
    from lifeline.provisioning import firmware_image, records
    from lifeline.provisioning import gateway_import as importer
    from lifeline.provisioning.audit import AuditLog
    from lifeline.provisioning.gateway_link import GatewayTarget
    from lifeline.provisioning.state import StateFile

    target = GatewayTarget.parse(gateway) if gateway is not None else None
    import_argv = importer.split(gateway_import) if gateway_import is not None else None
    workdir.mkdir(parents=True, exist_ok=True)
    image = firmware_image.load(firmware)
    key = records.load_technician_key(technician_key)
    return {
        "firmware": image,
        "records_path": workdir / "records.jsonl",
        "state": StateFile(workdir / "state.json"),
        "audit": AuditLog(workdir / "audit.jsonl", technician),
        "technician_key": key,
        "labels_dir": workdir / "labels",
        "gateway": target,
        "gateway_import": import_argv,
        "gateway_timeout_s": gateway_timeout,
    }


def _ladder(max_baud: str) -> tuple[int, ...]:
    from lifeline.provisioning.flasher import BAUD_LADDER

    return tuple(b for b in BAUD_LADDER if b <= int(max_baud))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def provision() -> None:
    """Flash, key, register and test Lifeline nodes (docs/technician.md)."""


@provision.command("technician-key")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Key file to create (0600).")
@click.option("--name", default=None, help="Technician name for the trusted-keys snippet.")
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@click.option("--json", "as_json", is_flag=True)
def technician_key_cmd(out: Path, name: str | None, force: bool, as_json: bool) -> None:
    """Create your Ed25519 signing key; prints the public key for the gateway's trusted list."""
    from lifeline.provisioning import records

    try:
        pub = records.create_technician_key(out, overwrite=force)
    except ProvisionError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"key_file": str(out), "public_key": pub, "name": name}))
        return
    click.echo(f"key written to {out} (mode 0600)")
    click.echo(f"public key: {pub}")
    click.echo("add to the gateway's trusted technicians file:")
    click.echo(json.dumps({name or "<your name>": pub}))


def _spec_from_options(kw: dict[str, Any]) -> Any:
    from lifeline.provisioning.batch import _degrees
    from lifeline.provisioning.errors import UsageProblem
    from lifeline.provisioning.nodeconfig import DeviceSpec, Location, check_spec

    try:
        lat = _degrees(kw["lat"]) if kw["lat"] else None
        lon = _degrees(kw["lon"]) if kw["lon"] else None
    except (ValueError, ArithmeticError):
        raise UsageProblem("bad_coordinates", "--lat/--lon must be decimal degrees with at most 6 decimals") from None
    spec = DeviceSpec(
        kind=kw["kind"], radio=kw["radio"], region=kw["region"], interval_s=kw["interval"],
        location=Location(kw["address"], lat, lon, kw["spatial_unit"]), data_class=kw["data_class"],
        install_date=kw["install_date"], design_life_years=kw["design_life"], tags=tuple(kw["tag"]),
        threshold_high=kw["threshold_high"], threshold_low=kw["threshold_low"], confirm=kw["confirm"],
        nbiot_host=kw["nbiot_host"], suite=kw["suite"])
    problems = check_spec(spec)
    if problems:
        raise UsageProblem("bad_option", "; ".join(f"--{c.replace('_', '-')}: {m}" for c, m in problems))
    return spec


def _print_outcome(outcome: Any) -> None:
    colour = {"passed": "green", "skipped": "cyan"}.get(outcome.result, "red")
    _err.print(f"[{colour}]{outcome.result}[/] {outcome.device_id or '-'} {outcome.message} "
               f"({outcome.seconds:.1f} s)", highlight=False)


@provision.command("device")
@click.option("--port", default=None, help="Serial port or pyserial URL (socket://host:port); default: the one "
              "USB-serial bridge of an ESP32 board that is connected.")
@click.option("--kind", required=True, help="Report kind (smoke, manhole_tilt, water_level, water_meter, ...).")
@click.option("--radio", default="lora", show_default=True, type=click.Choice(["lora", "nbiot", "ble"]))
@click.option("--region", default="EU868", show_default=True)
@click.option("--interval", default=900, show_default=True, type=int, help="Report interval, seconds.")
@click.option("--address", required=True)
@click.option("--lat", default=None, help="Latitude, decimal degrees.")
@click.option("--lon", default=None, help="Longitude, decimal degrees.")
@click.option("--spatial-unit", default="", help="District / block / asset id.")
@click.option("--data-class", required=True, type=click.Choice(["public", "internal", "sensitive", "core"]))
@click.option("--install-date", default=lambda: datetime.date.today().isoformat(), show_default="today")
@click.option("--design-life", default=10, show_default=True, type=int, help="Design life, years.")
@click.option("--tag", multiple=True)
@click.option("--threshold-high", type=int, default=None)
@click.option("--threshold-low", type=int, default=None)
@click.option("--confirm", type=int, default=None)
@click.option("--nbiot-host", default=None)
@click.option("--suite", default="intl", show_default=True, type=click.Choice(["intl", "sm"]),
              help="Frame crypto suite, fixed for the node's life: intl (HMAC-SHA256/AES) or sm (HMAC-SM3/SM4).")
@_common
def device_cmd(port: str | None, firmware: Path, technician: str, technician_key: Path, workdir: Path, force: bool,
               hal: str, max_baud: str, gateway: str | None, gateway_import: str | None, gateway_timeout: float,
               as_json: bool, **kw: Any) -> None:
    """Provision one board on PORT."""
    from lifeline.provisioning.flow import DeviceFlow, Options
    from lifeline.provisioning.ports import find_board_port

    try:
        spec = _spec_from_options(kw)
        env = _setup(firmware, technician, technician_key, workdir, gateway, gateway_import, gateway_timeout)
        port = port or find_board_port()
    except ProvisionError as exc:
        _fail(exc, as_json)
    opts = Options(port=port, force=force, hal=hal, baud_ladder=_ladder(max_baud), **env)
    with _progress(not as_json) as prog:
        outcome = DeviceFlow(opts, spec, sink=RichSink(prog, port, quiet=as_json)).run()
    if as_json:
        click.echo(json.dumps(outcome.to_json()))
    else:
        _print_outcome(outcome)
    if outcome.result not in ("passed", "skipped"):
        sys.exit(EXIT_USAGE if outcome.reason in ("duplicate_device", "row_board_mismatch", "unexpected_board")
                 else EXIT_ENV if outcome.reason in ("port_unavailable",) else EXIT_CHECK_FAILED)


@provision.command("batch")
@click.argument("csv_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--port", default=None, help="Port for rows without a port column.")
@click.option("--check", "check_only", is_flag=True, help="Only check the CSV; flash nothing.")
@click.option("--pdf", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Label sheet to write (default: WORKDIR/labels/sheet.pdf).")
@_common
def batch_cmd(csv_file: Path, port: str | None, check_only: bool, pdf: Path | None, firmware: Path, technician: str,
              technician_key: Path, workdir: Path, force: bool, hal: str, max_baud: str, gateway: str | None,
              gateway_import: str | None, gateway_timeout: float, as_json: bool) -> None:
    """Provision every row of CSV_FILE (resumable: rerun to continue; finished devices are skipped)."""
    from lifeline.provisioning import batch, labels
    from lifeline.provisioning.flow import DeviceFlow, Options, load_labels

    try:
        parsed = batch.load(csv_file)
    except ProvisionError as exc:
        _fail(exc, as_json)
    missing_port = [r.line for r in parsed.rows if r.port is None and port is None]
    errors = list(parsed.errors) + [batch.RowError(n, "port", "missing_value", "no port column value and no --port")
                                    for n in missing_port]
    if errors:
        counts: dict[str, int] = {}
        for e in errors:
            counts[e.reason] = counts.get(e.reason, 0) + 1
        if as_json:
            click.echo(json.dumps({"error": "bad_rows", "count": len(errors), "counts": counts,
                                   "rows": [{"line": e.line, "column": e.column, "reason": e.reason,
                                             "message": e.message} for e in errors]}))
        else:
            for e in errors:
                _err.print(f"[red]{csv_file.name}[/]: {e}", highlight=False)
            _err.print(f"{len(errors)} problem(s) ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}); "
                       "nothing was flashed", highlight=False)
        sys.exit(EXIT_USAGE)
    if check_only:
        click.echo(json.dumps({"rows": len(parsed.rows), "ok": True}) if as_json else f"{len(parsed.rows)} rows OK")
        return
    try:
        env = _setup(firmware, technician, technician_key, workdir, gateway, gateway_import, gateway_timeout)
    except ProvisionError as exc:
        _fail(exc, as_json)
    outcomes = []
    with _progress(not as_json) as prog:
        for row in parsed.rows:
            row_port = row.port or port
            assert row_port is not None
            opts = Options(port=row_port, force=force, hal=hal, baud_ladder=_ladder(max_baud), **env)
            sink = RichSink(prog, f"line {row.line}", quiet=as_json)
            outcome = DeviceFlow(opts, row.spec, row=row.line, sink=sink).run()
            outcomes.append((row.line, outcome))
            if not as_json:
                _print_outcome(outcome)
    sheet = pdf or env["labels_dir"] / "sheet.pdf"
    made = load_labels(env["labels_dir"])
    if made:
        sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.write_bytes(labels.pdf_sheet(made))
    ok = all(o.result in ("passed", "skipped") for _, o in outcomes)
    if as_json:
        click.echo(json.dumps({"ok": ok, "devices": [dict(o.to_json(), line=n) for n, o in outcomes],
                               "labels_pdf": str(sheet) if made else None}))
    else:
        passed = sum(1 for _, o in outcomes if o.result in ("passed", "skipped"))
        _err.print(f"{passed}/{len(outcomes)} devices done; records: {env['records_path']}"
                   + (f"; labels: {sheet}" if made else ""), highlight=False)
    if not ok:
        sys.exit(EXIT_CHECK_FAILED)


@provision.command("decommission")
@click.option("--port", required=True)
@click.option("--technician", required=True)
@click.option("--technician-key", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=Path("provisioning-run"),
              show_default=True)
@click.option("--reason", default="decommissioned", show_default=True)
@click.option("--registry", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Gateway registry database to revoke in directly (else run `lifeline gateway devices revoke`).")
@click.option("--json", "as_json", is_flag=True)
def decommission_cmd(port: str, technician: str, technician_key: Path, workdir: Path, reason: str,
                     registry: Path | None, as_json: bool) -> None:
    """Wipe keys and configuration on the board, erase its filesystem, revoke it."""
    from lifeline.provisioning import records
    from lifeline.provisioning.audit import AuditLog
    from lifeline.provisioning.decommission import decommission

    try:
        workdir.mkdir(parents=True, exist_ok=True)
        key = records.load_technician_key(technician_key)
        res = decommission(port, technician_key=key, audit=AuditLog(workdir / "audit.jsonl", technician),
                           revocations=workdir / "revocations.jsonl", reason=reason, registry=registry)
    except ProvisionError as exc:
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps({"device_id": res.device_id, "erased": list(res.erased),
                               "registry_revoked": res.registry_revoked}))
    else:
        click.echo(f"{res.device_id}: erased {', '.join(res.erased)}; revocation written to "
                   f"{workdir / 'revocations.jsonl'}" + ("" if res.registry_revoked is None else
                                                         f"; registry revoked: {res.registry_revoked}"))


@provision.command("detect")
@click.option("--port", default=None, help="Default: the one ESP32 USB-serial bridge connected.")
@click.option("--json", "as_json", is_flag=True)
def detect_cmd(port: str | None, as_json: bool) -> None:
    """Read the chip type and MAC of a board in download mode."""
    from lifeline.provisioning.flasher import Flasher
    from lifeline.provisioning.flow import has_reset_lines
    from lifeline.provisioning.ports import find_board_port

    try:
        port = port or find_board_port()
    except ProvisionError as exc:
        _fail(exc, as_json)
    fl = Flasher(port, reset_lines=has_reset_lines(port))
    try:
        info = fl.connect()
    except ProvisionError as exc:
        _fail(exc, as_json)
    finally:
        fl.close()
    d = {"chip": info.chip, "description": info.description, "mac": info.mac.hex(":"),
         "device_id": info.device_id.hex(), "flash_size": info.flash_size}
    click.echo(json.dumps(d) if as_json else "\n".join(f"{k}: {v}" for k, v in d.items()))


__all__ = ["EXIT_ENV", "provision"]
