"""MqttUplink against real Mosquitto brokers: PUBACK-gated publish, presence, commands, reconnect after a
broker restart, stall detection (SIGSTOP), failover and fail-back, TLS client certificates, backoff."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.gateway.mqtt_async import BrokerAddress, TlsFiles
from lifeline.gateway.uplink import CONNECTED, DOWN, Backoff, Endpoint, MqttUplink
from lifeline.gateway.uplink_api import AckedPublisher, CommandSource, UplinkService, UplinkUnavailable
from lifeline.tools.broker import MosquittoBroker, TestPKI, free_port

GW = "gw-test"


class Watcher:
    """A platform-side MQTT client on its own paho thread that records everything it receives."""

    def __init__(self, host: str, port: int, topics: list[str], *, tls: TlsFiles | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if tls is not None:
            self.client.tls_set_context(tls.context())
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        assert self._ready.wait(10), "watcher could not subscribe"

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def eventually(pred: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Wait for a condition with a deadline (polling; never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def endpoint(name: str, broker: MosquittoBroker, **kw: object) -> Endpoint:
    return Endpoint(name, BrokerAddress(broker.host, broker.port, client_id=f"lifeline-{GW}-{name}", **kw))  # type: ignore[arg-type]


def fast_uplink(endpoints: list[Endpoint], **kw: object) -> MqttUplink:
    opts: dict[str, object] = dict(
        keepalive_s=2, connect_timeout_s=2, publish_timeout_s=2, failback_s=0.5,
        backoff_initial_s=0.05, backoff_max_s=0.5, rng=random.Random(7),
    )
    opts.update(kw)
    return MqttUplink(GW, endpoints, **opts)  # type: ignore[arg-type]


def test_implements_the_uplink_protocols(mosquitto: MosquittoBroker) -> None:
    up = fast_uplink([endpoint("a", mosquitto)])
    assert isinstance(up, AckedPublisher)
    assert isinstance(up, UplinkService)
    assert isinstance(up, CommandSource)


async def test_publish_returns_after_puback_and_presence_is_retained(mosquitto: MosquittoBroker) -> None:
    watcher = Watcher(mosquitto.host, mosquitto.port, [f"lifeline/v1/{GW}/#"])
    up = fast_uplink([endpoint("a", mosquitto)])
    try:
        with pytest.raises(UplinkUnavailable):
            await up.publish(f"lifeline/v1/{GW}/up/live", b"too early")
        await up.start()
        assert await up.wait_connected(10)
        assert up.endpoint_states() == {"a": CONNECTED}
        payloads = [bytes([i]) * 1024 for i in range(50)]
        await asyncio.gather(*(up.publish(f"lifeline/v1/{GW}/up/live", p) for p in payloads))
        await eventually(lambda: len(watcher.payloads(f"lifeline/v1/{GW}/up/live")) == 50)
        assert sorted(watcher.payloads(f"lifeline/v1/{GW}/up/live")) == sorted(payloads)
        assert watcher.payloads(f"lifeline/v1/{GW}/state")[-1] == b"online"
        assert up.counters()["published"] == 50
    finally:
        await up.close()
    await eventually(lambda: watcher.payloads(f"lifeline/v1/{GW}/state")[-1:] == [b"offline"])
    watcher.close()
    # retained: a newcomer sees "offline" at once
    late = Watcher(mosquitto.host, mosquitto.port, [f"lifeline/v1/{GW}/state"])
    await eventually(lambda: late.messages[-1:] == [(f"lifeline/v1/{GW}/state", b"offline", True)])
    late.close()


async def test_not_connected_raises_at_once() -> None:
    up = MqttUplink(GW, [Endpoint("nowhere", BrokerAddress("127.0.0.1", free_port()))])
    t0 = time.monotonic()
    with pytest.raises(UplinkUnavailable):
        await up.publish("lifeline/v1/x/up/live", b"x")
    assert time.monotonic() - t0 < 0.5
    assert up.counters()["not_connected"] == 1


async def test_commands_reach_the_handler_and_survive_a_broker_restart(mosquitto: MosquittoBroker) -> None:
    got: list[bytes] = []

    async def handler(payload: bytes) -> None:
        got.append(payload)

    up = fast_uplink([endpoint("a", mosquitto)])
    up.set_command_handler(handler)
    await up.start()
    try:
        assert await up.wait_connected(10)
        platform = Watcher(mosquitto.host, mosquitto.port, ["unused/#"])
        platform.publish(f"lifeline/v1/{GW}/down", b'{"id":"1"}')
        platform.publish("lifeline/v1/other-gw/down", b'{"id":"not mine"}')
        await eventually(lambda: got == [b'{"id":"1"}'], what="first command")
        platform.close()

        mosquitto.restart()  # in-memory broker: the session and its subscription are gone
        await eventually(lambda: up.counters()["connects"] >= 2, what="reconnect")
        assert await up.wait_connected(10)
        platform = Watcher(mosquitto.host, mosquitto.port, ["unused/#"])
        platform.publish(f"lifeline/v1/{GW}/down", b'{"id":"2"}')
        await eventually(lambda: got == [b'{"id":"1"}', b'{"id":"2"}'], what="command after restart")
        platform.close()
        await up.publish(f"lifeline/v1/{GW}/up/live", b"after restart")
        assert up.counters()["connection_losses"] >= 1
    finally:
        await up.close()


async def test_publish_while_broker_is_down_raises_and_recovers(mosquitto: MosquittoBroker) -> None:
    up = fast_uplink([endpoint("a", mosquitto)])
    await up.start()
    try:
        assert await up.wait_connected(10)
        mosquitto.stop()
        await eventually(lambda: not up.is_connected(), what="loss noticed")
        with pytest.raises(UplinkUnavailable):
            await up.publish(f"lifeline/v1/{GW}/up/live", b"x")
        assert up.endpoint_states()["a"] in (DOWN, "connecting")
        mosquitto.start()
        assert await up.wait_connected(15)
        await up.publish(f"lifeline/v1/{GW}/up/live", b"y")
    finally:
        await up.close()


async def test_frozen_broker_times_out_publish_and_the_client_is_restarted(mosquitto: MosquittoBroker) -> None:
    up = fast_uplink([endpoint("a", mosquitto)], publish_timeout_s=1.0, keepalive_s=1)
    await up.start()
    try:
        assert await up.wait_connected(10)
        mosquitto.pause()
        t0 = time.monotonic()
        with pytest.raises(UplinkUnavailable, match="PUBACK"):
            await up.publish(f"lifeline/v1/{GW}/up/live", b"x")
        assert time.monotonic() - t0 < 3.0  # the deadline, not a hang
        await eventually(lambda: up.counters()["stalls"] + up.counters()["connection_losses"] >= 1,
                         what="stall detected")
        assert not up.is_connected()
        mosquitto.resume()
        assert await up.wait_connected(15)
        await up.publish(f"lifeline/v1/{GW}/up/live", b"y")
        assert up.counters()["publish_timeouts"] == 1
    finally:
        mosquitto.resume()
        await up.close()


async def test_failover_to_secondary_and_failback_to_primary(tmp_path: Path) -> None:
    primary = MosquittoBroker(workdir=tmp_path / "primary")  # not started yet
    with MosquittoBroker(workdir=tmp_path / "secondary") as secondary:
        up = fast_uplink([endpoint("primary", primary), endpoint("secondary", secondary)])
        watch_b = Watcher(secondary.host, secondary.port, [f"lifeline/v1/{GW}/#"])
        await up.start()
        try:
            assert await up.wait_connected(10)
            assert up.active_endpoint == "secondary"
            assert up.endpoint_states()["primary"] == DOWN
            await up.publish(f"lifeline/v1/{GW}/up/live", b"via secondary")

            primary.start()
            await eventually(lambda: up.active_endpoint == "primary", what="fail-back")
            assert up.counters()["failbacks"] == 1
            await up.publish(f"lifeline/v1/{GW}/up/live", b"via primary")
            # the secondary was told we left
            await eventually(lambda: watch_b.payloads(f"lifeline/v1/{GW}/state")[-1:] == [b"offline"])

            primary.pause()  # primary freezes: stall detection moves us to the secondary again
            await eventually(lambda: up.active_endpoint == "secondary", timeout_s=20, what="failover")
            await up.publish(f"lifeline/v1/{GW}/up/live", b"via secondary again")
            await eventually(lambda: watch_b.payloads(f"lifeline/v1/{GW}/up/live")
                             == [b"via secondary", b"via secondary again"])
            assert up.counters()["failovers"] >= 1
        finally:
            await up.close()
            watch_b.close()
            primary.close()


async def test_tls_with_client_certificate(mosquitto_tls: MosquittoBroker, test_pki: TestPKI) -> None:
    assert mosquitto_tls.tls_port is not None
    pair = test_pki.client(GW)
    good = Endpoint("tls", BrokerAddress("127.0.0.1", mosquitto_tls.tls_port, client_id="gw-tls",
                                         tls=TlsFiles(test_pki.ca_cert, pair.cert, pair.key)))
    watcher = Watcher("127.0.0.1", mosquitto_tls.port, [f"lifeline/v1/{GW}/up/#"])
    up = fast_uplink([good])
    await up.start()
    try:
        assert await up.wait_connected(10)
        await up.publish(f"lifeline/v1/{GW}/up/live", b"over tls")
        await eventually(lambda: watcher.payloads(f"lifeline/v1/{GW}/up/live") == [b"over tls"])
    finally:
        await up.close()
        watcher.close()


async def test_tls_without_client_certificate_is_refused(mosquitto_tls: MosquittoBroker, test_pki: TestPKI) -> None:
    assert mosquitto_tls.tls_port is not None
    bad = Endpoint("nocert", BrokerAddress("127.0.0.1", mosquitto_tls.tls_port, tls=TlsFiles(test_pki.ca_cert)))
    sleeps: list[float] = []
    gate = asyncio.Event()

    async def sleep(d: float) -> None:
        sleeps.append(d)
        if len(sleeps) >= 2:
            gate.set()
        await asyncio.sleep(0)

    up = fast_uplink([bad], sleep=sleep)
    await up.start()
    try:
        await asyncio.wait_for(gate.wait(), 20)
        assert not up.is_connected()
        assert up.endpoint_states()["nocert"] in (DOWN, "connecting")
        assert "nocert" in up.last_errors
    finally:
        await up.close()


async def test_reconnect_backoff_grows_with_jitter_and_is_capped() -> None:
    sleeps: list[float] = []
    done = asyncio.Event()

    async def sleep(d: float) -> None:
        sleeps.append(d)
        if len(sleeps) >= 8:
            done.set()
            await asyncio.Event().wait()  # park the supervisor until close() cancels it
        await asyncio.sleep(0)

    eps = [Endpoint(n, BrokerAddress("127.0.0.1", free_port())) for n in ("a", "b")]
    up = MqttUplink(GW, eps, connect_timeout_s=1, backoff_initial_s=0.1, backoff_max_s=1.0,
                    rng=random.Random(1), sleep=sleep)
    await up.start()
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await up.close()
    ceilings = [min(1.0, 0.1 * 2**n) for n in range(8)]
    assert all(c / 2 <= s <= c for s, c in zip(sleeps, ceilings, strict=True)), sleeps
    assert len(set(sleeps)) == len(sleeps)  # jittered
    assert up.counters()["connect_failures"] == 16  # both endpoints tried each round
    # same seed, same schedule
    again = Backoff(0.1, 1.0, rng=random.Random(1))
    assert [again.next() for _ in range(8)] == sleeps


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1, rng=random.Random())
    with pytest.raises(ValueError):
        Backoff(2, 1, rng=random.Random())


async def test_mqtt_311_mode(mosquitto: MosquittoBroker) -> None:
    watcher = Watcher(mosquitto.host, mosquitto.port, [f"lifeline/v1/{GW}/up/#"])
    up = fast_uplink([endpoint("a", mosquitto)], protocol="3.1.1")
    await up.start()
    try:
        assert await up.wait_connected(10)
        await up.publish(f"lifeline/v1/{GW}/up/backlog", b"v311")
        await eventually(lambda: watcher.payloads(f"lifeline/v1/{GW}/up/backlog") == [b"v311"])
    finally:
        await up.close()
        watcher.close()


_CRASHER = """
import asyncio, sys
from lifeline.gateway.mqtt_async import BrokerAddress
from lifeline.gateway.uplink import Endpoint, MqttUplink

async def main():
    up = MqttUplink("gw-crash", [Endpoint("a", BrokerAddress("127.0.0.1", int(sys.argv[1]), client_id="crash"))],
                    keepalive_s=5)
    await up.start()
    assert await up.wait_connected(10)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_gateway_leaves_offline_presence(mosquitto: MosquittoBroker) -> None:
    watcher = Watcher(mosquitto.host, mosquitto.port, ["lifeline/v1/gw-crash/state"])
    proc = subprocess.Popen([sys.executable, "-c", _CRASHER, str(mosquitto.port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        assert line.strip() == b"ready"
        await eventually(lambda: watcher.payloads("lifeline/v1/gw-crash/state")[-1:] == [b"online"])
        proc.kill()  # no DISCONNECT: the broker publishes the will
        proc.wait(10)
        await eventually(lambda: watcher.payloads("lifeline/v1/gw-crash/state")[-1:] == [b"offline"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        watcher.close()


async def test_commands_as_an_async_iterator(mosquitto: MosquittoBroker) -> None:
    up = fast_uplink([endpoint("a", mosquitto)])
    await up.start()
    try:
        assert await up.wait_connected(10)
        platform = Watcher(mosquitto.host, mosquitto.port, ["unused/#"])
        for i in range(3):
            platform.publish(f"lifeline/v1/{GW}/down", f'{{"id":"{i}"}}'.encode())
        platform.close()
        got: list[bytes] = []
        stream = up.commands()
        for _ in range(3):
            got.append(await asyncio.wait_for(anext(stream), 10))
        assert got == [b'{"id":"0"}', b'{"id":"1"}', b'{"id":"2"}']
        assert up.counters()["commands_received"] == 3
    finally:
        await up.close()
