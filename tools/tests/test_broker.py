"""The Mosquitto fixture itself: listens where it says, restarts on the same port, requires client
certificates on TLS, and leaves no process behind."""

from __future__ import annotations

import ssl
import stat
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.tools.broker import BrokerError, MosquittoBroker, TestPKI, port_accepts
from lifeline.tools.pytest_plugin import _gone


def _roundtrip(host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout_s: float = 10.0) -> bytes:
    """Subscribe, publish QoS 1 to ourselves, return what came back (raises on failure)."""
    got: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    if tls is not None:
        c.tls_set_context(tls)
    c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe("t/#", qos=1)
    c.on_subscribe = lambda cl, ud, mid, rcs, pr: subscribed.set()

    def on_message(cl: mqtt.Client, ud: object, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        done.set()

    c.on_message = on_message
    c.connect(host, port, keepalive=10)
    c.loop_start()
    try:
        assert subscribed.wait(timeout_s), "no SUBACK"
        c.publish("t/x", b"ping", qos=1)
        assert done.wait(timeout_s), "message did not come back"
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def test_plain_broker_roundtrip_and_restart_on_same_port(mosquitto: MosquittoBroker) -> None:
    assert mosquitto.host == "127.0.0.1"
    assert _roundtrip(mosquitto.host, mosquitto.port) == b"ping"
    port, first_pid = mosquitto.port, mosquitto.pid
    assert first_pid is not None

    mosquitto.stop()
    assert not port_accepts(mosquitto.host, port)
    assert _gone(first_pid)

    mosquitto.start()
    assert mosquitto.port == port and mosquitto.pid != first_pid
    assert _roundtrip(mosquitto.host, port) == b"ping"

    mosquitto.restart()
    assert mosquitto.port == port
    assert _roundtrip(mosquitto.host, port) == b"ping"
    assert mosquitto.starts == 3


def test_config_is_loopback_only_without_persistence(mosquitto: MosquittoBroker) -> None:
    conf = mosquitto.config_path.read_text()
    assert f"listener {mosquitto.port} 127.0.0.1" in conf
    assert "persistence false" in conf
    listeners = [line for line in conf.splitlines() if line.startswith("listener ")]
    assert all(line.endswith(" 127.0.0.1") for line in listeners)


def test_kill_leaves_nothing_and_close_is_idempotent(tmp_path: Path) -> None:
    broker = MosquittoBroker(workdir=tmp_path / "b").start()
    pid = broker.pid
    assert pid is not None and not _gone(pid)
    broker.kill()
    assert _gone(pid)
    assert not port_accepts(broker.host, broker.port)
    broker.close()
    broker.close()


def test_context_manager_stops_the_process() -> None:
    with MosquittoBroker() as broker:
        pid = broker.pid
        workdir = broker.workdir
        assert pid is not None and port_accepts(broker.host, broker.port)
    assert _gone(pid)
    assert not workdir.exists()  # its own temp dir is removed


def test_paused_broker_accepts_tcp_but_does_not_answer(mosquitto: MosquittoBroker) -> None:
    mosquitto.pause()
    try:
        assert port_accepts(mosquitto.host, mosquitto.port)  # kernel backlog still accepts
        with pytest.raises(AssertionError):
            _roundtrip(mosquitto.host, mosquitto.port, timeout_s=0.5)
    finally:
        mosquitto.resume()
    assert _roundtrip(mosquitto.host, mosquitto.port) == b"ping"


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    broker = MosquittoBroker(workdir=tmp_path / "bad", extra_config="this_is_not_an_option 1")
    with pytest.raises(BrokerError, match="exited"):
        broker.start()
    assert broker.pid is None
    broker.close()


def _client_context(pki: TestPKI, name: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if name is not None:
        pair = pki.client(name)
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    return ctx


def test_tls_listener_requires_a_client_certificate(
    mosquitto_tls: MosquittoBroker, test_pki: TestPKI
) -> None:
    assert mosquitto_tls.tls_port is not None
    assert _roundtrip("127.0.0.1", mosquitto_tls.tls_port, tls=_client_context(test_pki, "gw-1")) == b"ping"
    # no client certificate: the handshake (or the first read after it) fails
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        _roundtrip("127.0.0.1", mosquitto_tls.tls_port, tls=_client_context(test_pki, None), timeout_s=2)


def test_tls_rejects_a_certificate_from_another_ca(
    mosquitto_tls: MosquittoBroker, test_pki: TestPKI, tmp_path: Path
) -> None:
    other = TestPKI(tmp_path / "other")
    assert mosquitto_tls.tls_port is not None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(test_pki.ca_cert))
    rogue = other.client("gw-1")
    ctx.load_cert_chain(str(rogue.cert), str(rogue.key))
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        _roundtrip("127.0.0.1", mosquitto_tls.tls_port, tls=ctx, timeout_s=2)


def test_pki_files_are_private(test_pki: TestPKI) -> None:
    pair = test_pki.client("mode-check")
    for path in (test_pki.ca.key, test_pki.server.key, pair.key, pair.cert):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_persistence_keeps_sessions_across_restart(tmp_path: Path) -> None:
    with MosquittoBroker(workdir=tmp_path / "p", persistence=True) as broker:
        got: list[bytes] = []
        done = threading.Event()
        subscribed = threading.Event()

        def on_message(cl: mqtt.Client, ud: object, msg: mqtt.MQTTMessage) -> None:
            got.append(bytes(msg.payload))
            done.set()

        def durable() -> mqtt.Client:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="durable", protocol=mqtt.MQTTv311,
                            clean_session=False)
            c.on_subscribe = lambda cl, ud, mid, rcs, pr: subscribed.set()
            c.on_message = on_message
            c.connect(broker.host, broker.port)
            c.loop_start()
            return c

        sub = durable()
        sub.subscribe("t/#", qos=1)
        assert subscribed.wait(10)
        sub.disconnect()
        sub.loop_stop()
        broker.restart()  # the session and its subscription are written on stop and read on start
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        pub.publish("t/x", b"kept", qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        sub = durable()  # comes back after the message was published
        try:
            assert done.wait(10)
            assert got == [b"kept"]
        finally:
            sub.disconnect()
            sub.loop_stop()
