"""City-scale ingest end to end: gateways -> MQTT -> 3-node NATS cluster (JetStream) -> 3 sink processes -> store
(PostgreSQL, and the embedded SQLite).

Real everything: ``lifeline gateway run`` daemons with MQTT 3.1.1 uplinks listing all three nodes (each
gateway prefers a different node), their NB-IoT nodes simulated over a Mosquitto each, three
``lifeline platform-sink --source nats://…`` processes sharing the durable consumer, one store.
Faults mid-stream: a sink frozen then ``kill -9``-ed (its pulled batches go to the others after
``ack_wait``), a NATS node ``kill -9``-ed (its gateway fails over; the stream keeps a quorum) and started
again, PostgreSQL restarted. Nothing lost, nothing stored twice, chains verified.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeline.gateway.testing import TestNode
from lifeline.gateway.testing_proc import GatewayProcess, wait_until
from lifeline.protocols import schema
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.nats_ingest import SinkProcess, nats_gateway, rotated
from lifeline.tools.natsserver import NatsCluster
from lifeline.tools.nbiot_sim import NbiotNodeSim
from lifeline.tools.pgserver import PgServer
from lifeline.tools.platform.store import Store, open_store

Key = tuple[bytes, int]
GATEWAYS = ("gw-a", "gw-b", "gw-c")
NODES_PER_GATEWAY = 3


def make_nodes(gw_index: int) -> list[TestNode]:
    return [TestNode(bytes.fromhex(f"7{gw_index}{i:014x}"), kind="smoke",
                     root_key=f"nats-{gw_index}-{i}".encode().ljust(32, b"."))
            for i in range(NODES_PER_GATEWAY)]


class Rig:
    def __init__(self, tmp: Path, cluster: NatsCluster, store_url: str) -> None:
        self.tmp = tmp
        self.cluster = cluster
        self.store_url = store_url
        self.brokers: list[MosquittoBroker] = []
        self.gateways: list[GatewayProcess] = []
        self.nodes: list[list[TestNode]] = []
        self.sims: list[NbiotNodeSim] = []
        self.sinks: list[SinkProcess] = []
        self.pg: PgServer | None = None
        for i, gw_id in enumerate(GATEWAYS):
            b = MosquittoBroker(workdir=tmp / f"nodes-{gw_id}").start()
            self.brokers.append(b)
            gw = nats_gateway(tmp / gw_id, gw_id, rotated(cluster, i), b)
            nodes = make_nodes(i)
            gw.import_devices([n.record() for n in nodes])
            self.gateways.append(gw)
            self.nodes.append(nodes)
        self.trust = [(gw.id, gw.public_key_file) for gw in self.gateways]
        self.source_url = f"nats://{','.join(u[len('nats://'):] for u in cluster.urls)}?ack_wait=3"

    def sink(self, name: str) -> SinkProcess:
        s = SinkProcess(self.tmp, name, self.source_url, self.store_url, self.trust)
        self.sinks.append(s)
        return s

    def connect_nodes(self) -> None:
        for b, nodes in zip(self.brokers, self.nodes, strict=True):
            for n in nodes:
                self.sims.append(NbiotNodeSim(b.host, b.port, n.device_id, n.root_key).connect())

    def sent(self) -> set[Key]:
        return {(s.device_id, f) for s in self.sims for f in range(1, s.fcnt)}

    def close(self) -> None:
        for s in self.sims:
            s.disconnect()
        for gw in self.gateways:
            gw.stop()
        for sk in self.sinks:
            sk.stop()
        for b in self.brokers:
            b.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def rig(request: pytest.FixtureRequest, tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Rig]:
    if request.param == "postgresql":
        pg: PgServer = request.getfixturevalue("pg_server")
        r = Rig(tmp_path, nats_cluster, pg.url)
        r.pg = pg
    else:
        r = Rig(tmp_path, nats_cluster, f"sqlite:{tmp_path / 'platform.db'}")
    try:
        yield r
    finally:
        r.close()


def stored_keys(store: Store) -> list[Key]:
    return store.record_keys()


def test_three_gateways_three_sinks_faults_lose_nothing(rig: Rig) -> None:
    sinks = [rig.sink(f"sink-{i}").start() for i in range(3)]
    for s in sinks:
        s.wait_ready()
    for gw in rig.gateways:
        gw.start()
    wait_until(lambda: all(g.metric("uplink_connected") == 1 for g in rig.gateways), 30, "gateways connected",
               lambda: "\n".join(g.log_tail(10) for g in rig.gateways))
    for i, gw in enumerate(rig.gateways):  # each gateway on its own preferred node
        # a node's MQTT listener can miss the first CONNACK deadline on a loaded machine; the gateway then
        # starts on another node and fails back to its preferred one after failback_s (5 s)
        node = rig.cluster.nodes[i].name

        def on_preferred(gw: GatewayProcess = gw, node: str = node) -> bool:
            return gw.metric("uplink_up", endpoint=node, state="connected") == 1

        wait_until(on_preferred, 60, f"{gw.id} on its preferred node {node}", gw.log_tail)
    rig.connect_nodes()
    store = open_store(rig.store_url, create=False)
    stop = threading.Event()
    errors: list[BaseException] = []
    published = [0]

    def stream() -> None:  # every node keeps reporting through the faults
        try:
            i = 0
            while not stop.is_set():
                for s in rig.sims:
                    s.send(schema.K_SMOKE, {1: 0, 5: 200 + i % 50, 15: 3000})
                    published[0] += 1
                i += 1
        except BaseException as e:  # surfaced below
            errors.append(e)

    t = threading.Thread(target=stream, name="nodes")
    t.start()
    try:
        wait_until(lambda: store.record_count() >= 60, 60, "the platform is receiving")

        # a sink hangs with batches pulled and unacknowledged, then dies: the others get them after ack_wait
        victim = sinks[0]
        victim.pause()
        mark = published[0]
        wait_until(lambda: published[0] >= mark + 60, 60, "frames while a sink hangs")
        victim.kill()

        # the NATS node gw-a prefers dies: gw-a fails over, the R3 stream keeps a quorum
        dead = rig.cluster.nodes[0]
        dead.kill()
        mark = published[0]
        wait_until(lambda: published[0] >= mark + 60, 60, "frames while a NATS node is dead")
        wait_until(lambda: rig.gateways[0].metric("uplink_connected") == 1, 60, "gw-a failed over",
                   rig.gateways[0].log_tail)
        assert rig.gateways[0].metric("uplink_up", endpoint=dead.name, state="connected") == 0
        rig.cluster.restart(dead)
        mark = published[0]
        wait_until(lambda: published[0] >= mark + 60, 60, "frames after the node came back")

        if rig.pg is not None:  # the database goes away and comes back: sinks hold, retry, then nak
            rig.pg.restart()
            store.close()
            store = open_store(rig.store_url, create=False)  # this test's own connection died with it
            mark = published[0]
            wait_until(lambda: published[0] >= mark + 60, 60, "frames after PostgreSQL restarted")
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive() and not errors, errors

    sent = rig.sent()
    def missing() -> str:
        return f"missing {len(sent - set(stored_keys(store)))} of {len(sent)}; {[s.log_tail(5) for s in rig.sinks]}"

    wait_until(lambda: set(stored_keys(store)) == sent, 300, "every reading the nodes published", missing)
    keys = stored_keys(store)
    assert len(keys) == len(set(keys)) == len(sent)  # exactly once, by key
    for nodes in rig.nodes:  # every device complete, in counter order
        for n in nodes:
            fcnts = sorted(r.fcnt for r in store.records(n.device_id))
            assert fcnts == list(range(1, len(fcnts) + 1))
    reports = {r.gateway: r for r in store.chain_report()}
    assert set(reports) == set(GATEWAYS)
    for r in reports.values():
        assert r.intact, r  # no gap, no broken link, no equivocation
    survivors = [s.stop() for s in sinks[1:]]
    assert survivors == [0, 0], [s.log_tail() for s in sinks[1:]]
    summaries = [s.summary() for s in sinks[1:]]
    assert all(x is not None for x in summaries)
    redelivered = sum(int(x["source"].get("redelivered", 0)) for x in summaries if x is not None)
    assert redelivered > 0, summaries  # the hung sink's batches came again, to the others
    by_sink = store.records_by_sink()
    assert set(by_sink) <= {"sink-0", "sink-1", "sink-2"} and by_sink.get("sink-1") and by_sink.get("sink-2")
    store.close()
