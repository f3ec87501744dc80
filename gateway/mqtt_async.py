"""One MQTT connection driven by the running asyncio loop (paho-mqtt 2.x underneath, no paho thread).

The style of aiomqtt: the blocking part of ``connect`` (TCP + TLS handshake, bounded by the connect
timeout) runs in an executor; afterwards paho's socket is serviced from the loop with ``add_reader`` /
``add_writer`` and a small housekeeping task (keepalive pings). Every QoS 1 publish and subscribe
resolves a future keyed by its message id, so many messages are in flight at once (``max_inflight``)
and throughput is not bound by the round trip.

A :class:`Connection` is used once: connect, work, and when it is lost make a new one. Reconnect policy
belongs to the owner (uplink supervisor, ingress adapter), never to this class. paho types never leave
this module: callers see :class:`Message`, plain strings and the :class:`MqttError` family.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

ProtocolName = Literal["5", "3.1.1"]
_PROTOCOLS: dict[str, MQTTProtocolVersion] = {"5": MQTTProtocolVersion.MQTTv5, "3.1.1": MQTTProtocolVersion.MQTTv311}
_ZERO_MS = 0.0


class MqttError(Exception):
    """Root of every error this module raises (paho and socket errors are translated to it)."""


class MqttConnectError(MqttError):
    """The connection could not be established (TCP, TLS, CONNACK refusal, timeout)."""


class MqttConnectionLost(MqttError):
    """The connection ended while the operation was waiting."""


class MqttTimeout(MqttError):
    """No answer from the broker before the deadline."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the CA that signs the broker certificate, and our client certificate + key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca) if self.ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None:
            ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return ctx


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    client_id: str = ""
    tls: TlsFiles | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Message:
    """A received PUBLISH. ``mid`` is needed for :meth:`Connection.ack` when manual acks are on."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    dup: bool = False


def read_password(path: Path | None) -> str | None:
    """First line of a password file (never logged)."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise MqttError(f"cannot read password file {path}: {type(e).__name__}") from None


def _reason_text(rc: ReasonCode | int | MQTTErrorCode) -> str:
    if isinstance(rc, ReasonCode):
        return str(rc.getName())
    if isinstance(rc, MQTTErrorCode):
        return paho.error_string(rc)
    return str(rc)


def _is_failure(rc: ReasonCode | int) -> bool:
    if isinstance(rc, ReasonCode):
        return bool(rc.is_failure)
    return rc >= 0x80


def _expire(fut: asyncio.Future[None], timeout_s: float, address: BrokerAddress) -> None:
    if not fut.done():
        fut.set_exception(MqttTimeout(f"{address}: no PUBACK within {timeout_s:g}s"))


class Connection:
    """One paho client on the running loop. Not reusable; create a new one after :attr:`lost` fires."""

    def __init__(
        self,
        address: BrokerAddress,
        *,
        protocol: ProtocolName = "5",
        keepalive_s: int = 30,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
        max_inflight: int = 100,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        on_message: Callable[[Message], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"unknown MQTT protocol {protocol!r} (use '5' or '3.1.1')")
        self.address = address
        self.protocol: ProtocolName = protocol
        self.keepalive_s = max(1, int(keepalive_s))
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._on_message_cb = on_message
        self._monotonic = monotonic
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        v5 = protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=address.client_id,
            protocol=_PROTOCOLS[protocol],
            clean_session=None if v5 else clean_start,
        )
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        if manual_ack:
            self._client.manual_ack_set(True)
        if address.username is not None:
            self._client.username_pw_set(address.username, address.password)
        if address.tls is not None:
            self._client.tls_set_context(address.tls.context())
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._sock: Any = None
        self._fd = -1
        self._writer_on = False
        self._dead = False
        self._connack: asyncio.Future[bool] | None = None
        self.lost: asyncio.Future[str] | None = None
        self._pub: dict[int, tuple[asyncio.Future[None], float]] = {}
        self._sub: dict[int, asyncio.Future[list[int]]] = {}
        self._misc_task: asyncio.Task[None] | None = None
        self.last_rx = _ZERO_MS  # monotonic time of the last bytes read from the broker
        self.connected = False
        self.session_present = False

    # ------------------------------------------------------------------------ properties

    @property
    def pending(self) -> int:
        return len(self._pub)

    def oldest_pending_since(self) -> float | None:
        """Monotonic start time of the oldest publish still waiting for its PUBACK."""
        if not self._pub:
            return None
        return min(t for _, t in self._pub.values())

    # --------------------------------------------------------------------------- connect

    async def connect(self, timeout_s: float) -> bool:
        """TCP (+TLS) connect and wait for a successful CONNACK. Returns the session-present flag.

        Raises :class:`MqttConnectError` (refused, unreachable, handshake failed, or the deadline passed)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._connack = loop.create_future()
        self.lost = loop.create_future()
        self._client.connect_timeout = max(0.1, timeout_s)
        deadline = loop.time() + timeout_s
        try:
            # paho bounds TCP connect and the TLS handshake by connect_timeout; the margin lets it win
            await asyncio.wait_for(loop.run_in_executor(None, self._blocking_connect), timeout_s + 0.5)
        except TimeoutError:
            self.abort("connect timeout")
            raise MqttConnectError(f"{self.address}: TCP/TLS connect timed out after {timeout_s:g}s") from None
        except ssl.SSLError as e:
            self.abort("tls")
            raise MqttConnectError(f"{self.address}: TLS failed: {e.reason or e}") from None
        except (OSError, ValueError) as e:
            self.abort("socket")
            raise MqttConnectError(f"{self.address}: {type(e).__name__}: {e}") from None
        self._attach()
        try:
            remaining = max(0.0, deadline - loop.time())
            self.session_present = await asyncio.wait_for(asyncio.shield(self._connack), remaining)
        except TimeoutError:
            self.abort("no CONNACK")
            raise MqttConnectError(f"{self.address}: no CONNACK within {timeout_s:g}s") from None
        except MqttError as e:
            self.abort(str(e))
            raise MqttConnectError(f"{self.address}: {e}") from None
        self.connected = True
        self._misc_task = loop.create_task(self._misc(), name=f"mqtt-misc {self.address}")
        return self.session_present

    def _blocking_connect(self) -> None:
        props: Properties | None = None
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self._session_expiry_s:
                props.SessionExpiryInterval = self._session_expiry_s
            if self._receive_maximum:
                props.ReceiveMaximum = self._receive_maximum
            self._client.connect(
                self.address.host, self.address.port, keepalive=self.keepalive_s,
                clean_start=self._clean_start, properties=props,
            )
        else:
            self._client.connect(self.address.host, self.address.port, keepalive=self.keepalive_s)

    def _attach(self) -> None:
        """Hand paho's socket to the loop (runs on the loop thread, after the executor part)."""
        assert self._loop is not None
        sock = self._client.socket()
        if sock is None:
            raise MqttConnectError(f"{self.address}: socket closed during connect")
        self._sock = sock
        self._fd = sock.fileno()
        self.last_rx = self._monotonic()
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write
        self._loop.add_reader(self._fd, self._readable)
        if self._client.want_write():
            self._set_writer(True)

    # ----------------------------------------------------------------------- loop wiring

    def _in_loop(self, fn: Callable[[], None]) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _readable(self) -> None:
        if self._dead:
            return
        self.last_rx = self._monotonic()
        rc = self._client.loop_read()
        sock = self._sock
        # TLS keeps decrypted bytes inside the SSL object where select() cannot see them.
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not self._dead and isinstance(sock, ssl.SSLSocket):
            try:
                if sock.pending() <= 0:
                    break
            except (OSError, ValueError):
                break
            rc = self._client.loop_read()
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            self._mark_lost(_reason_text(rc))

    def _writable(self) -> None:
        if self._dead:
            return
        rc = self._client.loop_write()
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            self._mark_lost(_reason_text(rc))

    def _set_writer(self, on: bool) -> None:
        if self._loop is None or self._fd < 0 or self._dead or on == self._writer_on:
            return
        if on:
            self._loop.add_writer(self._fd, self._writable)
        else:
            self._loop.remove_writer(self._fd)
        self._writer_on = on

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(lambda: self._set_writer(True))

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(lambda: self._set_writer(False))

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._detach)

    def _detach(self) -> None:
        if self._loop is not None and self._fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            if self._writer_on:
                with contextlib.suppress(Exception):
                    self._loop.remove_writer(self._fd)
            self._writer_on = False
        self._fd = -1

    async def _misc(self) -> None:
        interval = min(1.0, self.keepalive_s / 4)
        while not self._dead:
            await asyncio.sleep(interval)
            if self._dead:
                return
            rc = self._client.loop_misc()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._mark_lost(f"keepalive: {_reason_text(rc)}")
                return

    # ------------------------------------------------------------------------ callbacks

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        fut = self._connack
        if fut is None or fut.done():
            return
        if _is_failure(rc):
            fut.set_exception(MqttConnectError(f"CONNACK refused: {_reason_text(rc)}"))
        else:
            fut.set_result(bool(getattr(flags, "session_present", False)))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self._in_loop(lambda: self._mark_lost(f"disconnected: {_reason_text(rc)}"))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        entry = self._pub.pop(mid, None)
        if entry is None or entry[0].done():
            return
        if _is_failure(rc):
            entry[0].set_exception(MqttError(f"PUBACK refused: {_reason_text(rc)}"))
        else:
            entry[0].set_result(None)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any) -> None:
        fut = self._sub.pop(mid, None)
        if fut is None or fut.done():
            return
        if any(_is_failure(rc) for rc in rcs):
            fut.set_exception(MqttError(f"SUBACK refused: {', '.join(_reason_text(rc) for rc in rcs)}"))
        else:
            fut.set_result([int(rc.value) for rc in rcs])

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_message_cb is None or self._dead:
            return
        message = Message(
            topic=msg.topic, payload=bytes(msg.payload), qos=msg.qos, retain=bool(msg.retain),
            mid=msg.mid, dup=bool(msg.dup),
        )
        try:
            self._on_message_cb(message)
        except Exception:  # a consumer bug must not kill the network loop
            log.exception("message handler failed for %s", msg.topic)

    # ------------------------------------------------------------------------ teardown

    def _mark_lost(self, reason: str) -> None:
        if self._dead:
            return
        self._dead = True
        self.connected = False
        self._detach()
        err = MqttConnectionLost(f"{self.address}: {reason}")
        for fut, _ in self._pub.values():
            if not fut.done():
                fut.set_exception(err)
        self._pub.clear()
        for sfut in self._sub.values():
            if not sfut.done():
                sfut.set_exception(err)
        self._sub.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(err)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(reason)
        if self._misc_task is not None and self._misc_task is not asyncio.current_task():
            self._misc_task.cancel()
        # paho must not call back into a finished connection (e.g. from its __del__ after the loop closed)
        self._client.on_socket_close = None
        self._client.on_socket_register_write = None
        self._client.on_socket_unregister_write = None
        self._client.on_disconnect = None
        # close the socket ourselves: a stalled peer must not keep the descriptor
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection now without a DISCONNECT (the broker will send our will)."""
        self._mark_lost(reason)

    async def disconnect(self, timeout_s: float = 2.0) -> None:
        """Send DISCONNECT (no will is published), wait for the socket to close (bounded), then abort."""
        if self._dead or self.lost is None:
            return
        self._client.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.lost), timeout_s)
        self.abort("disconnected by us")
        if self._misc_task is not None:
            self._misc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._misc_task

    # -------------------------------------------------------------------------- actions

    def publish_future(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, expiry_s: int | None = None
    ) -> asyncio.Future[None]:
        """Queue a publish; the future resolves on PUBACK (QoS 1) or once written (QoS 0)."""
        if self._dead or not self.connected or self._loop is None:
            raise MqttConnectionLost(f"{self.address}: not connected")
        props: Properties | None = None
        if expiry_s is not None and self.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = max(1, int(expiry_s))
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except ValueError as e:
            raise MqttError(f"publish refused: {e}") from None
        fut: asyncio.Future[None] = self._loop.create_future()
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttConnectionLost(f"{self.address}: publish failed: {_reason_text(info.rc)}")
        if qos == 0:
            fut.set_result(None)
        else:
            self._pub[info.mid] = (fut, self._monotonic())
        return fut

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout_s: float = 10.0,
        expiry_s: int | None = None,
    ) -> None:
        """Publish and wait for the PUBACK (QoS 1). Raises MqttTimeout / MqttConnectionLost / MqttError."""
        fut = self.publish_future(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)
        if fut.done() or math.isinf(timeout_s):
            await fut
            return
        # one timer per message instead of wait_for(): measurably cheaper at tens of thousands per second
        assert self._loop is not None
        timer = self._loop.call_later(timeout_s, _expire, fut, timeout_s, self.address)
        try:
            await fut
        finally:
            timer.cancel()

    async def subscribe(self, topics: Sequence[tuple[str, int]], timeout_s: float = 10.0) -> list[int]:
        """Subscribe and wait for the SUBACK; returns the granted QoS per topic."""
        if self._dead or not self.connected or self._loop is None:
            raise MqttConnectionLost(f"{self.address}: not connected")
        try:
            rc, mid = self._client.subscribe(list(topics))
        except ValueError as e:
            raise MqttError(f"subscribe refused: {e}") from None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttConnectionLost(f"{self.address}: subscribe failed: {_reason_text(rc)}")
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._sub[mid] = fut
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            self._sub.pop(mid, None)
            raise MqttTimeout(f"{self.address}: no SUBACK within {timeout_s:g}s") from None

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) until every publish sent so far is acknowledged or failed."""
        futs = [f for f, _ in self._pub.values() if not f.done()]
        if futs:
            await asyncio.wait(futs, timeout=timeout_s)

    def ack(self, mid: int, qos: int = 1) -> bool:
        """Acknowledge a received message (manual-ack mode). False if the connection is gone."""
        if self._dead:
            return False
        return self._client.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS
