"""A real gateway daemon on NATS's MQTT listener (MQTT 3.1.1): presence, batches, and platform commands
through the sink's NATS source, including a command sent while the gateway is offline (kept in
``$MQTT_msgs`` and delivered to its persistent MQTT session when it comes back). Plus the URL and subject
mapping of the NATS source."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.gateway.mqtt_async import TlsFiles
from lifeline.gateway.testing import TestNode
from lifeline.gateway.testing_proc import wait_until
from lifeline.protocols import schema
from lifeline.tools.broker import MosquittoBroker, TestPKI
from lifeline.tools.nats_ingest import nats_gateway
from lifeline.tools.natsserver import NatsCluster
from lifeline.tools.nbiot_sim import NbiotNodeSim
from lifeline.tools.platform import nats_source as ns
from lifeline.tools.platform.source import Delivery, SourceError
from lifeline.tools.platform_sink import PlatformSink


def test_url_options_and_refusals() -> None:
    u = ns.parse_nats_url("nats://127.0.0.1:4000,h2:4001?durable=sinks-b&replicas=1&max_age=3600&ack_wait=5")
    assert u.servers == ("nats://127.0.0.1:4000", "nats://h2:4001")
    assert (u.consumer.durable, u.consumer.ack_wait_s) == ("sinks-b", 5.0)
    assert (u.stream.replicas, u.stream.max_age_s) == (1, 3600.0)
    defaults = ns.parse_nats_url("nats://h:1")
    assert (defaults.consumer.durable, defaults.consumer.max_deliver, defaults.stream.max_age_s) == (
        "lifeline-sinks", -1, 7 * 86400.0)
    for bad, why in (("mqtt://h:1", "starts with nats://"), ("nats://h", "not HOST:PORT"),
                     ("nats://h:99999", "not HOST:PORT"), ("nats://h:1?replicas=9", "replicas"),
                     ("nats://h:1?durable=a.b", "durable"), ("nats://h:1?ack_wait=0", "ack_wait"),
                     ("nats://h:1?colour=red", "unknown option")):
        with pytest.raises(SourceError, match=why):
            ns.parse_nats_url(bad)


def test_subjects_and_topics_map_like_the_mqtt_listener() -> None:
    assert ns.subject_to_topic("$MQTT.msgs.lifeline.v1.gw-1.up.live") == "lifeline/v1/gw-1/up/live"
    assert ns.topic_to_subject("lifeline/v1/gw-1/down") == "lifeline.v1.gw-1.down"
    assert ns.topic_to_subject("a/b.c/d") == "a.b//c.d"  # a '.' inside a topic level
    assert ns.subject_to_topic(ns.topic_to_subject("a/b.c/d")) == "a/b.c/d"
    cfg = ns.stream_config(ns.StreamSettings(), 5)
    assert (cfg.name, cfg.num_replicas, cfg.subjects) == ("$MQTT_msgs", 3, ["$MQTT.msgs.>"])
    assert ns.stream_config(ns.StreamSettings(), 1).num_replicas == 1


def test_gateway_on_nats_mqtt_presence_batches_and_commands(
    tmp_path: Path, nats_single: NatsCluster, mosquitto: MosquittoBroker
) -> None:
    node = TestNode(bytes.fromhex("7c00000000000001"), kind="smoke", root_key=b"cmd-node".ljust(32, b"."))
    gw = nats_gateway(tmp_path / "gw", "gw-cmd", nats_single.nodes, mosquitto)
    gw.import_devices([node.record()])
    source = ns.NatsSource(nats_single.url)
    sink = PlatformSink("", 0, store=f"sqlite:{tmp_path / 'p.db'}", source=source,
                       trust={"gw-cmd": bytes.fromhex(gw.public_key_hex)})
    sink.start(30)
    sim = NbiotNodeSim(mosquitto.host, mosquitto.port, node.device_id, node.root_key)
    try:
        gw.start()
        sink.wait_for(lambda s: s.presence.get("gw-cmd") == "online", 30, "online presence over NATS")
        sim.connect()
        for t in range(5):
            sim.send(schema.K_SMOKE, {1: 0, 5: 200 + t, 15: 3000})
        sink.wait_records(5, 30)
        assert sink.chain_report()[0].intact

        cid = sink.send_command("gw-cmd", {"device": node.device_id.hex(), "command": "time_sync", "fields": {}})
        assert sink.wait_result(cid, 30)["status"] == "queued"  # the gateway's QoS 1 down subscription got it
        bad = sink.send_command("gw-cmd", {"device": "7c000000000000ff", "command": "time_sync", "fields": {}})
        assert sink.wait_result(bad, 30)["status"] == "rejected"

        gw.stop()  # SIGTERM: "offline" presence, the MQTT session stays on the server
        sink.wait_for(lambda s: s.presence.get("gw-cmd") == "offline", 30, "offline presence")
        later = sink.send_command("gw-cmd", {"device": node.device_id.hex(), "command": "time_sync", "fields": {}})
        gw.start()  # same client id: the session's consumer delivers what came meanwhile
        assert sink.wait_result(later, 60)["status"] == "queued"
        counters = sink.snapshot()["source"]
        assert counters["published"] == 3 and counters["acked"] >= 1
    finally:
        sim.disconnect()
        gw.stop()
        sink.stop()
    wait_until(lambda: gw.proc is not None and gw.proc.returncode == 0, 5, "gateway exit 0", gw.log_tail)


def test_a_slow_store_keeps_its_delivery(nats_single: NatsCluster) -> None:
    """While the handler works (a store retrying in place), the source tells JetStream "in progress", so the
    batch is not handed to another sink when ack_wait passes."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    url = f"{nats_single.url}?ack_wait=1.5"
    release = threading.Event()
    held: list[Delivery] = []
    other: list[Delivery] = []

    def slow(d: Delivery) -> bool:
        held.append(d)
        release.wait(60)
        return True

    a, b = ns.NatsSource(url, name="a"), ns.NatsSource(url, name="b")
    a.start(slow)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", nats_single.nodes[0].ports.mqtt)
    c.loop_start()
    try:
        c.publish("lifeline/v1/gw-x/up/live", b"one", qos=1).wait_for_publish(10)
        wait_until(lambda: bool(held), 10, "sink a holds the batch")

        def fast(d: Delivery) -> bool:
            other.append(d)
            return True

        b.start(fast)  # a second sink, pulling from the same durable
        wait_until(lambda: a.counters().get("in_progress", 0) >= 4, 20, "in-progress beats well past ack_wait")
        assert other == [] and b.counters().get("delivered", 0) == 0
        release.set()
        wait_until(lambda: a.counters().get("acked", 0) == 1, 10, "acked once")
        assert other == [] and len(held) == 1
    finally:
        release.set()
        c.loop_stop()
        c.disconnect()
        a.stop()
        b.stop()


def test_cli_source_errors_are_named(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lifeline.tools.broker import free_port
    from lifeline.tools.platform_sink import platform_sink_cmd

    key = tmp_path / "gw.pub"
    key.write_text("11" * 32 + "\n")
    base = ["--store", f"sqlite:{tmp_path / 'p.db'}", "--trust", f"gw-1={key}"]
    run = CliRunner().invoke
    r = run(platform_sink_cmd, [*base, "--source", "amqp://h:1"])
    assert r.exit_code == 2 and "use mqtt://HOST:PORT or nats://" in r.output
    r = run(platform_sink_cmd, [*base, "--source", "nats://h:1", "--broker", "h:2"])
    assert r.exit_code == 2 and "one of --broker and --source" in r.output
    r = run(platform_sink_cmd, [*base, "--source", "nats://h:1?replicas=7"])
    assert r.exit_code == 2 and "replicas" in r.output
    r = run(platform_sink_cmd, [*base, "--source", f"nats://127.0.0.1:{free_port()}"])
    assert r.exit_code == 3 and "cannot connect" in r.output


def test_tls_cluster_takes_only_certified_clients(tmp_path: Path, test_pki: TestPKI) -> None:
    """With a PKI the client port and the MQTT listener require TLS client certificates: the sink's source
    (``--tls-ca/--tls-cert/--tls-key``) and a gateway's MQTT uplink get in, a plain client does not."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[Delivery] = []

    def keep(d: Delivery) -> bool:
        got.append(d)
        return True

    with NatsCluster(1, workdir=tmp_path / "nats-tls", pki=test_pki) as cluster:
        sink_pair = test_pki.client("sink-tls")
        src = ns.NatsSource(cluster.url, tls=TlsFiles(test_pki.ca_cert, sink_pair.cert, sink_pair.key).context())
        src.start(keep)
        gw_pair = test_pki.client("gw-tls")
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-tls", protocol=mqtt.MQTTv311)
        c.tls_set_context(TlsFiles(test_pki.ca_cert, gw_pair.cert, gw_pair.key).context())
        c.connect("127.0.0.1", cluster.nodes[0].ports.mqtt)
        c.loop_start()
        try:
            info = c.publish("lifeline/v1/gw-tls/up/live", b"sealed", qos=1)
            info.wait_for_publish(10)
            assert info.is_published()
            wait_until(lambda: bool(got), 10, "the batch through TLS")
            assert got[0].payload == b"sealed"
            with pytest.raises(SourceError, match="cannot connect"):
                ns.NatsSource(cluster.url).start(keep, 5)
        finally:
            c.loop_stop()
            c.disconnect()
            src.stop()
