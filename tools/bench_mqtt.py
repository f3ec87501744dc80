"""MQTT publish throughput: the gateway's :class:`MqttUplink` against raw paho-mqtt, same broker, same run.

Both publish ``n`` payloads of ``size`` bytes with QoS 1 and count a message only after its PUBACK; both
keep up to ``window`` messages in flight. The rate is messages per second from the first publish to the
last PUBACK. ``python -m lifeline.tools.bench_mqtt`` runs both against a fresh local Mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.gateway.mqtt_async import BrokerAddress
from lifeline.gateway.uplink import Endpoint, MqttUplink

DEFAULT_SIZE = 1024
DEFAULT_WINDOW = 100
TOPIC = "lifeline/v1/bench/up/live"


class BenchError(RuntimeError):
    pass


def raw_paho_qos1_rate(
    host: str, port: int, n: int, *, size: int = DEFAULT_SIZE, window: int = DEFAULT_WINDOW,
    timeout_s: float = 120.0,
) -> float:
    """Messages/s of a plain paho client (its own network thread, ``max_inflight_messages=window``)."""
    payload = bytes(size)
    acked = 0
    done = threading.Event()
    connected = threading.Event()
    lock = threading.Lock()

    def on_publish(c: mqtt.Client, u: object, mid: int, rc: object, p: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked >= n:
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise BenchError("raw paho: no CONNACK")
        t0 = time.perf_counter()
        for _ in range(n):
            client.publish(TOPIC, payload, qos=1)
        if not done.wait(timeout_s):
            raise BenchError(f"raw paho: only {acked}/{n} PUBACKs within {timeout_s}s")
        elapsed = time.perf_counter() - t0
    finally:
        client.disconnect()
        client.loop_stop()
    return n / elapsed


async def uplink_rate_async(
    host: str, port: int, n: int, *, size: int = DEFAULT_SIZE, window: int = DEFAULT_WINDOW,
    timeout_s: float = 120.0,
) -> float:
    """Messages/s through ``MqttUplink.publish`` with ``window`` publishes awaiting their PUBACK at once."""
    payload = bytes(size)
    up = MqttUplink("bench", [Endpoint("bench", BrokerAddress(host, port, client_id="lifeline-bench"))],
                    max_inflight=window, publish_timeout_s=timeout_s, session_expiry_s=0)
    await up.start()
    try:
        if not await up.wait_connected(10):
            raise BenchError("uplink: not connected")
        todo = iter(range(n))

        async def worker() -> None:  # `window` workers, each with one publish awaiting its PUBACK
            for _ in todo:
                await up.publish(TOPIC, payload)

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(min(window, n)))), timeout_s)
        elapsed = time.perf_counter() - t0
    finally:
        await up.close()
    return n / elapsed


def uplink_rate(
    host: str, port: int, n: int, *, size: int = DEFAULT_SIZE, window: int = DEFAULT_WINDOW,
    timeout_s: float = 120.0,
) -> float:
    """Synchronous wrapper of :func:`uplink_rate_async` (runs its own event loop)."""
    return asyncio.run(uplink_rate_async(host, port, n, size=size, window=window, timeout_s=timeout_s))


def uplink_sequential_rate(host: str, port: int, n: int, *, size: int = DEFAULT_SIZE) -> float:
    """Messages/s with one publish at a time (round-trip bound; what a naive forwarder would get)."""
    return uplink_rate(host, port, n, size=size, window=1)


def main(argv: list[str] | None = None) -> int:
    from lifeline.tools.broker import MosquittoBroker

    args = argv if argv is not None else sys.argv[1:]
    n = int(args[0]) if args else 20_000
    with MosquittoBroker() as broker:
        raw = raw_paho_qos1_rate(broker.host, broker.port, n)
        ours = uplink_rate(broker.host, broker.port, n)
        seq = uplink_sequential_rate(broker.host, broker.port, min(n, 2000))
    print(json.dumps({"messages": n, "size": DEFAULT_SIZE, "raw_paho_msgs_per_s": round(raw),
                      "uplink_msgs_per_s": round(ours), "uplink_sequential_msgs_per_s": round(seq),
                      "uplink_vs_raw": round(ours / raw, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
