"""The self-test's way to a gateway: the laptop plays the node's NB-IoT link on the gateway's node broker.

``--gateway nbiot://HOST:PORT`` (or ``mqtt://``; port 1883 when left out) names the MQTT broker the
gateway's ``nbiot-mqtt`` ingress subscribes to (docs/protocol.md section 7.3). :func:`exchange` does on
the wire what firmware/radios/nbiot.py does: MQTT 3.1.1, client id ``ll-<device id hex>``, clean session
0, a QoS 1 subscription to ``lifeline/v1/nodes/<id>/down`` (acknowledged before anything is sent), the
frame as one QoS 1 PUBLISH on ``.../up``, then a receive window for downlinks.

The frame is the one the board produced (its bytes are not touched here). When a receive window passes
without an answer the same bytes are published again, until ``deadline_s``: a record imported a moment
ago reaches a running gateway at its next registry reload (``buffer.maintenance_s``), and a copy the
gateway rejected as an unknown device is accepted once it has the record; a copy of a frame it already
committed is a duplicate it drops, so it commits and acknowledges the frame at most once.

Every wait has a deadline; failures come back as :class:`LinkError` with a reason code, never a traceback.
The network loop is paho's thread; this module keeps no state between calls.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from lifeline.provisioning.errors import ProvisionError, UsageProblem

TOPIC_ROOT = "lifeline/v1/nodes"
DEFAULT_PORT = 1883
DEFAULT_DEADLINE_S = 10.0
NODE_RX_WINDOW_S = 2.0  # firmware default rx_ms: a node listens this long after its uplink's PUBACK
CONNECT_TIMEOUT_S = 5.0
_URL = re.compile(r"^(nbiot|mqtt)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?/?$")


class LinkError(ProvisionError):
    """The node broker could not be reached or did not take the frame (reason: broker_unreachable,
    broker_refused, subscribe_refused, publish_timeout)."""


@dataclass(frozen=True, slots=True)
class GatewayTarget:
    """The node broker of the gateway that should acknowledge the test frame."""

    host: str
    port: int = DEFAULT_PORT

    @classmethod
    def parse(cls, url: str) -> GatewayTarget:
        m = _URL.match(url.strip())
        if m is None:
            raise UsageProblem("bad_gateway", f"--gateway {url!r}: expected nbiot://HOST[:PORT] or mqtt://HOST[:PORT]")
        port = int(m.group(3)) if m.group(3) else DEFAULT_PORT
        if not 1 <= port <= 65535:
            raise UsageProblem("bad_gateway", f"--gateway {url!r}: port {port} is not 1..65535")
        return cls(m.group(2).strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def up_topic(device_id: bytes) -> str:
    return f"{TOPIC_ROOT}/{device_id.hex()}/up"


def down_topic(device_id: bytes) -> str:
    return f"{TOPIC_ROOT}/{device_id.hex()}/down"


@dataclass(frozen=True, slots=True)
class Exchange:
    """What happened on the node broker: every downlink heard (in arrival order), how often the frame
    was published, and the seconds from the first PUBLISH to the answer (or to the deadline)."""

    downlinks: tuple[bytes, ...]
    publishes: int
    seconds: float
    answered: bool  # ``is_answer`` accepted one of the downlinks before the deadline


class _Inbox:
    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.cond = threading.Condition()
        self.items: list[bytes] = []
        self.connack: int | None = None
        self.suback: list[int] | None = None

    def on_connect(self, c: mqtt.Client, u: object, flags: object, rc: ReasonCode, p: object) -> None:
        with self.cond:
            self.connack = rc.value
            self.cond.notify_all()

    def on_subscribe(self, c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode], p: Properties | None) -> None:
        with self.cond:
            self.suback = [r.value for r in rcs]
            self.cond.notify_all()

    def on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topic:
            with self.cond:
                self.items.append(bytes(msg.payload))
                self.cond.notify_all()

    def wait(self, pred: Callable[[], bool], until: float, clock: Callable[[], float]) -> bool:
        with self.cond:
            while not pred():
                left = until - clock()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


def exchange(target: GatewayTarget, device_id: bytes, frame_bytes: bytes, is_answer: Callable[[bytes], bool], *,
             deadline_s: float = DEFAULT_DEADLINE_S, window_s: float = NODE_RX_WINDOW_S,
             clock: Callable[[], float] = time.monotonic) -> Exchange:
    """Publish ``frame_bytes`` as node ``device_id`` and collect downlinks until one satisfies
    ``is_answer`` or ``deadline_s`` (counted from the first PUBLISH) has passed. Raises :class:`LinkError`
    when the broker cannot be reached or does not take the frame."""
    inbox = _Inbox(down_topic(device_id))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ll-{device_id.hex()}", protocol=mqtt.MQTTv311,
                         clean_session=False)
    client.on_connect = inbox.on_connect
    client.on_subscribe = inbox.on_subscribe
    client.on_message = inbox.on_message
    client.connect_timeout = CONNECT_TIMEOUT_S
    try:
        client.connect(target.host, target.port, keepalive=30)
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise LinkError("broker_unreachable", f"node broker {target}: {why}") from None
    client.loop_start()
    try:
        if not inbox.wait(lambda: inbox.connack is not None, clock() + CONNECT_TIMEOUT_S, clock):
            raise LinkError("broker_unreachable", f"node broker {target}: no CONNACK within {CONNECT_TIMEOUT_S:g} s")
        if inbox.connack != 0:
            raise LinkError("broker_refused", f"node broker {target} refused the connection (code {inbox.connack})")
        client.subscribe(inbox.topic, qos=1)
        if not inbox.wait(lambda: inbox.suback is not None, clock() + CONNECT_TIMEOUT_S, clock):
            raise LinkError("subscribe_refused", f"node broker {target}: no SUBACK within {CONNECT_TIMEOUT_S:g} s")
        if not inbox.suback or inbox.suback[0] >= 0x80:
            raise LinkError("subscribe_refused", f"node broker {target} refused the subscription to {inbox.topic}")
        start = clock()
        until = start + deadline_s
        publishes = 0
        answered = False
        seen = 0

        def has_answer() -> bool:
            nonlocal seen
            while seen < len(inbox.items):
                seen += 1
                if is_answer(inbox.items[seen - 1]):
                    return True
            return False

        while not answered and clock() < until:
            puback_s = max(0.1, min(CONNECT_TIMEOUT_S, until - clock()))
            if not _publish(client, up_topic(device_id), frame_bytes, puback_s):
                if publishes == 0:
                    raise LinkError("publish_timeout", f"node broker {target}: no PUBACK for the test frame")
                break  # the connection went away after an earlier copy: report what was heard
            publishes += 1
            answered = inbox.wait(has_answer, min(until, clock() + window_s), clock)
        with inbox.cond:
            got = tuple(inbox.items)
        return Exchange(got, publishes, clock() - start, answered)
    finally:
        client.disconnect()  # like a node going to sleep: the broker keeps its session
        client.loop_stop()


def _publish(client: mqtt.Client, topic: str, payload: bytes, timeout_s: float) -> bool:
    """One QoS 1 PUBLISH; True once the broker's PUBACK arrived within ``timeout_s``."""
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout_s)
        return info.is_published()
    except (RuntimeError, ValueError):  # paho: not queued / connection lost
        return False
