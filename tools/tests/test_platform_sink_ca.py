"""`lifeline platform-sink --ca --crl` as a command against real Mosquitto: gateways that carry their CA-issued
chain are stored without a pinned key; a revoked one and one from another CA are refused and counted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.protocols import batch, cose_sign, gwcert, keys, schema
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.testca import TestCA

CLI = [sys.executable, "-m", "lifeline.tools.cli", "platform-sink"]


def publisher(broker: MosquittoBroker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: ready.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert ready.wait(10)
    return client


def publish(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(10)
    assert info.is_published()


def batch_for(gw: str, key: keys.PrivateKey, cert: bytes, records: int) -> bytes:
    signer = gwcert.attach_chain(cose_sign.signing_key(key), cert, gw, now=time.time())
    recs = [batch.BatchRecord(device_id=bytes([i]) * 8, fcnt=1, node_time=1, rx_ms=1_700_000_000_000,
                              kind=schema.K_WATER_LEVEL, fields={1: 100}, data_class=schema.PUBLIC, receptions=())
            for i in range(records)]
    return batch.BatchSigner(signer, gw).sign(recs, lane=0, created_ms=int(time.time() * 1000)).data


def test_cli_ca_and_crl(mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    city, rogue = TestCA(tmp_path / "city", "sm"), TestCA(tmp_path / "rogue", "intl")
    good_key, bad_key, rogue_key = keys.generate_for("sm"), keys.generate_for("intl"), keys.generate_for("sm")
    good = city.issue(gwcert.make_csr(good_key, "gw-good"), "gw-good")
    bad = city.issue(gwcert.make_csr(bad_key, "gw-bad"), "gw-bad")
    other = rogue.issue(gwcert.make_csr(rogue_key, "gw-rogue"), "gw-rogue")
    city.revoke(bad)
    (tmp_path / "city.crl").write_bytes(city.crl())

    usage = subprocess.run([*CLI, "--broker", mosquitto.url, "--db", str(tmp_path / "x.db"), "--crl",
                            str(tmp_path / "city.crl")], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--trust" in usage.stderr
    (tmp_path / "leaf.pem").write_bytes(good)
    not_ca = subprocess.run([*CLI, "--broker", mosquitto.url, "--db", str(tmp_path / "x.db"), "--ca",
                             str(tmp_path / "leaf.pem")], capture_output=True, text=True, timeout=60)
    assert not_ca.returncode == 3 and "not a CA certificate" in not_ca.stderr

    client = publisher(mosquitto)
    proc = subprocess.Popen([*CLI, "--broker", mosquitto.url, "--db", str(tmp_path / "sink.db"), "--ca",
                             str(city.cert), "--crl", str(tmp_path / "city.crl"), "--json", "--count", "3",
                             "--timeout", "30", "--share-group", "ca"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        publish(client, "lifeline/v1/gw-good/state", b"online", retain=True)
        assert proc.stdout is not None
        deadline, lines = time.monotonic() + 20, []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
            if lines[-1].get("event") == "presence":
                break
        assert lines and lines[-1].get("event") == "presence", lines
        publish(client, "lifeline/v1/gw-bad/up/live", batch_for("gw-bad", bad_key, bad, 2))
        publish(client, "lifeline/v1/gw-rogue/up/live", batch_for("gw-rogue", rogue_key, other, 2))
        publish(client, "lifeline/v1/gw-good/up/live", batch_for("gw-good", good_key, good, 3))
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        publish(client, "lifeline/v1/gw-good/state", b"", retain=True)
        client.disconnect()
        client.loop_stop()
    assert proc.returncode == 0, err
    lines += [json.loads(x) for x in out.splitlines()]
    rejects = {x["topic"].split("/")[2]: x["reason"] for x in lines if x["event"] == "reject"}
    assert rejects == {"gw-bad": "revoked", "gw-rogue": "untrusted_certificate"}
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["records"] == 3
    assert summary["counters"]["rejected.revoked"] == 1 and summary["counters"]["rejected.untrusted_certificate"] == 1
    assert summary["ca"]["revoked"] == 1 and summary["ca"]["crl_reload_errors"] == 0
    assert summary["ca"]["crl_next_update"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())  # 30 days ahead
