"""The gateway under test: the real daemon, started as ``lifeline gateway run --config FILE`` in a
subprocess with a configuration written for the bench (its radios, the platform broker, the node broker,
optional rule files and buffer quota), managed with the real CLI (``keygen``, ``devices import``,
``devices revoke``) and watched through its Prometheus metrics. SIGKILL, SIGTERM and restarts are real.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from lifeline.gateway.metrics import parse_text

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
GATEWAY_ID = "gw-hil"
Key = tuple[bytes, int]  # (device id, fcnt)


def _die_with_parent() -> None:  # in the child between fork and exec: a crashed test run leaves no gateway
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class GatewayError(RuntimeError):
    pass


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Wait for a condition with a deadline (polling; never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


@dataclass(slots=True)
class GatewaySettings:
    """What a drill may change in the gateway's configuration."""

    lora_serial: str | None = None  # the modem's port (emulated pty or the bench's /dev/ttyUSB*)
    lora_sf: int = 9
    platform: tuple[str, int] | None = None
    node_broker: tuple[str, int] | None = None
    quota_mb: int = 256
    rule_files: Sequence[Path] = ()
    trusted_technicians: Path | None = None
    extra: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # [section] key = value


def config_text(state: Path, s: GatewaySettings) -> str:
    lines = [
        "[gateway]", f'id = "{GATEWAY_ID}"', f'state_dir = "{state}"', f'key_file = "{state / "gateway.key"}"',
    ]
    if s.trusted_technicians is not None:
        lines.append(f'trusted_technicians = "{s.trusted_technicians}"')
    lines += [
        "[buffer]", "maintenance_s = 1", f"quota_mb = {s.quota_mb}",
        "[metrics]", 'listen = "127.0.0.1"', "port = 0",
        "[forwarder]", "retry_initial_ms = 100", "retry_max_ms = 1000",
        "[uplink]", "keepalive_s = 5", "connect_timeout_s = 2", "publish_timeout_s = 3",
    ]
    if s.platform is not None:
        lines += ["[[uplink.endpoints]]", 'name = "platform"', f'host = "{s.platform[0]}"', f"port = {s.platform[1]}"]
    if s.rule_files:
        lines += ["[rules]", "files = [" + ", ".join(json.dumps(str(p)) for p in s.rule_files) + "]"]
    for section, values in s.extra.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    if s.lora_serial is not None:
        lines += ["[[ingress]]", 'type = "lora-serial"', 'name = "lora0"', "[ingress.options]",
                  f'port = "{s.lora_serial}"', 'region = "EU868"', f"sf = {s.lora_sf}", "reconnect_min_s = 0.1",
                  "reconnect_max_s = 1.0"]
    if s.node_broker is not None:
        lines += ["[[ingress]]", 'type = "nbiot-mqtt"', 'name = "nb0"', "[ingress.options]",
                  f'host = "{s.node_broker[0]}"', f"port = {s.node_broker[1]}", f'client_id = "{GATEWAY_ID}-nb0"',
                  "reconnect_min_s = 0.1", "reconnect_max_s = 1.0"]
    return "\n".join(lines) + "\n"


class GatewayProcess:
    def __init__(self, workdir: Path, settings: GatewaySettings) -> None:
        self.workdir = Path(workdir)
        self.state = self.workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.config = self.workdir / "gateway.toml"
        self.config.write_text(config_text(self.state, settings), encoding="utf-8")
        self.log = self.workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        r = self.cli("keygen", "--out", str(self.state / "gateway.key"))
        self.public_key = bytes.fromhex(r.stdout.strip().splitlines()[-1])

    # ------------------------------------------------------------------------------ CLI
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([LIFELINE, "gateway", *args], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise GatewayError(f"lifeline gateway {args[0]} exited {r.returncode}: {r.stderr.strip()[-800:]}")
        return r

    def import_devices(self, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """``lifeline gateway devices import`` of provisioning records (a 0600 JSON-lines file)."""
        path = self.workdir / f"devices-{time.monotonic_ns()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")
        r = self.cli("devices", "import", str(path), "--config", str(self.config), "--json", check=False)
        path.unlink()
        if r.returncode != 0:
            raise GatewayError(f"devices import refused records: {r.stdout.strip()[-800:]} {r.stderr.strip()[-400:]}")
        out: dict[str, Any] = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {"raw": r.stdout}
        return out

    def revoke(self, device: bytes) -> None:
        self.cli("devices", "revoke", device.hex(), "--config", str(self.config))

    # ------------------------------------------------------------------------------ process
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        if self.running:
            raise GatewayError("the gateway is already running")
        (self.state / "metrics.addr").unlink(missing_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        try:
            log.write(f"\n===== hil: start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen([LIFELINE, "gateway", "run", "--config", str(self.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        finally:
            log.close()
        self.starts += 1
        proc = self.proc
        wait_until(lambda: self.metrics_url() is not None or proc.poll() is not None, timeout_s,
                   "the gateway's metrics endpoint")
        if proc.poll() is not None:
            raise GatewayError(f"the gateway exited with {proc.returncode} at start:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no will handling by the process, open transactions lost."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1

    def stop(self) -> int | None:
        """SIGTERM and wait (the clean shutdown path); returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    # ------------------------------------------------------------------------------ observing
    def metrics_url(self) -> str | None:
        if not self.running:
            return None
        try:
            addr = (self.state / "metrics.addr").read_text().strip()
        except FileNotFoundError:
            return None
        return f"http://{addr}/metrics" if addr else None

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        url = self.metrics_url()
        if url is None:
            raise GatewayError("the gateway is not running")
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse_text(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of ``lifeline_gateway_<name>`` over the series matching ``labels``."""
        return sum(v for lab, v in self.metrics().get(f"lifeline_gateway_{name}", [])
                   if all(lab.get(k) == x for k, x in labels.items()))

    def metric_by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for lab, v in self.metrics().get(f"lifeline_gateway_{name}", []):
            out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
        return out

    def rejects(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.metric_by("rejects_total", "reason").items() if v}

    def buffered_readings(self) -> set[Key]:
        """(device, fcnt) of every reading committed to the buffer and not yet PUBACKed (read-only open;
        works on the files a killed process left)."""
        db = self.state / "buffer.db"
        if not db.exists():
            return set()
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT record FROM readings").fetchall()
        finally:
            conn.close()
        out: set[Key] = set()
        for (blob,) in rows:
            rec = cbor2.loads(blob)
            if rec.get(10, 0) == 0:
                out.add((bytes(rec[1]), int(rec[2])))
        return out

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""
