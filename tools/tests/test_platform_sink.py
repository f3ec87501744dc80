"""The reference platform sink against a real Mosquitto, fed with batches signed by protocols/batch.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.protocols import batch, keys, schema
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.platform_sink import PlatformSink, SinkError, SinkTimeout, chain_report, open_db

DEV = [bytes.fromhex(f"70b3d500000000{i:02x}") for i in range(4)]


class Publisher:
    """A stand-in for a gateway's uplink: publishes QoS 1 and waits for each PUBACK."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Gateway:
    def __init__(self, gw_id: str, key: Ed25519PrivateKey | None = None) -> None:
        self.id = gw_id
        self.key = key or Ed25519PrivateKey.generate()
        self.signer = batch.BatchSigner(self.key, gw_id)
        self.fcnt: dict[bytes, int] = {}

    def record(self, dev: bytes, fcnt: int | None = None, level: int = 100) -> batch.BatchRecord:
        if fcnt is None:
            fcnt = self.fcnt.get(dev, 0) + 1
        self.fcnt[dev] = max(fcnt, self.fcnt.get(dev, 0))
        return batch.BatchRecord(
            device_id=dev, fcnt=fcnt, node_time=100 + fcnt, rx_ms=1_700_000_000_000 + fcnt,
            kind=schema.K_WATER_LEVEL, fields={1: level}, data_class=schema.PUBLIC,
            receptions=(batch.WireReception("nbiot", "nb0", 1_700_000_000_000 + fcnt, None, None),),
        )

    def sign(self, records: list[batch.BatchRecord], lane: int = batch.LANE_LIVE) -> batch.SignedBatch:
        return self.signer.sign(records, lane, int(time.time() * 1000))

    def topic(self, lane: int = batch.LANE_LIVE) -> str:
        return f"lifeline/v1/{self.id}/up/{batch.LANE_NAMES[lane]}"


@pytest.fixture
def pub(mosquitto: MosquittoBroker) -> Iterator[Publisher]:
    p = Publisher(mosquitto)
    yield p
    p.close()


def sink_for(broker: MosquittoBroker, db: Path, *gws: Gateway, **kw: object) -> PlatformSink:
    return PlatformSink(broker.host, broker.port, db=db, trust={g.id: g.key.public_key() for g in gws},
                        **kw).start()  # type: ignore[arg-type]


def test_verified_batches_are_stored_in_order_and_the_chain_is_intact(
    mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path
) -> None:
    gw = Gateway("gw-1")
    with sink_for(mosquitto, tmp_path / "p.db", gw) as sink:
        for _ in range(10):
            sb = gw.sign([gw.record(d) for d in DEV])
            pub.publish(gw.topic(), sb.data)
        sink.wait_records(40, 10)
        for d in DEV:
            assert [r.fcnt for r in sink.records(d)] == list(range(1, 11))
        r0 = sink.records(DEV[0])[0]
        assert r0.gateway == "gw-1" and r0.seq == 0 and r0.kind == schema.K_WATER_LEVEL
        assert r0.fields == {"level": {"value": 100, "unit": "mm"}}
        (report,) = sink.chain_report()
        assert report.intact and report.batches == 10 and report.highest == 9
        assert sink.counters["batches_stored"] == 10 and sink.counters["records_stored"] == 40


def test_redelivered_batches_and_repeated_records_are_stored_once(
    mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path
) -> None:
    a, b = Gateway("gw-a"), Gateway("gw-b")
    with sink_for(mosquitto, tmp_path / "p.db", a, b) as sink:
        sb = a.sign([a.record(DEV[0], 1), a.record(DEV[1], 1)])
        pub.publish(a.topic(), sb.data)
        pub.publish(a.topic(), sb.data)  # MQTT redelivery of the same batch
        # the same reading heard by a second gateway
        pub.publish(b.topic(), b.sign([b.record(DEV[0], 1), b.record(DEV[0], 2)]).data)
        # wait for the outcome of all three (received is counted before the store commits)
        sink.wait_for(lambda s: s.counters["batches_stored"] + s.counters["batches_redelivered"] == 3, 10)
        assert sink.counters["batches_received"] == 3
        assert sink.record_count() == 3
        assert sink.counters["batches_redelivered"] == 1
        assert sink.counters["records_duplicate"] == 1
        assert [(r.fcnt, r.gateway) for r in sink.records(DEV[0])] == [(1, "gw-a"), (2, "gw-b")]
        assert all(r.intact for r in sink.chain_report())


def test_bad_batches_are_rejected_with_reasons_and_store_nothing(
    mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path
) -> None:
    gw, stranger = Gateway("gw-1"), Gateway("gw-x")
    impostor = Gateway("gw-1")  # same id, other key
    with sink_for(mosquitto, tmp_path / "p.db", gw) as sink:
        pub.publish(stranger.topic(), stranger.sign([stranger.record(DEV[0])]).data)  # untrusted
        pub.publish(gw.topic(), impostor.sign([impostor.record(DEV[0])]).data)  # bad signature
        pub.publish(gw.topic(), b"\xd2garbage")
        pub.publish(gw.topic(), b"")
        pub.publish("lifeline/v1/gw-1/up/sideways", gw.sign([gw.record(DEV[1])]).data)  # bad lane name
        pub.publish(gw.topic(batch.LANE_BACKLOG), gw.sign([gw.record(DEV[1])]).data)  # signed as live
        # gw-1's key signing a batch for gw-2, published on gw-1's topic
        forged = batch.BatchSigner(gw.key, "gw-2").sign([gw.record(DEV[2])], batch.LANE_LIVE, 1)
        pub.publish(gw.topic(), forged.data)
        sink.wait_for(lambda s: s.counters["rejected"] == 7, 10)
        assert sink.record_count() == 0 and sink.batch_count() == 0
        reasons = sorted(r for _, r, _ in sink.rejects())
        assert reasons == sorted(["untrusted_gateway", "bad_signature", "not_cose_sign1", "not_cose_sign1",
                                  "bad_topic", "lane_mismatch", "topic_mismatch"]), reasons


def test_gaps_and_broken_links_are_reported(mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    events: list[tuple[str, dict[str, object]]] = []
    with sink_for(mosquitto, tmp_path / "p.db", gw, on_event=lambda e: events.append((e.kind, dict(e.data)))) \
            as sink:
        b0, b1, b2 = (gw.sign([gw.record(DEV[0])]) for _ in range(3))
        pub.publish(gw.topic(), b0.data)
        pub.publish(gw.topic(), b2.data)  # b1 is late
        sink.wait_for(lambda s: s.batch_count() == 2, 10)
        (rep,) = sink.chain_report()
        assert rep.gaps == ((1, 1),) and not rep.intact
        pub.publish(gw.topic(batch.LANE_LIVE), b1.data)
        sink.wait_for(lambda s: s.batch_count() == 3, 10)
        assert sink.chain_report()[0].intact
        # a gateway that lost its state starts a second chain over seq 3 with a wrong prev_hash
        lost = batch.BatchSigner(gw.key, "gw-1", next_seq=3)
        pub.publish(gw.topic(), lost.sign([gw.record(DEV[0])], batch.LANE_LIVE, 1).data)
        sink.wait_for(lambda s: s.batch_count() == 4, 10)
        # the events are emitted after the store commits: wait for the event, not only for the count
        sink.wait_for(lambda s: any(kind == "broken_link" for kind, _ in events), 10)
        (rep,) = sink.chain_report()
        assert rep.broken_links == ((2, 3),)
        assert ("broken_link", {"gateway": "gw-1", "link": [2, 3]}) in events
        assert sink.counters["broken_links"] == 1


def test_two_sinks_split_the_load_and_store_each_record_once(
    mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path
) -> None:
    gw = Gateway("gw-1")
    db = tmp_path / "shared.db"
    with sink_for(mosquitto, db, gw, client_id="sink-1") as s1, sink_for(mosquitto, db, gw, client_id="sink-2") as s2:
        for _ in range(40):
            pub.publish(gw.topic(), gw.sign([gw.record(d) for d in DEV[:2]]).data)
        s1.wait_records(80, 15)
        assert s1.counters["batches_stored"] + s2.counters["batches_stored"] == 40
        assert s1.counters["batches_stored"] > 0 and s2.counters["batches_stored"] > 0
        assert s1.counters["records_duplicate"] + s2.counters["records_duplicate"] == 0
        sinks = s1.store.records_by_sink()
        assert sinks.keys() == {"sink-1", "sink-2"} and sum(sinks.values()) == 80
        (rep,) = s2.chain_report()  # from the shared database: covers both sinks' batches
        assert rep.intact and rep.batches == 40


def test_a_restarting_sink_with_a_session_gets_what_was_published_meanwhile(
    mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path
) -> None:
    gw = Gateway("gw-1")
    sink_for(mosquitto, tmp_path / "p.db", gw, client_id="durable", session_expiry_s=300).stop()
    for _ in range(5):
        pub.publish(gw.topic(), gw.sign([gw.record(DEV[0])]).data)
    with sink_for(mosquitto, tmp_path / "p.db", gw, client_id="durable", session_expiry_s=300) as sink:
        sink.wait_records(5, 10)


def test_commands_acks_results_and_presence(mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path) -> None:
    gw = Gateway("gw-1")
    got: list[bytes] = []
    ready = threading.Event()
    gateway_side = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    gateway_side.on_connect = lambda c, u, f, rc, p: c.subscribe("lifeline/v1/gw-1/down", 1)
    gateway_side.on_subscribe = lambda c, u, m, r, p: ready.set()
    two = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        got.append(bytes(m.payload))
        if len(got) >= 2:
            two.set()

    gateway_side.on_message = on_message
    gateway_side.connect(mosquitto.host, mosquitto.port)
    gateway_side.loop_start()
    try:
        assert ready.wait(10)
        pub.publish("lifeline/v1/gw-1/state", b"online", retain=True)
        with sink_for(mosquitto, tmp_path / "p.db", gw) as sink:
            sink.wait_for(lambda s: s.presence.get("gw-1") == "online", 10)
            cid = sink.send_command("gw-1", {"device": DEV[0].hex(), "command": "time_sync", "fields": {}})
            aid = sink.ack_alarm("gw-1", DEV[1], 7)
            assert two.wait(10)
            first, second = (json.loads(g) for g in got)
            assert first == {"device": DEV[0].hex(), "command": "time_sync", "fields": {}, "id": cid}
            assert second == {"device": DEV[1].hex(), "command": "ack", "id": aid,
                              "fields": {"alarm_id": 7, "alarm_state": 1}}
            pub.publish("lifeline/v1/gw-1/down/result", json.dumps({"id": cid, "status": "sent"}).encode())
            assert sink.wait_result(cid, 10)["status"] == "sent"
            pub.publish("lifeline/v1/gw-1/state", b"offline", retain=True)
            sink.wait_for(lambda s: s.presence.get("gw-1") == "offline", 10)
            with pytest.raises(SinkTimeout):
                sink.wait_result("no-such-command", 0.1)
    finally:
        gateway_side.disconnect()
        gateway_side.loop_stop()
        pub.publish("lifeline/v1/gw-1/state", b"", retain=True)


def test_unreachable_broker_is_a_sink_error(tmp_path: Path) -> None:
    from lifeline.tools.broker import free_port

    with pytest.raises(SinkError):
        PlatformSink("127.0.0.1", free_port(), db=tmp_path / "p.db", trust={}).start(timeout_s=1)


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lifeline.tools.cli", "platform-sink", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_cli_json_lines_count_and_report(mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path) -> None:
    gw = Gateway("gw-cli")
    keyfile = tmp_path / "gw.pub"
    keyfile.write_text(keys.public_key_hex(gw.key) + "\n")
    db = tmp_path / "cli.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lifeline.tools.cli", "platform-sink", "--broker", mosquitto.url, "--db", str(db),
         "--trust", f"gw-cli={keyfile}", "--json", "--count", "6", "--timeout", "30", "--share-group", "cli"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # publish once the sink has subscribed: its database appears at start, the SUBACK follows quickly;
        # retained presence proves the subscription is live
        pub.publish("lifeline/v1/gw-cli/state", b"online", retain=True)
        deadline = time.monotonic() + 20
        seen_presence = False
        assert proc.stdout is not None
        lines: list[dict[str, object]] = []
        while time.monotonic() < deadline and not seen_presence:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
            seen_presence = lines[-1].get("event") == "presence"
        assert seen_presence, lines
        for _ in range(3):
            pub.publish(gw.topic(), gw.sign([gw.record(DEV[0]), gw.record(DEV[1])]).data)
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        pub.publish("lifeline/v1/gw-cli/state", b"", retain=True)
    assert proc.returncode == 0, err
    lines += [json.loads(x) for x in out.splitlines()]
    batches = [x for x in lines if x["event"] == "batch"]
    assert [b["seq"] for b in batches] == [0, 1, 2] and all(b["new"] == 2 for b in batches)
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["records"] == 6
    assert summary["chains"] == [{"gateway": "gw-cli", "batches": 3, "highest": 2, "gaps": [], "broken_links": [],
                                  "equivocations": [], "intact": True}]
    rep = _cli("--db", str(db), "--report", "--json")
    assert rep.returncode == 0 and json.loads(rep.stdout)["records"] == 6


def test_cli_errors_have_exit_codes(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    db = str(tmp_path / "x.db")
    assert _cli("--db", db, "--trust", "gw=/nonexistent").returncode == 2  # no --broker
    assert _cli("--broker", mosquitto.url, "--db", db).returncode == 2  # no --trust
    assert _cli("--broker", "nocolon", "--db", db, "--trust", f"gw={bad_key}").returncode == 2
    r = _cli("--broker", mosquitto.url, "--db", db, "--trust", f"gw={bad_key}")
    assert r.returncode == 3 and "gw" in r.stderr and "Traceback" not in r.stderr
    from lifeline.tools.broker import free_port

    good = tmp_path / "good.pub"
    good.write_text(keys.public_key_hex(Ed25519PrivateKey.generate()))
    r = _cli("--broker", f"127.0.0.1:{free_port()}", "--db", db, "--trust", f"gw={good}")
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert _cli("--db", str(tmp_path / "missing.db"), "--report").returncode == 3
    assert "Reference city-platform sink" in _cli("--help").stdout


def test_cli_report_fails_on_a_broken_chain(tmp_path: Path) -> None:
    db_path = tmp_path / "r.db"
    db = open_db(db_path)
    for seq, prev in ((0, bytes(32)), (1, b"\x01" * 32)):
        db.execute("INSERT INTO batches VALUES (?,?,?,?,0,0,1,1,0,'t',x'')", ("gw-1", seq, bytes([seq]) * 32, prev))
    db.close()
    rep = _cli("--db", str(db_path), "--report")
    assert rep.returncode == 1 and "PROBLEM" in rep.stdout
    db = open_db(db_path)
    try:
        assert chain_report(db)[0].broken_links == ((0, 1),)
    finally:
        db.close()


def test_key_rotation_overlap_accepts_both_keys_inside_their_windows(
    mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path
) -> None:
    """Gateway key rotation (docs/keys.md): old key until T2, new key from T1 < T2, judged on the sink's
    clock when the batch arrives; the hash chain runs on across the switch."""
    from lifeline.tools.platform.trust import TrustedKey

    t1, t2 = 1_800_000_000_000, 1_800_086_400_000
    now = [t1 - 1000]
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    gw = Gateway("gw-rot", old)
    trust = {"gw-rot": [TrustedKey(old.public_key(), None, t2), TrustedKey(new.public_key(), t1, None)],
             "gw-gone": [TrustedKey(Ed25519PrivateKey.generate().public_key(), None, t1)]}

    def with_key(key: Ed25519PrivateKey) -> batch.SignedBatch:
        """The next batch of gw-rot's chain signed with ``key``, without moving the chain on."""
        return batch.BatchSigner(key, "gw-rot", gw.signer.next_seq, gw.signer.prev_hash).sign(
            [gw.record(DEV[0])], batch.LANE_LIVE, now[0])

    def send(key: Ed25519PrivateKey, accepted: bool) -> None:
        before = (sink.counters["batches_stored"], sink.counters["rejected"])
        if accepted:
            gw.signer = batch.BatchSigner(key, "gw-rot", gw.signer.next_seq, gw.signer.prev_hash)
            sb = gw.sign([gw.record(DEV[0])])
        else:
            sb = with_key(key)
        pub.publish(gw.topic(), sb.data)
        want = (before[0] + 1, before[1]) if accepted else (before[0], before[1] + 1)
        sink.wait_for(lambda s: (s.counters["batches_stored"], s.counters["rejected"]) == want, 10)

    with PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / "p.db", trust=trust,
                      clock=lambda: now[0]).start() as sink:
        send(old, True)
        send(new, False)  # before T1: the new key is not trusted yet
        now[0] = t1
        send(old, True)  # overlap: both
        send(new, True)
        send(old, True)  # e.g. a batch from the outbox, signed before the switch
        now[0] = t2
        send(old, False)  # after T2: the old key is gone
        send(new, True)
        stranger = Gateway("gw-gone")
        pub.publish(stranger.topic(), stranger.sign([stranger.record(DEV[1])]).data)
        sink.wait_for(lambda s: s.counters["rejected"] == 3, 10)
        reasons = [r for _, r, _ in sink.rejects()]
        assert sorted(reasons) == ["bad_signature", "bad_signature", "no_valid_key"], reasons
        (report,) = [r for r in sink.chain_report() if r.gateway == "gw-rot"]
        assert report.intact and report.batches == 5 and report.highest == 4


def test_trust_option_with_windows(tmp_path: Path) -> None:
    from click import BadParameter

    from lifeline.tools.platform_sink import _parse_trust, load_trust

    a, b = tmp_path / "a.pub", tmp_path / "b.pub"
    ka, kb = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    a.write_text(keys.public_key_hex(ka))
    b.write_text(keys.public_key_hex(kb))
    parsed = _parse_trust((f"gw-1={a},until=2026-12-01T00:00:00Z", f"gw-1={b},from=2026-11-24"))
    assert parsed == [("gw-1", a, None, 1_796_083_200_000), ("gw-1", b, 1_795_478_400_000, None)]
    trusted = load_trust(parsed)["gw-1"]
    assert [keys.public_key_hex(t.key) for t in trusted] == [keys.public_key_hex(ka), keys.public_key_hex(kb)]
    assert trusted[0].valid_at(1_796_083_199_999) and not trusted[0].valid_at(1_796_083_200_000)
    with pytest.raises(BadParameter):
        _parse_trust((f"gw-1={a},since=2026-01-01",))
    with pytest.raises(BadParameter):
        _parse_trust((f"gw-1={a},from=yesterday",))


def test_a_batch_the_store_cannot_hold_is_rejected_with_a_reason_not_lost(
    mosquitto: MosquittoBroker, pub: Publisher, tmp_path: Path
) -> None:
    gw = Gateway("gw-1")
    with sink_for(mosquitto, tmp_path / "p.db", gw) as sink:
        r = gw.record(DEV[0], 1)
        bad = batch.BatchRecord(device_id=r.device_id, fcnt=1, node_time=1, rx_ms=(1 << 64) - 1, kind=r.kind,
                                fields=r.fields, data_class=r.data_class, receptions=())
        pub.publish(gw.topic(), gw.sign([bad]).data)
        sink.wait_for(lambda s: s.counters["rejected"] == 1, 10)
        assert [reason for _, reason, _ in sink.rejects()] == ["store_refused"]
        assert sink.record_count() == 0 and sink.counters["errors"] == 0
