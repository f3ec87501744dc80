"""NB-IoT ingress: nodes publish raw frames to an MQTT broker; this adapter subscribes and feeds the pipeline.

Topic scheme (docs/protocol.md section 7.2)::

    lifeline/v1/nodes/<device id, 16 lowercase hex>/up     node -> gateway, QoS 1, payload = frame bytes
    lifeline/v1/nodes/<device id, 16 lowercase hex>/down   gateway -> node, QoS 1, payload = frame bytes

A node (firmware/radios/nbiot.py) connects with a persistent session (clean session 0, client id
``ll-<device id hex>``), subscribes to its ``down`` topic, publishes one frame per ``up`` message with
QoS 1 and then listens ``rx_ms`` (2000 ms by default) for downlinks before it disconnects and sleeps. A
downlink published within that window reaches it at once; the adapter gives each downlink an MQTT 5
message expiry equal to what is left of the window (or ``downlink_hold_s`` if set), so a command the
node missed is dropped by the broker instead of arriving stale at the next wake.

The adapter keeps a persistent session of its own (``session_expiry_s``) and acknowledges a message
(manual PUBACK, in the order received) only once its outcome is durable: ``Pipeline.submit_durable``
returns after the reading is committed to disk, or with the rejection reason. Frames published while the
gateway is away or restarting wait in the broker, and a frame the gateway had not committed when it died
is delivered again (docs/architecture.md, durability contract). Frames of one device are submitted one
after the other (its counters reach the replay check in order); different devices proceed in parallel,
so group commit still batches them. MQTT 5 ``receive_maximum`` bounds the unacknowledged frames the
broker sends at once, so pipeline back-pressure reaches the broker. (A sink without ``submit_durable``
gets plain ``submit`` and the PUBACK follows it.)

Checks before the pipeline (each a ``rejected.<reason>`` counter; the frame is dropped and acknowledged):
``bad_topic`` (not ``<root>/<16 lowercase hex>/up``), ``retained`` (a stale retained message),
``topic_mismatch`` (the header's device id is not the topic's), and the header reasons of
``frame.parse_header`` (``truncated``, ``too_long``, ``bad_version``, ``bad_suite``, ``bad_flags``).
Keys, MIC, counters and replay are the pipeline's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from lifeline.gateway.clock import Clock, SystemClock
from lifeline.gateway.ingress.base import DownlinkRequest, FrameSink, RawFrame, Reception
from lifeline.gateway.mqtt_async import (
    BrokerAddress,
    Connection,
    Message,
    MqttError,
    ProtocolName,
    TlsFiles,
    read_password,
)
from lifeline.gateway.tasks import cancel_and_wait
from lifeline.gateway.uplink import Backoff
from lifeline.protocols import frame

log = logging.getLogger(__name__)

RADIO = "nbiot"
TOPIC_ROOT = "lifeline/v1/nodes"
NODE_RX_WINDOW_MS = 2000  # firmware default: a node listens this long after its uplink's PUBACK
BASE_COUNTERS = ("received", "messages", "frames", "redelivered", "ack_lost", "connects", "connect_failures",
                 "connection_losses", "downlinks_sent")
_HEX_ID = re.compile(r"^[0-9a-f]{16}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SHARE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def up_topic(device_id: bytes, root: str = TOPIC_ROOT) -> str:
    return f"{root}/{device_id.hex()}/up"


def down_topic(device_id: bytes, root: str = TOPIC_ROOT) -> str:
    return f"{root}/{device_id.hex()}/down"


def device_from_topic(topic: str, root: str = TOPIC_ROOT) -> bytes | None:
    """The device id of ``<root>/<16 lowercase hex>/up``, or None for any other topic."""
    prefix = root + "/"
    if not topic.startswith(prefix) or not topic.endswith("/up"):
        return None
    middle = topic[len(prefix):-3]
    if not _HEX_ID.match(middle):
        return None
    return bytes.fromhex(middle)


@dataclass(frozen=True, slots=True)
class NbiotConfig:
    """Options of one ``type = "nbiot-mqtt"`` ingress (``[ingress.options]``)."""

    name: str
    host: str
    port: int = 1883
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password_file: str | None = None
    client_id: str | None = None  # default: lifeline-nbiot-<hostname>-<name> (stable: persistent session)
    protocol: str = "5"  # "5" or "3.1.1"
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    publish_timeout_s: float = 5.0
    session_expiry_s: int = 86_400  # the broker keeps frames for us this long while we are away
    receive_maximum: int = 100  # unacknowledged frames the broker may send at once (MQTT 5)
    share_group: str | None = None  # several gateways split one node broker: $share/<group>/...
    topic_root: str = TOPIC_ROOT
    downlink_hold_s: int = 0  # 0: a downlink expires with the node's window; else the broker holds it
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        def fail(key: str, reason: str) -> None:
            raise ValueError(f"{key}: {reason}")

        if not _NAME.match(self.name):
            fail("name", f"{self.name!r} must be 1-32 of A-Z a-z 0-9 _ -")
        if not self.host:
            fail("host", "empty")
        if not 1 <= self.port <= 65535:
            fail("port", f"{self.port} is not 1..65535")
        if (self.tls_cert is None) != (self.tls_key is None):
            fail("tls_key" if self.tls_key is None else "tls_cert", "tls_cert and tls_key go together")
        if self.protocol not in ("5", "3.1.1"):
            fail("protocol", f"{self.protocol!r} is not '5' or '3.1.1'")
        if self.share_group is not None:
            if not _SHARE.match(self.share_group):
                fail("share_group", "must be 1-64 of A-Z a-z 0-9 _ -")
            if self.protocol != "5":
                fail("share_group", "shared subscriptions need protocol '5'")
        if not 1 <= self.keepalive_s <= 3600:
            fail("keepalive_s", "is not 1..3600")
        for key in ("connect_timeout_s", "publish_timeout_s", "reconnect_min_s", "reconnect_max_s"):
            if not getattr(self, key) > 0:
                fail(key, "must be > 0")
        if self.reconnect_max_s < self.reconnect_min_s:
            fail("reconnect_max_s", "is below reconnect_min_s")
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            fail("session_expiry_s", "is not 0..4294967295")
        if not 1 <= self.receive_maximum <= 65535:
            fail("receive_maximum", "is not 1..65535")
        if not 0 <= self.downlink_hold_s <= 30 * 86400:
            fail("downlink_hold_s", "is not 0..2592000")
        if not self.topic_root or any(c in self.topic_root for c in "+#") or self.topic_root.endswith("/"):
            fail("topic_root", "must be a topic without wildcards or a trailing /")

    @classmethod
    def from_config(cls, table: Mapping[str, object], *, name: str) -> NbiotConfig:
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {"name": name}
        for key, value in table.items():
            f = known.get(key)
            if f is None or key == "name":
                names = ", ".join(sorted(k for k in known if k != "name"))
                raise ValueError(f"{key}: unknown option (known: {names})")
            want = str(f.type).replace(" ", "")
            base = want.removesuffix("|None")
            if value is None and want.endswith("|None"):
                kwargs[key] = None
                continue
            if base == "float" and isinstance(value, int | float) and not isinstance(value, bool):
                kwargs[key] = float(value)
            elif (base == "int" and isinstance(value, int) and not isinstance(value, bool)) or (
                base == "str" and isinstance(value, str)
            ):
                kwargs[key] = value
            else:
                raise ValueError(f"{key}: expected {base}, got {type(value).__name__}")
        if "host" not in kwargs:
            raise ValueError("host: required option missing")
        return cls(**kwargs)

    def address(self) -> BrokerAddress:
        tls = None
        if self.tls_ca is not None or self.tls_cert is not None:
            tls = TlsFiles(
                ca=Path(self.tls_ca) if self.tls_ca else None,
                cert=Path(self.tls_cert) if self.tls_cert else None,
                key=Path(self.tls_key) if self.tls_key else None,
            )
        client_id = self.client_id or f"lifeline-nbiot-{socket.gethostname()}-{self.name}"
        return BrokerAddress(
            host=self.host, port=self.port, client_id=client_id[:64], tls=tls, username=self.username,
            password=read_password(Path(self.password_file) if self.password_file else None),
        )

    @property
    def subscription(self) -> str:
        topic = f"{self.topic_root}/+/up"
        return f"$share/{self.share_group}/{topic}" if self.share_group else topic


class NbiotAdapter:
    """:class:`~lifeline.gateway.ingress.base.IngressAdapter` for NB-IoT nodes behind an MQTT broker."""

    radio = RADIO

    def __init__(
        self,
        config: NbiotConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._address = config.address()
        self._clock: Clock = clock or SystemClock()
        self._sleep = sleep or asyncio.sleep
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, rng=rng or random.Random())
        self._counts: Counter[str] = Counter()
        self._queue: asyncio.Queue[tuple[Connection, Message]] = asyncio.Queue()
        self._acks: asyncio.Queue[_Pending] = asyncio.Queue()  # in the order the broker sent them
        self._lanes: dict[bytes, asyncio.Queue[tuple[RawFrame, asyncio.Future[str]]]] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._outstanding = 0  # messages handed on and not yet acknowledged (or given up)
        self._idle = asyncio.Event()
        self._idle.set()
        self._conn: Connection | None = None
        self._sink: FrameSink | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.connected = asyncio.Event()

    @classmethod
    def from_config(cls, table: Mapping[str, object], *, name: str, clock: Clock | None = None) -> NbiotAdapter:
        return cls(NbiotConfig.from_config(table, name=name), clock=clock)

    # --------------------------------------------------------------------- IngressAdapter

    async def start(self, sink: FrameSink) -> None:
        self._sink = sink
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._supervise(), name=f"{self.name}-mqtt"),
            asyncio.create_task(self._deliver(), name=f"{self.name}-deliver"),
            asyncio.create_task(self._acknowledge(), name=f"{self.name}-ack"),
        ]

    async def stop(self, drain_timeout_s: float = 3.0) -> None:
        """Stop taking frames, let the ones the pipeline already has reach their outcome and be acknowledged
        (bounded), then disconnect. Whatever is left unacknowledged stays with the broker."""
        self._stopping = True
        if self._tasks:
            self._tasks[0].cancel()  # the supervisor: no reconnect from here on
            self._tasks[1].cancel()  # the reader: nothing new goes to the pipeline
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        await cancel_and_wait([*self._tasks, *self._lane_tasks])
        self._tasks = []
        self._lane_tasks.clear()
        self._lanes.clear()
        self._acks = asyncio.Queue()
        self._queue = asyncio.Queue()  # received but not taken: the broker sends them again
        self._outstanding = 0
        self._idle.set()
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None:
            # unacknowledged frames stay with the broker (persistent session) for the next start
            await conn.disconnect(timeout_s=2.0)

    async def wait_connected(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def counters(self) -> Mapping[str, int]:
        out = dict.fromkeys(BASE_COUNTERS, 0)
        out.update(self._counts)
        return out

    async def send_downlink(self, request: DownlinkRequest) -> bool:
        reason = await self._send_downlink(request)
        self._counts["downlinks_sent" if reason is None else f"downlink_failed.{reason}"] += 1
        return reason is None

    # -------------------------------------------------------------------------- internals

    async def _send_downlink(self, request: DownlinkRequest) -> str | None:
        rx = request.reception
        if rx.radio != RADIO or rx.adapter != self.name:
            return "wrong_adapter"
        if len(request.device_id) != 8 or not 1 <= len(request.payload) <= frame.MAX_INPUT:
            return "bad_request"
        left_ms = request.deadline_ms - self._clock.now_ms()
        if left_ms <= 0:
            return "window_closed"
        conn = self._conn
        if conn is None or not conn.connected:
            return "not_connected"
        hold = self.config.downlink_hold_s or max(1, math.ceil(left_ms / 1000))
        try:
            await conn.publish(
                down_topic(request.device_id, self.config.topic_root), request.payload, qos=1,
                timeout_s=self.config.publish_timeout_s, expiry_s=hold,
            )
        except MqttError as e:
            log.warning("%s: downlink to %s failed: %s", self.name, request.device_id.hex(), e)
            return "publish_failed"
        return None

    async def _supervise(self) -> None:
        cfg = self.config
        protocol: ProtocolName = "5" if cfg.protocol == "5" else "3.1.1"
        while not self._stopping:
            holder: list[Connection] = []  # messages carry their connection: acks go back on it

            def on_message(message: Message, holder: list[Connection] = holder) -> None:
                self._counts["received"] += 1
                self._queue.put_nowait((holder[0], message))

            conn = Connection(
                self._address,
                protocol=protocol,
                keepalive_s=cfg.keepalive_s,
                clean_start=cfg.session_expiry_s == 0,
                session_expiry_s=cfg.session_expiry_s,
                receive_maximum=cfg.receive_maximum,
                manual_ack=True,
                on_message=on_message,
                monotonic=self._clock.monotonic,
            )
            holder.append(conn)
            try:
                await conn.connect(cfg.connect_timeout_s)
                await conn.subscribe([(cfg.subscription, 1)], timeout_s=cfg.connect_timeout_s)
            except MqttError as e:
                conn.abort(str(e))
                self._counts["connect_failures"] += 1
                delay = self._backoff.next()
                log.warning("%s: broker %s: %s; retrying in %.1fs", self.name, self._address, e, delay)
                await self._sleep(delay)
                continue
            self._backoff.reset()
            self._counts["connects"] += 1
            self._conn = conn
            self.connected.set()
            log.info("%s: subscribed to %s on %s", self.name, cfg.subscription, self._address)
            lost = conn.lost
            assert lost is not None
            reason = await asyncio.shield(lost)
            self.connected.clear()
            self._conn = None
            self._counts["connection_losses"] += 1
            log.warning("%s: lost %s: %s", self.name, self._address, reason)

    def _reject(self, conn: Connection, message: Message, reason: str) -> None:
        self._counts[f"rejected.{reason}"] += 1
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        done.set_result(reason)
        self._track(_Pending(conn, message.mid, message.qos, done, False))

    def _track(self, pending: _Pending) -> None:
        self._outstanding += 1
        self._idle.clear()
        self._acks.put_nowait(pending)

    def _settled(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    async def _deliver(self) -> None:
        """Check each message, then hand it to its device's lane (frames of one device stay in order)."""
        root = self.config.topic_root
        loop = asyncio.get_running_loop()
        while True:
            conn, message = await self._queue.get()
            self._counts["messages"] += 1
            if message.dup:
                self._counts["redelivered"] += 1
            dev = device_from_topic(message.topic, root)
            if dev is None:
                self._reject(conn, message, "bad_topic")
                continue
            if message.retain:
                self._reject(conn, message, "retained")
                continue
            try:
                header = frame.parse_header(message.payload)
            except frame.FrameError as e:
                self._reject(conn, message, e.reason)
                continue
            if header.dev_id != dev:
                self._reject(conn, message, "topic_mismatch")
                continue
            raw = RawFrame(
                payload=message.payload,
                reception=Reception(radio=RADIO, adapter=self.name, rx_ms=self._clock.now_ms(), context=dev),
            )
            done: asyncio.Future[str] = loop.create_future()
            self._track(_Pending(conn, message.mid, message.qos, done, True))
            lane = self._lanes.get(dev)
            if lane is None:
                lane = self._lanes[dev] = asyncio.Queue()
                task = loop.create_task(self._run_lane(dev, lane), name=f"{self.name}-{dev.hex()}")
                self._lane_tasks.add(task)
                task.add_done_callback(self._lane_tasks.discard)
            lane.put_nowait((raw, done))

    async def _run_lane(self, dev: bytes, lane: asyncio.Queue[tuple[RawFrame, asyncio.Future[str]]]) -> None:
        """One device's frames, one at a time: the next is submitted after the previous one's outcome is
        final, so the pipeline sees each device's counters in the order the node sent them."""
        sink = self._sink
        assert sink is not None
        durable: Callable[[RawFrame], Awaitable[str]] | None = getattr(sink, "submit_durable", None)
        while True:
            try:
                raw, done = lane.get_nowait()
            except asyncio.QueueEmpty:
                del self._lanes[dev]  # no await since the check: the deliver loop makes a new lane
                return
            try:
                if durable is not None:
                    outcome = await durable(raw)  # after COMMIT (or the rejection reason)
                else:
                    await sink.submit(raw)  # a sink without durability: acknowledged once queued
                    outcome = "submitted"
            except Exception as e:  # never acknowledge what the pipeline did not take
                if not done.done():
                    done.set_exception(e)
                continue
            if not done.done():
                done.set_result(outcome)

    async def _acknowledge(self) -> None:
        """PUBACK each message, in the order received, once its outcome is final."""
        while True:
            p = await self._acks.get()
            try:
                outcome = await p.done
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # not acknowledged: the broker delivers it again after the next reconnect
                self._counts["submit_failed"] += 1
                log.warning("%s: frame not taken by the pipeline: %s", self.name, e)
                self._settled()
                continue
            if p.frame:
                self._counts["frames"] += 1
                self._counts[f"outcome.{outcome}"] += 1
            if p.qos > 0 and not p.conn.ack(p.mid, p.qos):
                # the connection died meanwhile: the broker delivers it again, the pipeline dedupes
                self._counts["ack_lost"] += 1
            self._settled()


@dataclass(frozen=True, slots=True)
class _Pending:
    conn: Connection
    mid: int
    qos: int
    done: asyncio.Future[str]
    frame: bool  # False for a message the adapter itself rejected
