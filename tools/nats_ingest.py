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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lifeline.gateway.testing_proc import (
    LIFELINE,
    Endpoint,
    GatewayProcess,
    GatewaySpec,
    log_tail,
    stop_process,
    wait_until,
)
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.natsserver import NatsCluster, NatsNode


def nats_gateway(workdir: Path, gateway_id: str, endpoints: Sequence[NatsNode], nodes_broker: MosquittoBroker, *,
                 max_inflight: int = 4, batch_max: int = 512) -> GatewayProcess:
    """One ``lifeline gateway run`` of the rig, in ``workdir``: its NB-IoT nodes on ``nodes_broker``, an MQTT 3.1.1
    uplink to every node of ``endpoints`` in this gateway's priority order (the first is preferred), failing
    back to it after 5 s."""
    spec = GatewaySpec(
        gateway_id,
        endpoints=[Endpoint(n.name, "127.0.0.1", n.ports.mqtt, priority=i) for i, n in enumerate(endpoints)],
        nbiot_broker=("127.0.0.1", nodes_broker.port),
        sections={
            "forwarder": {"max_inflight": max_inflight, "batch_max": batch_max, "retry_initial_ms": 200,
                          "retry_max_ms": 2000},
            "uplink": {"protocol": "3.1.1", "publish_timeout_s": 8, "backoff_initial_s": 1, "backoff_max_s": 2,
                       "failback_s": 5},
        })
    return GatewayProcess(workdir, spec)


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
        return None if self.proc is None else stop_process(self.proc, signal.SIGINT)

    def log_tail(self, n: int = 30) -> str:
        return log_tail(self.err, n)


def rotated(cluster: NatsCluster, first: int) -> list[NatsNode]:
    """The cluster's nodes starting at index ``first``: each gateway prefers a different node."""
    n = cluster.nodes
    return [n[(first + i) % len(n)] for i in range(len(n))]
