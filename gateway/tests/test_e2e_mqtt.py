"""End to end over real MQTT: simulated NB-IoT nodes -> node broker -> ``lifeline gateway run`` (a real
subprocess) -> platform broker -> reference platform sink. Real Mosquitto, real SQLite, real keys.

Two brokers, as deployed: the NB-IoT operator's broker the nodes talk to, and the city platform's broker
the gateway uplinks to, so the platform side can fail while nodes keep reporting.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeline.gateway.testing import TestNode
from lifeline.gateway.testing_proc import Endpoint, GatewayProcess, GatewaySpec, wait_until
from lifeline.protocols import frame, schema
from lifeline.tools.broker import CertPair, MosquittoBroker, TestPKI
from lifeline.tools.nbiot_sim import NbiotNodeSim
from lifeline.tools.pgserver import PgServer
from lifeline.tools.platform_sink import PlatformSink, SinkTimeout

GW = "gw-e2e"
Key = tuple[bytes, int]  # (device id, fcnt)


def new_gateway(tmp: Path, platform: MosquittoBroker, nodes_broker: MosquittoBroker, *,
                tls: tuple[TestPKI, CertPair] | None = None, dedupe_window_ms: int | None = None,
                suite: str = "intl", certificate_file: Path | None = None) -> GatewayProcess:
    """The gateway under test in ``tmp``: an nbiot-mqtt ingress on the node broker, the platform broker as its one
    uplink endpoint (with ``tls``, on its TLS listener with a client certificate)."""
    if tls is None:
        platform_ep = Endpoint("platform", "127.0.0.1", platform.port)
    else:
        pki, pair = tls
        assert platform.tls_port is not None, "the platform broker has no TLS listener"
        platform_ep = Endpoint("platform", "127.0.0.1", platform.tls_port, tls_ca=pki.ca_cert, tls_cert=pair.cert,
                               tls_key=pair.key)
    gateway: dict[str, object] = {"suite": suite}
    if certificate_file is not None:
        gateway["certificate_file"] = certificate_file
    sections: dict[str, dict[str, object]] = {"gateway": gateway}
    if dedupe_window_ms is not None:
        sections["dedupe"] = {"window_ms": dedupe_window_ms, "collect_ms": min(200, dedupe_window_ms)}
    return GatewayProcess(tmp, GatewaySpec(GW, endpoints=[platform_ep], nbiot_broker=("127.0.0.1", nodes_broker.port),
                                           sections=sections))


@contextlib.contextmanager
def explained(gw: GatewayProcess) -> Iterator[None]:
    """A wait that times out reports what the gateway logged (its stderr goes to a file)."""
    try:
        yield
    except SinkTimeout as e:
        raise AssertionError(f"{e}\n--- gateway log tail ---\n{gw.log_tail(80)}") from None


@pytest.fixture
def nodes_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(workdir=tmp_path / "nodes-broker") as b:
        yield b


def make_nodes(n: int, prefix: str = "e2e") -> list[TestNode]:
    return [TestNode(bytes.fromhex(f"7e{i:014x}"), kind="smoke", root_key=f"{prefix}-{i}".encode().ljust(32, b"."))
            for i in range(n)]


def sim(broker: MosquittoBroker, node: TestNode) -> NbiotNodeSim:
    return NbiotNodeSim(broker.host, broker.port, node.device_id, node.root_key)


def smoke(s: NbiotNodeSim, temp: int) -> bytes:
    return s.send(schema.K_SMOKE, {1: 0, 5: temp, 15: 3000})


def sink_keys(sink: PlatformSink) -> list[Key]:
    return sink.record_keys()


def trust(gw: GatewayProcess) -> dict[str, bytes]:
    return {GW: bytes.fromhex(gw.public_key_hex)}


# ------------------------------------------------------------------------------------------------- tests


def test_nbiot_frames_reach_the_platform_verified_and_in_order(
    tmp_path: Path, mosquitto: MosquittoBroker, nodes_broker: MosquittoBroker
) -> None:
    nodes = make_nodes(3)
    gw = new_gateway(tmp_path, mosquitto, nodes_broker)
    gw.import_devices(n.record() for n in nodes)
    with PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / "platform.db", trust=trust(gw)) as sink:
        gw.start()
        try:
            sink.wait_for(lambda s: s.presence.get(GW) == "online", 30, "gateway online")
            gw.wait_subscribed()  # the nodes publish next
            sims = [sim(nodes_broker, n).connect() for n in nodes]
            sent: list[Key] = []
            for i in range(20):
                for s in sims:
                    smoke(s, 200 + i)
                    sent.append((s.device_id, s.fcnt - 1))
            sink.wait_records(len(sent), 60)
            got = sink_keys(sink)
            assert sorted(got) == sorted(sent)
            for n in nodes:  # in order per device
                assert [r.fcnt for r in sink.records(n.device_id)] == list(range(1, 21))
            rec = sink.records(nodes[0].device_id)[3]
            assert rec.gateway == GW and rec.kind == schema.K_SMOKE
            assert rec.fields["temperature"]["value"] == 20.3  # 203 in 0.1 degC, decrypted and verified
            (chain,) = sink.chain_report()
            assert chain.intact, chain
            assert sink.counters["rejected"] == 0
            assert gw.metric("readings_accepted_total", radio="nbiot") == len(sent)
            for s in sims:
                s.disconnect()
        finally:
            gw.stop()
        sink.wait_for(lambda s: s.presence.get(GW) == "offline", 30, "offline presence after SIGTERM")
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log_tail()


def test_platform_broker_restart_loses_nothing(tmp_path: Path, nodes_broker: MosquittoBroker) -> None:
    # The platform broker keeps sessions across its restart (persistence on) and the sink holds a persistent,
    # non-shared subscription, so the broker queues batches for it even before it has reconnected.
    nodes = make_nodes(2)
    with MosquittoBroker(workdir=tmp_path / "platform-broker", persistence=True) as platform:
        gw = new_gateway(tmp_path, platform, nodes_broker)
        gw.import_devices(n.record() for n in nodes)
        sink = PlatformSink(platform.host, platform.port, db=tmp_path / "platform.db", trust=trust(gw),
                            client_id="sink-durable", session_expiry_s=3600, share_group=None).start()
        gw.start()
        try:
            sink.wait_for(lambda s: s.presence.get(GW) == "online", 30, "gateway online")
            gw.wait_subscribed()  # the nodes publish next
            sims = [sim(nodes_broker, n).connect() for n in nodes]
            before = [smoke(s, 210) for s in sims for _ in range(5)]
            sink.wait_records(len(before), 30)

            platform.stop()
            wait_until(lambda: gw.metric("uplink_connected") == 0, 30, "gateway notices the broker is gone")
            during = [smoke(s, 220) for s in sims for _ in range(15)]
            accepted = len(before) + len(during)
            wait_until(lambda: gw.metric("readings_accepted_total") == accepted, 30, "frames accepted offline")
            wait_until(lambda: len(gw.buffered_readings()) == len(during), 30, "offline readings committed")
            assert sink.record_count() == len(before)

            platform.start()  # same port; nothing is told to reconnect
            sink.wait_records(accepted, 60)
            wait_until(lambda: gw.metric("uplink_connected") == 1, 30, "gateway reconnected by itself")
            keys = sink_keys(sink)
            assert len(keys) == len(set(keys)) == accepted
            expected = {(n.device_id, f) for n in nodes for f in range(1, 21)}
            assert set(keys) == expected
            assert sink.chain_report()[0].intact
            for s in sims:
                s.disconnect()
        finally:
            gw.stop()
            sink.stop()


def test_sink_stores_into_postgresql_and_carries_on_after_a_postgres_restart(
    tmp_path: Path, mosquitto: MosquittoBroker, nodes_broker: MosquittoBroker, pg_server: PgServer
) -> None:
    # A real gateway -> Mosquitto -> sink -> a real PostgreSQL that is stopped (pg_ctl stop -m fast) and
    # started again mid-stream: the sink holds the batch it could not store, retries by itself, reconnects.
    nodes = make_nodes(3)
    gw = new_gateway(tmp_path, mosquitto, nodes_broker)
    gw.import_devices(n.record() for n in nodes)
    with PlatformSink(mosquitto.host, mosquitto.port, store=pg_server.url, trust=trust(gw),
                      store_retry_s=60) as sink:
        gw.start()
        sims = [sim(nodes_broker, n).connect() for n in nodes]
        try:
            sink.wait_for(lambda s: s.presence.get(GW) == "online", 30, "gateway online")
            gw.wait_subscribed()  # the nodes publish next
            before = [smoke(s, 200) for s in sims for _ in range(5)]
            sink.wait_records(len(before), 30)
            pg_server.stop(fast=True)
            during = [smoke(s, 210) for s in sims for _ in range(10)]
            sink.wait_for(lambda s: s.counters["store_retries"] > 0, 30, "a store retry while postgres is down")
            pg_server.start()  # same port; nothing tells the sink
            sink.wait_records(len(before) + len(during), 60)
            keys = sink_keys(sink)
            assert len(keys) == len(set(keys)) == len(before) + len(during)
            assert set(keys) == {(n.device_id, f) for n in nodes for f in range(1, 16)}
            for n in nodes:  # in order per device
                assert [r.fcnt for r in sink.records(n.device_id)] == list(range(1, 16))
            assert sink.chain_report()[0].intact
            assert sink.counters["db_errors"] == 0 and sink.counters["rejected"] == 0
            assert sink.store.counters["reconnects"] >= 1  # type: ignore[attr-defined]
            for s in sims:
                s.disconnect()
        finally:
            gw.stop()


def test_kill_9_mid_stream_loses_no_committed_reading(
    tmp_path: Path, mosquitto: MosquittoBroker, nodes_broker: MosquittoBroker
) -> None:
    nodes = make_nodes(3)
    gw = new_gateway(tmp_path, mosquitto, nodes_broker)
    gw.import_devices(n.record() for n in nodes)
    with PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / "platform.db", trust=trust(gw)) as sink:
        gw.start()
        sims = [sim(nodes_broker, n).connect() for n in nodes]
        try:
            sink.wait_for(lambda s: s.presence.get(GW) == "online", 30, "gateway online")
            gw.wait_subscribed()  # the nodes publish next
            stop = threading.Event()
            errors: list[BaseException] = []
            published = [0]

            def stream() -> None:  # nodes keep reporting, before, during and after the crash
                try:
                    i = 0
                    while not stop.is_set():
                        for s in sims:
                            smoke(s, 100 + i % 50)
                            published[0] += 1
                        i += 1
                except BaseException as e:  # surfaced below
                    errors.append(e)

            t = threading.Thread(target=stream, name="nodes")
            t.start()
            sink.wait_records(60, 60)  # the platform is receiving: mid-stream
            gw.kill()
            at_kill = published[0]
            committed = gw.buffered_readings() | set(sink_keys(sink))  # durable at the moment of death
            wait_until(lambda: published[0] >= at_kill + 90 or bool(errors), 60, "frames while the gateway is dead")
            stop.set()
            t.join(60)
            assert not t.is_alive() and not errors, errors
            assert len(committed) >= 60
            sent = {(s.device_id, f) for s in sims for f in range(1, s.fcnt)}
            assert len(sent) > len(committed)  # the kill really came mid-stream
            sink.wait_for(lambda s: s.presence.get(GW) == "offline", 30, "will published for the dead gateway")

            gw.start()  # same state dir, same key, same chain
            sink.wait_for(lambda s: committed <= set(sink_keys(s)), 90, "every committed reading")
            # The adapter PUBACKs a frame to the node broker only after its reading was committed, so every
            # frame not committed at the kill was still the broker's, and comes now: nothing is lost.
            sink.wait_for(lambda s: set(sink_keys(s)) == sent, 90, "every frame the nodes published")
            keys = sink_keys(sink)
            assert len(keys) == len(set(keys))
            (chain,) = sink.chain_report()
            assert not chain.broken_links and not chain.equivocations, chain
        finally:
            for s in sims:
                s.disconnect()
            gw.stop()


def test_tls_with_client_certificates(
    tmp_path: Path, mosquitto_tls: MosquittoBroker, test_pki: TestPKI, nodes_broker: MosquittoBroker
) -> None:
    nodes = make_nodes(1)
    pair = test_pki.client(GW)  # CN = gateway id = MQTT username
    gw = new_gateway(tmp_path, mosquitto_tls, nodes_broker, tls=(test_pki, pair))
    gw.import_devices(n.record() for n in nodes)
    with PlatformSink(mosquitto_tls.host, mosquitto_tls.port, db=tmp_path / "platform.db", trust=trust(gw)) as sink:
        gw.start()
        try:
            sink.wait_for(lambda s: s.presence.get(GW) == "online", 30, "gateway online over TLS")
            gw.wait_subscribed()  # the nodes publish next
            with sim(nodes_broker, nodes[0]) as s:
                for i in range(5):
                    smoke(s, 200 + i)
            sink.wait_records(5, 30)
            assert gw.metric("uplink_up", endpoint="platform", state="connected") == 1
        finally:
            gw.stop()
    # the broker took the certificate's common name as the username
    assert f"u'{GW}')" in mosquitto_tls.log_text()


def test_bad_frames_through_nbiot_are_rejected_and_nothing_is_forwarded(
    tmp_path: Path, mosquitto: MosquittoBroker, nodes_broker: MosquittoBroker
) -> None:
    nodes = make_nodes(3)
    good, to_revoke, _ = nodes
    unknown = TestNode(bytes.fromhex("7effffffffffffff"), kind="smoke")  # never imported
    gw = new_gateway(tmp_path, mosquitto, nodes_broker, dedupe_window_ms=0)
    gw.import_devices(n.record() for n in nodes)
    with PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / "platform.db", trust=trust(gw)) as sink:
        gw.start()
        try:
            sink.wait_for(lambda s: s.presence.get(GW) == "online", 30, "gateway online")
            gw.wait_subscribed()  # the nodes publish next
            with sim(nodes_broker, good) as g, sim(nodes_broker, to_revoke) as r, sim(nodes_broker, unknown) as u:
                first = smoke(g, 201)  # accepted
                sink.wait_records(1, 30)
                forged = first[:-1] + bytes([first[-1] ^ 1])  # MIC bit flipped (fcnt 1 again)
                g.publish_raw(g.encode(schema.K_SMOKE, {1: 0, 5: 202, 15: 3000})[:-8] + b"\x00" * 8)  # bad MIC
                g.publish_raw(forged)
                g.publish_raw(first)  # replay of an accepted frame
                smoke(u, 200)  # unknown device
                gw.cli("devices", "revoke", to_revoke.hex, "--config", str(gw.config))
                wait_until(lambda: gw.metric("devices", status="revoked") == 1, 30, "registry reload")
                smoke(r, 200)  # revoked device
                g.publish_raw(b"\x11\x07\x00" + b"\x00" * 5)  # garbage: truncated
                g.publish_raw(os.urandom(300))  # garbage: too long
                g.publish_raw(bytes([0x51]) + first[1:])  # garbage: wrong version
                g.publish_raw(smoke_for(to_revoke), topic=g.up_topic)  # another node's frame on g's topic
                last = smoke(g, 203)  # a good frame last: when it arrives, everything before was judged
                sink.wait_records(2, 30)
            rejects = {lab["reason"]: v for lab, v in gw.metrics().get("lifeline_gateway_rejects_total", [])
                       if v}
            adapter = {lab["counter"]: v for lab, v in gw.metrics().get("lifeline_gateway_adapter_counter", [])
                       if lab.get("adapter") == "nb0" and v}
        finally:
            gw.stop()
        assert sink_keys(sink) == [(good.device_id, 1), (good.device_id, frame.parse_header(last).fcnt)]
        assert sink.counters["rejected"] == 0
    assert rejects.get("bad_mic") == 2, rejects
    assert rejects.get("replay", 0) + rejects.get("counter_reuse", 0) == 1, rejects
    assert rejects.get("unknown_device") == 1, rejects
    assert rejects.get("revoked_device") == 1, rejects
    assert adapter.get("rejected.truncated") == 1, adapter
    assert adapter.get("rejected.too_long") == 1, adapter
    assert adapter.get("rejected.bad_version") == 1, adapter
    assert adapter.get("rejected.topic_mismatch") == 1, adapter


def smoke_for(node: TestNode) -> bytes:
    return frame.encode(node.keys, node.device_id, 99, 1000, schema.K_SMOKE, {1: 0, 5: 200, 15: 3000})


def test_sm_suite_batches_are_verified_at_the_sink_end_to_end(
    tmp_path: Path, mosquitto: MosquittoBroker, nodes_broker: MosquittoBroker
) -> None:
    """Suite sm: the gateway signs with SM2 (key from `keygen --suite sm`), the sink verifies with the pinned
    65-byte SM2 public key; an Ed25519 pin for the same gateway refuses the batches as the wrong suite."""
    nodes = make_nodes(2, prefix="sm")
    gw = new_gateway(tmp_path, mosquitto, nodes_broker, suite="sm")
    assert len(bytes.fromhex(gw.public_key_hex)) == 65
    gw.import_devices(n.record() for n in nodes)
    from lifeline.protocols import keys

    wrong = {GW: keys.public_key_raw(keys.generate_for("intl"))}
    with PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / "platform.db", trust=trust(gw)) as sink, \
            PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / "wrong.db", trust=wrong,
                         share_group=None) as wrong_sink:
        gw.start()
        try:
            sink.wait_for(lambda s: s.presence.get(GW) == "online", 30, "gateway online")
            gw.wait_subscribed()  # the nodes publish next
            sims = [sim(nodes_broker, n).connect() for n in nodes]
            sent = [(s.device_id, (smoke(s, 210 + i), s.fcnt - 1)[1]) for i in range(5) for s in sims]
            with explained(gw):
                sink.wait_records(len(sent), 60)
            assert sorted(sink_keys(sink)) == sorted(sent)
            (chain,) = sink.chain_report()
            assert chain.intact and sink.counters["rejected"] == 0
            wrong_sink.wait_for(lambda s: s.counters["rejected"] > 0, 30, "wrong-suite rejection")
            assert wrong_sink.record_count() == 0
            assert {r for _, r, _ in wrong_sink.rejects()} == {"bad_alg"}
            for s in sims:
                s.disconnect()
        finally:
            gw.stop()


def test_gateway_identity_from_a_ca_over_mqtt(
    tmp_path: Path, mosquitto: MosquittoBroker, nodes_broker: MosquittoBroker
) -> None:
    """`gateway csr` -> the city CA issues -> certificate_file: the batches carry the chain (x5chain) and a sink
    with only --ca verifies them; a sink trusting another CA refuses them (untrusted_certificate), and one with
    the CA's CRL naming the gateway refuses them (revoked). Three sinks, one gateway, real Mosquitto."""
    from lifeline.protocols import gwcert
    from lifeline.tools.testca import TestCA

    cert_file = tmp_path / "gateway.crt"
    nodes = make_nodes(1, prefix="ca")
    gw = new_gateway(tmp_path, mosquitto, nodes_broker, suite="sm", certificate_file=cert_file)
    gw.import_devices(n.record() for n in nodes)
    csr = gw.cli("csr", "--config", str(gw.config)).stdout.encode()
    city = TestCA(tmp_path / "city-ca", "sm")
    rogue = TestCA(tmp_path / "rogue-ca", "sm")  # same CA name, another key
    cert = city.issue(csr, GW)
    cert_file.write_bytes(cert)
    city.revoke(cert)
    crl = city.crl()

    def sink(name: str, ca: gwcert.CaTrust) -> PlatformSink:
        return PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / f"{name}.db", trust={}, ca=ca,
                            share_group=None, client_id=f"sink-{name}")

    with sink("city", gwcert.CaTrust.from_files(city.cert.read_bytes())) as good, \
            sink("rogue", gwcert.CaTrust.from_files(rogue.cert.read_bytes())) as other, \
            sink("crl", gwcert.CaTrust.from_files(city.cert.read_bytes(), crl)) as revoked:
        gw.start()
        try:
            good.wait_for(lambda x: x.presence.get(GW) == "online", 30, "gateway online")
            gw.wait_subscribed()  # the nodes publish next
            s = sim(nodes_broker, nodes[0]).connect()
            sent = []
            for i in range(4):
                smoke(s, 200 + i)
                sent.append((s.device_id, s.fcnt - 1))
            with explained(gw):
                good.wait_records(len(sent), 60)
                other.wait_for(lambda x: x.counters["rejected"] > 0, 30, "rogue-CA sink rejects")
                revoked.wait_for(lambda x: x.counters["rejected"] > 0, 30, "CRL sink rejects")
            assert sorted(sink_keys(good)) == sorted(sent) and good.counters["rejected"] == 0
            assert other.record_count() == 0 and revoked.record_count() == 0
            assert {r for _, r, _ in other.rejects()} == {"untrusted_certificate"}
            assert {r for _, r, _ in revoked.rejects()} == {"revoked"}
            assert other.counters["rejected.untrusted_certificate"] > 0 and revoked.counters["rejected.revoked"] > 0
            s.disconnect()
        finally:
            gw.stop()
