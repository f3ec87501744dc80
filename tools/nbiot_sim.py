"""Simulated NB-IoT nodes over real MQTT, for tests, the demo and the bench.

Each :class:`NbiotNodeSim` behaves like firmware/radios/nbiot.py on the wire: MQTT 3.1.1 with a
persistent session and client id ``ll-<device id hex>``, a QoS 1 subscription to its ``down`` topic, and
one QoS 1 PUBLISH of protected frame bytes per reading on its ``up`` topic. Frames are built with
``lifeline.protocols.frame.encode`` from the node's root key, so the gateway verifies them for real.
The paho network loop runs in its own thread; every wait has a deadline.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.protocols import frame

TOPIC_ROOT = "lifeline/v1/nodes"
EPOCH_UNIX = frame.EPOCH_UNIX


class NodeSimError(RuntimeError):
    pass


class NbiotNodeSim:
    """One NB-IoT node. ``send()`` returns the frame bytes after the broker's PUBACK."""

    def __init__(
        self,
        host: str,
        port: int,
        device_id: bytes,
        root_key: bytes,
        *,
        fcnt: int = 1,
        tls: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        persistent: bool = True,
        topic_root: str = TOPIC_ROOT,
        timeout_s: float = 10.0,
    ) -> None:
        if len(device_id) != 8:
            raise ValueError("device id must be 8 bytes")
        self.host = host
        self.port = port
        self.device_id = bytes(device_id)
        self.keys = frame.derive_keys(root_key, self.device_id)
        self.fcnt = fcnt
        self.timeout_s = timeout_s
        self.up_topic = f"{topic_root}/{self.device_id.hex()}/up"
        self.down_topic = f"{topic_root}/{self.device_id.hex()}/down"
        self.downlinks: list[bytes] = []
        self.sent: list[bytes] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"ll-{self.device_id.hex()}",
            protocol=mqtt.MQTTv311, clean_session=not persistent,
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self._started = False

    # ---------------------------------------------------------------------------- network

    def _on_connect(self, c: mqtt.Client, u: object, flags: object, rc: object, p: object) -> None:
        self._connected.set()
        c.subscribe(self.down_topic, qos=1)

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.down_topic:
            with self._cond:
                self.downlinks.append(bytes(msg.payload))
                self._cond.notify_all()

    def connect(self) -> NbiotNodeSim:
        self._subscribed.clear()
        self._connected.clear()
        self.client.connect(self.host, self.port, keepalive=30)
        if not self._started:
            self.client.loop_start()
            self._started = True
        if not self._subscribed.wait(self.timeout_s):
            raise NodeSimError(f"node {self.device_id.hex()}: not subscribed within {self.timeout_s}s")
        return self

    def disconnect(self) -> None:
        """Go to sleep: DISCONNECT, the broker keeps the session (and QoS 1 downlinks) for us."""
        self.client.disconnect()
        if self._started:
            self.client.loop_stop()
            self._started = False

    close = disconnect

    def __enter__(self) -> NbiotNodeSim:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # ---------------------------------------------------------------------------- uplinks

    def encode(self, kind: int, fields: Mapping[int, int | bytes], *, fcnt: int | None = None,
               time_s: int | None = None, flags: int = 0) -> bytes:
        """A protected frame; the node's counter advances unless ``fcnt`` is given."""
        if fcnt is None:
            fcnt = self.fcnt
            self.fcnt += 1
        if time_s is None:
            time_s = int(time.time()) - EPOCH_UNIX
        data: bytes = frame.encode(self.keys, self.device_id, fcnt, time_s, kind, dict(fields), flags)
        return data

    def publish_raw(self, payload: bytes, *, topic: str | None = None, retain: bool = False) -> None:
        info = self.client.publish(topic or self.up_topic, payload, qos=1, retain=retain)
        info.wait_for_publish(self.timeout_s)
        if not info.is_published():
            raise NodeSimError(f"node {self.device_id.hex()}: no PUBACK within {self.timeout_s}s")

    def send(self, kind: int, fields: Mapping[int, int | bytes], **kw: int) -> bytes:
        data = self.encode(kind, fields, **kw)
        self.publish_raw(data)
        self.sent.append(data)
        return data

    # -------------------------------------------------------------------------- downlinks

    def wait_downlinks(self, n: int, timeout_s: float | None = None) -> list[bytes]:
        """Block until ``n`` downlinks arrived (raises NodeSimError at the deadline)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.timeout_s)
        with self._cond:
            while len(self.downlinks) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NodeSimError(f"node {self.device_id.hex()}: {len(self.downlinks)}/{n} downlinks")
                self._cond.wait(left)
            return list(self.downlinks)

    def decode_downlink(self, data: bytes) -> frame.Frame:
        result: frame.Frame = frame.decode(data, self.keys, downlink=True)
        return result
