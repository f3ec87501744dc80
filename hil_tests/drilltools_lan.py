"""A listener on the site's LAN broker: what the gateway's local rules publish (sirens, building systems)."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class LanListener:
    def __init__(self, host: str, port: int, topic: str = "site/#") -> None:
        self.messages: list[tuple[float, str, bytes]] = []  # (wall time, topic, payload)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hil-lan-listener")
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda c, u, mid, rcs, p: self._ready.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._ready.wait(10):
            self.close()
            raise RuntimeError(f"LAN broker {host}:{port}: no SUBACK")

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.time(), msg.topic, bytes(msg.payload)))

    def received(self, prefix: str = "") -> list[tuple[float, str, bytes]]:
        with self._lock:
            return [m for m in self.messages if m[1].startswith(prefix)]

    def close(self) -> None:
        self._client.disconnect()  # first: loop_stop() waits for unacknowledged QoS 1 messages
        self._client.loop_stop()
