"""A real gateway daemon for end-to-end tests, drills and rigs: ``lifeline gateway run --config FILE`` as a
subprocess, configured from a :class:`GatewaySpec`, its key made by ``lifeline gateway keygen``, its devices
imported and revoked through the real CLI, watched through its Prometheus metrics, its buffer database and
its log, stopped with SIGTERM or killed with SIGKILL.

Used by the MQTT end-to-end tests (gateway/tests/test_e2e_mqtt.py), the provisioning self-test against a
gateway, the HIL bench (hil_tests/gateway_proc.py) and the NATS ingest rig (tools/nats_ingest.py). The
in-process stand-ins (memory publisher and adapter, harness) are in :mod:`lifeline.gateway.testing`.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from lifeline.gateway.metrics import parse_text

LIFELINE = str(Path(sys.executable).with_name("lifeline"))  # the installed CLI next to this interpreter

# What every test gateway has unless its spec says otherwise: metrics on a free loopback port (the address
# goes to <state>/metrics.addr), registry reloads every second, short uplink timeouts.
DEFAULT_SECTIONS: Mapping[str, Mapping[str, object]] = {
    "metrics": {"listen": "127.0.0.1", "port": 0},
    "buffer": {"maintenance_s": 1},
    "uplink": {"keepalive_s": 5, "connect_timeout_s": 2, "publish_timeout_s": 3},
}


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str,
               explain: Callable[[], str] | None = None, *, poll_s: float = 0.05) -> None:
    """Wait for ``pred`` with a deadline, polling (never a fixed sleep for correctness). On timeout an
    AssertionError names ``what``, followed by ``explain()`` when given (a log tail, what is missing)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            more = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}{more}")
        time.sleep(poll_s)


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _find_prctl()  # looked up here: the child between fork and exec should not load a library
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # preexec_fn: runs in the child between fork and exec
    if _PRCTL is not None:
        with contextlib.suppress(Exception):
            _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout_s: float = 30.0) -> int:
    """End a child: ``sig`` (after SIGCONT, as a stopped process cannot act on it), a bounded wait, then
    SIGKILL; its exit status. Nothing is sent to one that has already exited."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def log_tail(path: Path, n: int = 40) -> str:
    """The last ``n`` lines of a child's log file ("" if there is none yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


class GatewayError(RuntimeError):
    """The gateway or its CLI failed or refused; the message says which, with its stderr or log tail."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``[[uplink.endpoints]]`` entry; the TLS files are for a broker that wants client certificates."""

    name: str
    host: str
    port: int
    priority: int | None = None  # None: the order of the list
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(slots=True)
class GatewaySpec:
    """What goes into a test gateway's configuration besides :data:`DEFAULT_SECTIONS`."""

    gateway_id: str
    endpoints: Sequence[Endpoint] = ()
    nbiot_broker: tuple[str, int] | None = None  # an nbiot-mqtt ingress "nb0" on this node broker
    lora_serial: str | None = None  # a lora-serial ingress "lora0" on this modem port (a pty or /dev/ttyUSB*)
    lora_sf: int = 9
    # [table] key = value over the defaults; "gateway" adds to [gateway] (suite, trusted_technicians, ...)
    sections: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    @property
    def suite(self) -> str:
        """The signing suite ``keygen`` makes the key for: ``[gateway] suite``, intl by default."""
        return str(self.sections.get("gateway", {}).get("suite", "intl"))

    def config_text(self, state: Path) -> str:
        """The gateway TOML, with ``state`` as its state directory and ``state/gateway.key`` as its key."""
        tables: dict[str, dict[str, object]] = {
            "gateway": {"id": self.gateway_id, "state_dir": state, "key_file": state / "gateway.key"},
            **{name: dict(values) for name, values in DEFAULT_SECTIONS.items()}}
        for name, values in self.sections.items():
            tables.setdefault(name, {}).update(values)
        lines: list[str] = []
        for name, values in tables.items():
            lines += _table(f"[{name}]", values)
        for e in self.endpoints:
            lines += _table("[[uplink.endpoints]]", {k: v for k, v in asdict(e).items() if v is not None})
        reconnect = {"reconnect_min_s": 0.1, "reconnect_max_s": 1.0}
        if self.lora_serial is not None:
            lines += _ingress("lora-serial", "lora0", {"port": self.lora_serial, "region": "EU868",
                                                       "sf": self.lora_sf, **reconnect})
        if self.nbiot_broker is not None:
            host, port = self.nbiot_broker
            lines += _ingress("nbiot-mqtt", "nb0", {"host": host, "port": port,
                                                    "client_id": f"{self.gateway_id}-nb0", **reconnect})
        return "\n".join(lines) + "\n"


def _toml_value(v: object) -> str:
    if isinstance(v, Path):
        return json.dumps(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)  # str, int, float, bool: JSON's spelling is TOML's


def _table(header: str, values: Mapping[str, object]) -> list[str]:
    return [header, *(f"{k} = {_toml_value(v)}" for k, v in values.items())]


def _ingress(kind: str, name: str, options: Mapping[str, object]) -> list[str]:
    return ["[[ingress]]", f'type = "{kind}"', f'name = "{name}"', *_table("[ingress.options]", options)]


class GatewayProcess:
    """One gateway in ``workdir``: ``state/`` (key, registry, buffer), ``gateway.toml``, ``gateway.log`` (its
    stdout and stderr, appended over restarts), ``gateway.pub`` (the public key as hex).

    With ``die_with_parent`` (the default) the kernel kills the daemon when the thread that started it ends,
    so a crashed test run leaves no gateway behind; start it from a thread that outlives it."""

    def __init__(self, workdir: Path, spec: GatewaySpec, *, die_with_parent: bool = True) -> None:
        self.workdir = Path(workdir)
        self.spec = spec
        self.id = spec.gateway_id
        self.state = self.workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "gateway.toml"
        self.config.write_text(spec.config_text(self.state), encoding="utf-8")
        self.log = self.workdir / "gateway.log"
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        r = self.cli("keygen", "--suite", spec.suite, "--out", str(self.state / "gateway.key"))
        self.public_key = bytes.fromhex(r.stdout.strip().splitlines()[-1])
        self.public_key_file = self.workdir / "gateway.pub"
        self.public_key_file.write_text(self.public_key.hex() + "\n", encoding="utf-8")

    @property
    def public_key_hex(self) -> str:
        return self.public_key.hex()

    # ------------------------------------------------------------------------------ CLI
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``lifeline gateway ARGS...``; with ``check`` a non-zero exit is a GatewayError with its stderr."""
        r = subprocess.run([LIFELINE, "gateway", *args], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, check=False)
        if check and r.returncode != 0:
            raise GatewayError(f"lifeline gateway {' '.join(args)} exited {r.returncode}: {r.stderr.strip()[-800:]}")
        return r

    def import_devices(self, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """``lifeline gateway devices import`` of provisioning records, from a 0600 JSON-lines file (they hold
        root keys) removed afterwards; the command's JSON report."""
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
        """Start the daemon and wait until its metrics endpoint is up; GatewayError with the log tail if it
        exits first."""
        if self.running:
            raise GatewayError("the gateway is already running")
        (self.state / "metrics.addr").unlink(missing_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        try:
            log.write(f"\n===== start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen([LIFELINE, "gateway", "run", "--config", str(self.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent if self.die_with_parent else None)
        finally:
            log.close()
        self.starts += 1
        proc = self.proc
        wait_until(lambda: self.metrics_url() is not None or proc.poll() is not None, timeout_s,
                   f"{self.id}'s metrics endpoint", self.log_tail)
        if proc.poll() is not None:
            raise GatewayError(f"{self.id} exited with {proc.returncode} at start:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no will handling by the process, open transactions lost."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1

    def stop(self) -> int | None:
        """SIGTERM and wait (the clean shutdown path), SIGKILL after 30 s; the exit status."""
        return None if self.proc is None else stop_process(self.proc, signal.SIGTERM)

    # ------------------------------------------------------------------------------ observing
    def metrics_url(self) -> str | None:
        """The running daemon's /metrics URL; None before it wrote its address, or when it is not running."""
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
            raise GatewayError(f"{self.id} is not running")
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse_text(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of ``lifeline_gateway_<name>`` over the series matching ``labels``."""
        return sum(v for lab, v in self.metrics().get(f"lifeline_gateway_{name}", [])
                   if all(lab.get(k) == x for k, x in labels.items()))

    def wait_subscribed(self, adapter: str = "nb0", timeout_s: float = 30.0) -> None:
        """Wait until the nbiot-mqtt ingress ``adapter`` has subscribed on its node broker. Its first session
        does not exist before that, and a broker drops what is published to a topic nobody subscribes to:
        a test whose nodes publish right after start() lost a frame now and then."""
        wait_until(lambda: self.metric("adapter_counter", adapter=adapter, counter="connects") >= 1, timeout_s,
                   f"{self.id}'s {adapter} subscribed", self.log_tail)

    def metric_by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """``lifeline_gateway_<name>`` over the series matching ``labels``, summed by ``label`` ("" for series
        without it); sums of zero left out."""
        out: dict[str, float] = {}
        for lab, v in self.metrics().get(f"lifeline_gateway_{name}", []):
            if all(lab.get(k) == x for k, x in labels.items()):
                out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
        return {k: v for k, v in out.items() if v}

    def rejects(self) -> dict[str, int]:
        """Frames the gateway refused, by reason."""
        return {k: int(v) for k, v in self.metric_by("rejects_total", "reason").items()}

    def buffered_readings(self) -> set[tuple[bytes, int]]:
        """(device, fcnt) of every reading committed to the buffer and not yet PUBACKed (a read-only open, so
        it also reads what a killed process left)."""
        db = self.state / "buffer.db"
        if not db.exists():
            return set()
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT record FROM readings").fetchall()
        finally:
            conn.close()
        out: set[tuple[bytes, int]] = set()
        for (blob,) in rows:
            rec = cbor2.loads(blob)
            if rec.get(10, 0) == 0:  # readings, not gateway events
                out.add((bytes(rec[1]), int(rec[2])))
        return out

    def log_tail(self, n: int = 40) -> str:
        return log_tail(self.log, n)
