"""Shared pytest fixtures for every Lifeline part (registered as the ``lifeline`` pytest11 plugin).

- ``mosquitto``: a plain Mosquitto broker on a free loopback port, one per test.
- ``test_pki``: a CA with server certificate (127.0.0.1/localhost), one per session.
- ``pg_server``: a real PostgreSQL cluster (initdb in a temp dir) on a free loopback port, one per test.
- ``mosquitto_tls``: a broker whose TLS listener (``tls_port``) requires client certificates from
  ``test_pki``; the plain listener (``port``) stays available for test helpers.

- ``nats_cluster``: a 3-node NATS cluster (JetStream, routes, MQTT listener) on free loopback ports.
- ``nats_single``: one NATS node with JetStream and the MQTT listener.

Each broker is stopped after its test and the test fails if the process is still alive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeline.tools.broker import MosquittoBroker, TestPKI
from lifeline.tools.natsserver import NatsCluster
from lifeline.tools.pgserver import PgServer
from lifeline.tools.softhsm import SoftHsm, make_softhsm

SOFTHSM_TOKENS = {"lifeline-test": "Test-PIN-24681357", "lifeline-spare": "Spare-PIN-q7Z3kW9x"}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); Popen.wait() reaped ours, so anything left is really running
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state == "Z"


def _run(broker: MosquittoBroker) -> Iterator[MosquittoBroker]:
    broker.start()
    pids: list[int] = []
    try:
        yield broker
    finally:
        if broker.pid is not None:
            pids.append(broker.pid)
        broker.close()
    leftover = [pid for pid in pids if not _gone(pid)]
    assert not leftover, f"mosquitto still running after the test: {leftover}"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A real Mosquitto broker (plain listener on 127.0.0.1:``port``), stopped after the test."""
    yield from _run(MosquittoBroker(workdir=tmp_path / "mosquitto"))


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """CA + server certificate for 127.0.0.1; ``test_pki.client(name)`` issues client certificates."""
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mosquitto_tls(tmp_path: Path, test_pki: TestPKI) -> Iterator[MosquittoBroker]:
    """Mosquitto with a TLS listener on ``tls_port`` that requires client certificates."""
    yield from _run(MosquittoBroker(workdir=tmp_path / "mosquitto-tls", pki=test_pki))


@pytest.fixture
def pg_server(tmp_path: Path) -> Iterator[PgServer]:
    """A real PostgreSQL server (``pg_server.url``), fsync off for speed, removed after the test."""
    server = PgServer(tmp_path / "pg", durable=False).start()
    pid = server.pid
    try:
        yield server
    finally:
        server.close()
    assert pid is None or _gone(pid), f"postgres still running after the test: {pid}"


def _run_nats(cluster: NatsCluster) -> Iterator[NatsCluster]:
    cluster.start()
    try:
        yield cluster
    finally:
        pids = [n.pid for n in cluster.nodes if n.pid is not None]
        cluster.close()
    leftover = [pid for pid in pids if not _gone(pid)]
    assert not leftover, f"nats-server still running after the test: {leftover}"


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three real nats-server nodes (routes, JetStream, MQTT listener each), stopped after the test."""
    yield from _run_nats(NatsCluster(3, workdir=tmp_path / "nats"))


@pytest.fixture
def nats_single(tmp_path: Path) -> Iterator[NatsCluster]:
    """One real nats-server (JetStream + MQTT listener), stopped after the test."""
    yield from _run_nats(NatsCluster(1, workdir=tmp_path / "nats1"))


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """SoftHSM2 with the tokens of SOFTHSM_TOKENS initialised; SOFTHSM2_CONF set for this process."""
    hsm = make_softhsm(tmp_path_factory.mktemp("softhsm"), SOFTHSM_TOKENS)
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    try:
        yield hsm
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old
