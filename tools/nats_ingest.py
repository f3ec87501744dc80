"""City-scale ingest rig: gateways publishing over MQTT into a NATS cluster, sink processes pulling from it.

Used by the end-to-end tests (tools/tests/test_nats_ingest_e2e.py) and the platform bench. Everything is
real: ``lifeline gateway run`` daemons (MQTT 3.1.1 uplink listing every cluster node as an endpoint, each
gateway preferring a different node), their NB-IoT nodes simulated over a Mosquitto per gateway, and
``lifeline platform-sink --source nats://…`` processes sharing the durable consumer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.natsserver import NatsCluster, NatsNode

LIFELINE = str(Path(sys.executable).with_name("lifeline"))


def wait_until(pred: Callable[[], bool], timeout_s: float, what: str,
               explain: Callable[[], str] | None = None) -> None:
    """Wait for a condition with a deadline (polling; never a fixed sleep for correctness)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            more = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}{more}")
        time.sleep(0.05)


class GatewayDaemon:
    """One ``lifeline gateway run`` with its own state dir, key, NB-IoT node broker and NATS endpoints.

    ``endpoints`` are the cluster nodes in this gateway's priority order (the first is preferred).
    """

    def __init__(self, workdir: Path, gateway_id: str, endpoints: Sequence[NatsNode],
                 nodes_broker: MosquittoBroker, *, max_inflight: int = 4, batch_max: int = 512) -> None:
        self.id = gateway_id
        self.dir = workdir
        self.state = workdir / "state"
        self.state.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "gateway.toml"
        self.log = workdir / "gateway.log"
        self.nodes_broker = nodes_broker
        lines = [
            "[gateway]", f'id = "{gateway_id}"', f'state_dir = "{self.state}"',
            f'key_file = "{self.state / "gateway.key"}"',
            "[metrics]", 'listen = "127.0.0.1"', "port = 0",
            "[buffer]", "maintenance_s = 1",
            "[forwarder]", f"max_inflight = {max_inflight}", f"batch_max = {batch_max}",
            "retry_initial_ms = 200", "retry_max_ms = 2000",
            "[uplink]", 'protocol = "3.1.1"', "keepalive_s = 5", "connect_timeout_s = 2", "publish_timeout_s = 8",
            "backoff_initial_s = 1", "backoff_max_s = 2", "failback_s = 5",
        ]
        for prio, node in enumerate(endpoints):
            lines += ["[[uplink.endpoints]]", f'name = "{node.name}"', 'host = "127.0.0.1"',
                      f"port = {node.ports.mqtt}", f"priority = {prio}"]
        lines += [
            "[[ingress]]", 'type = "nbiot-mqtt"', 'name = "nb0"', "[ingress.options]",
            'host = "127.0.0.1"', f"port = {nodes_broker.port}", f'client_id = "{gateway_id}-nb0"',
            "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None
        r = self.cli("keygen", "--out", str(self.state / "gateway.key"))
        self.public_key_hex = r.stdout.strip()
        self.public_key_file = workdir / "gateway.pub"
        self.public_key_file.write_text(self.public_key_hex + "\n")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([LIFELINE, "gateway", *args], capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise AssertionError(f"lifeline gateway {' '.join(args)}: {r.stderr}")
        return r

    def import_devices(self, records: Sequence[dict[str, object]]) -> None:
        prov = self.dir / "devices.jsonl"
        prov.write_text("".join(json.dumps(r) + "\n" for r in records))
        self.cli("devices", "import", str(prov), "--config", str(self.config))

    def start(self) -> None:
        (self.state / "metrics.addr").unlink(missing_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen([LIFELINE, "gateway", "run", "--config", str(self.config)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        wait_until(lambda: self._metrics_url() is not None or self.proc is None or self.proc.poll() is not None,
                   30, f"{self.id} metrics endpoint")
        assert self.proc.poll() is None, self.log_tail()

    def _metrics_url(self) -> str | None:
        try:
            addr = (self.state / "metrics.addr").read_text().strip()
        except FileNotFoundError:
            return None
        return f"http://{addr}/metrics" if addr else None

    def metric(self, name: str, **labels: str) -> float:
        from lifeline.gateway.metrics import parse_text

        url = self._metrics_url()
        if url is None:
            return 0.0
        with urllib.request.urlopen(url, timeout=5) as resp:
            metrics = parse_text(resp.read().decode())
        return sum(v for lab, v in metrics.get(f"lifeline_gateway_{name}", [])
                   if all(lab.get(k) == x for k, x in labels.items()))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class SinkProcess:
    """One ``lifeline platform-sink --source nats://… --store URL --json`` process."""

    def __init__(self, workdir: Path, name: str, source_url: str, store_url: str,
                 trust: Sequence[tuple[str, Path]], extra: Sequence[str] = ()) -> None:
        self.name = name
        self.out = workdir / f"{name}.jsonl"
        self.err = workdir / f"{name}.log"
        self.args = [LIFELINE, "platform-sink", "--source", source_url, "--store", store_url, "--json",
                     "--client-id", name, *[a for gw, p in trust for a in ("--trust", f"{gw}={p}")], *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SinkProcess:
        out, err = open(self.out, "ab"), open(self.err, "ab")  # noqa: SIM115 - the child owns them
        try:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            out.close()
            err.close()
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_until(lambda: any(e.get("event") == "ready" for e in self.events()) or not self.alive(), timeout_s,
                   f"{self.name} ready", self.log_tail)
        assert self.alive(), self.log_tail()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        out = []
        try:
            text = self.out.read_text(errors="replace")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by kill -9
        return out

    def summary(self) -> dict[str, Any] | None:
        found = [e for e in self.events() if e.get("event") == "summary"]
        return found[-1] if found else None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> int | None:
        """SIGINT (the CLI prints its summary and exits), bounded; then SIGKILL."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.err.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def rotated(cluster: NatsCluster, first: int) -> list[NatsNode]:
    """The cluster's nodes starting at index ``first``: each gateway prefers a different node."""
    n = cluster.nodes
    return [n[(first + i) % len(n)] for i in range(len(n))]
