"""The platform uplink: :class:`MqttUplink` implements ``uplink_api.AckedPublisher`` over MQTT/TLS.

- Endpoints in priority order. On loss the supervisor reconnects to the best endpoint that answers
  (failover); while on a lower-priority endpoint it probes the better ones every ``failback_s`` and moves
  back when one answers (fail-back). The old connection drains its in-flight messages, publishes "offline"
  presence there and disconnects.
- Between rounds where no endpoint answered it waits a jittered exponential backoff (:class:`Backoff`,
  seeded RNG and injectable sleep for tests).
- Supervised: a connection whose oldest unacknowledged publish has waited ``stall_s`` with nothing read
  from the broker meanwhile, or that has read nothing for two keepalive periods (no PINGRESP), is torn
  down and replaced, so a frozen broker or a dead network path never blocks the forwarder for long.
- Presence: a retained will "offline" on ``lifeline/v1/<gw>/state``; "online" (retained) once subscribed.
- Commands: ``lifeline/v1/<gw>/down`` is subscribed (QoS 1) on every connection; payloads go to the
  handler from :meth:`set_command_handler` or to the :meth:`commands` async iterator.
- ``publish`` is QoS 1, returns after PUBACK, and raises :class:`UplinkUnavailable` when not connected, when
  the PUBACK deadline passes, or when the connection is lost meanwhile. It never retries by itself: the
  forwarder keeps the batch and tries again (at-least-once; the platform dedupes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from lifeline.gateway.clock import Clock, SystemClock
from lifeline.gateway.mqtt_async import (
    BrokerAddress,
    Connection,
    Message,
    MqttError,
    MqttTimeout,
    ProtocolName,
    TlsFiles,
    Will,
    read_password,
)
from lifeline.gateway.tasks import cancel_and_wait
from lifeline.gateway.uplink_api import (
    CommandHandler,
    UplinkUnavailable,
    topic_down,
    topic_state,
)

if TYPE_CHECKING:
    from lifeline.gateway.config import UplinkConfig, UplinkEndpoint

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"

# endpoint_states() values
CONNECTED = "connected"
CONNECTING = "connecting"
DOWN = "down"
STANDBY = "standby"
CLOSED = "closed"

COUNTER_NAMES = (
    "connects", "connect_failures", "connection_losses", "stalls", "failovers", "failbacks",
    "published", "publish_failures", "publish_timeouts", "not_connected",
    "commands_received", "commands_dropped", "command_handler_errors",
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One broker the uplink may use; lower index in the list = preferred."""

    name: str
    address: BrokerAddress


class Backoff:
    """Exponential backoff with "equal jitter": the n-th delay lies in [d/2, d], d = min(cap, base * 2**n)."""

    def __init__(self, initial_s: float, max_s: float, *, rng: random.Random, multiplier: float = 2.0) -> None:
        if initial_s <= 0 or max_s < initial_s or multiplier < 1:
            raise ValueError("backoff needs 0 < initial <= max and multiplier >= 1")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self._rng = rng
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.max_s, self.initial_s * self.multiplier ** min(self.attempt, 64))
        self.attempt += 1
        return ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


def endpoints_from_config(cfg: UplinkConfig) -> list[Endpoint]:
    """Config endpoints (already sorted by priority) to runtime endpoints; reads password files."""
    out: list[Endpoint] = []
    for ep in cfg.endpoints:
        out.append(Endpoint(ep.name, address_from_config(ep)))
    return out


def address_from_config(ep: UplinkEndpoint) -> BrokerAddress:
    tls = None
    if ep.tls_ca is not None or ep.tls_cert is not None:
        tls = TlsFiles(ca=ep.tls_ca, cert=ep.tls_cert, key=ep.tls_key)
    return BrokerAddress(
        host=ep.host, port=ep.port, client_id=ep.client_id, tls=tls,
        username=ep.username, password=read_password(ep.password_file),
    )


class MqttUplink:
    """AckedPublisher + UplinkService + CommandSource over paho-mqtt, driven by the asyncio loop."""

    def __init__(
        self,
        gateway_id: str,
        endpoints: Sequence[Endpoint],
        *,
        protocol: ProtocolName = "5",
        keepalive_s: float = 30,
        connect_timeout_s: float = 10,
        publish_timeout_s: float = 10,
        stall_s: float | None = None,
        failback_s: float = 60,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30,
        max_inflight: int = 100,
        session_expiry_s: int = 86_400,
        command_queue_max: int = 1000,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("the uplink needs at least one endpoint")
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate endpoint names: {names}")
        self.gateway_id = gateway_id
        self.endpoints = tuple(endpoints)
        self.protocol: ProtocolName = protocol
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.stall_s = stall_s if stall_s is not None else publish_timeout_s
        self.failback_s = failback_s
        self.max_inflight = max_inflight
        self.session_expiry_s = session_expiry_s
        self._clock = clock or SystemClock()
        self.connected_since_ms: int | None = None  # clock time of the last (re)connect
        self._backoff = Backoff(backoff_initial_s, backoff_max_s, rng=rng or random.Random())
        self._sleep = sleep or asyncio.sleep
        self.state_topic = topic_state(gateway_id)
        self.down_topic = topic_down(gateway_id)
        self._states: dict[str, str] = {n: STANDBY for n in names}
        self.last_errors: dict[str, str] = {}
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._active: Connection | None = None
        self._active_index: int | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._connected_event = asyncio.Event()
        self._commands: asyncio.Queue[bytes] = asyncio.Queue(maxsize=command_queue_max)
        self._handler: CommandHandler | None = None
        self._handler_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(
        cls,
        gateway_id: str,
        cfg: UplinkConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        **options: object,
    ) -> MqttUplink:
        """Build from the gateway config's ``[uplink]`` section (endpoints sorted by priority)."""
        return cls(
            gateway_id,
            endpoints_from_config(cfg),
            keepalive_s=cfg.keepalive_s,
            connect_timeout_s=cfg.connect_timeout_s,
            publish_timeout_s=cfg.publish_timeout_s,
            backoff_initial_s=cfg.backoff_initial_s,
            backoff_max_s=cfg.backoff_max_s,
            failback_s=cfg.failback_s,
            protocol="3.1.1" if cfg.protocol == "3.1.1" else "5",
            clock=clock,
            rng=rng,
            **options,  # type: ignore[arg-type]
        )

    # ----------------------------------------------------------------------- public API

    def is_connected(self) -> bool:
        conn = self._active
        return conn is not None and conn.connected

    def endpoint_states(self) -> Mapping[str, str]:
        return MappingProxyType(dict(self._states))

    @property
    def active_endpoint(self) -> str | None:
        if self._active_index is None or not self.is_connected():
            return None
        return self.endpoints[self._active_index].name

    def counters(self) -> Mapping[str, int]:
        return MappingProxyType(dict(self._counters))

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._supervisor is None:
            self._closing = False
            self._supervisor = asyncio.get_running_loop().create_task(self._run(), name="uplink-supervisor")

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once connected (bounded wait)."""
        if self.is_connected():
            return True
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout_s)
        except TimeoutError:
            return False
        return self.is_connected()

    async def publish(self, topic: str, payload: bytes) -> None:
        conn = self._active
        if conn is None or not conn.connected:
            self._counters["not_connected"] += 1
            raise UplinkUnavailable("not connected to any endpoint")
        try:
            await conn.publish(topic, payload, qos=1, timeout_s=self.publish_timeout_s)
        except MqttTimeout as e:
            self._counters["publish_timeouts"] += 1
            raise UplinkUnavailable(str(e)) from None
        except MqttError as e:
            self._counters["publish_failures"] += 1
            raise UplinkUnavailable(str(e)) from None
        self._counters["published"] += 1

    def set_command_handler(self, handler: CommandHandler) -> None:
        """Every payload received on ``lifeline/v1/<gw>/down`` is awaited in ``handler``, in order."""
        self._handler = handler
        if self._handler_task is None:
            with contextlib.suppress(RuntimeError):  # no running loop yet: started by start()
                self._handler_task = asyncio.get_running_loop().create_task(self._dispatch_commands())

    async def commands(self) -> AsyncIterator[bytes]:
        """Command payloads as they arrive (when no handler is set)."""
        while True:
            yield await self._commands.get()

    async def close(self) -> None:
        """Publish "offline" presence if connected, disconnect, stop the supervisor."""
        self._closing = True
        conn, self._active = self._active, None
        sup, self._supervisor = self._supervisor, None
        if sup is not None:
            await cancel_and_wait([sup])
        self._connected_event.clear()
        if conn is not None:
            await self._retire(conn, drain=True)
        await cancel_and_wait(list(self._background))
        if self._handler_task is not None:
            await cancel_and_wait([self._handler_task])
            self._handler_task = None
        for name in self._states:
            self._states[name] = CLOSED

    # ---------------------------------------------------------------------- supervision

    async def _run(self) -> None:
        if self._handler is not None and self._handler_task is None:
            self._handler_task = asyncio.get_running_loop().create_task(self._dispatch_commands())
        first = True
        while not self._closing:
            found = await self._connect_first(range(len(self.endpoints)))
            if found is None:
                delay = self._backoff.next()
                log.info("uplink: no endpoint reachable, retrying in %.2fs", delay)
                await self._sleep(delay)
                continue
            self._backoff.reset()
            index, conn = found
            if not first and index > 0:
                self._counters["failovers"] += 1
            first = False
            await self._serve(index, conn)

    async def _connect_first(self, indices: Sequence[int] | range) -> tuple[int, Connection] | None:
        for i in indices:
            if self._closing:
                return None
            conn = await self._connect(i)
            if conn is not None:
                return i, conn
        return None

    async def _connect(self, index: int) -> Connection | None:
        """A ready connection to endpoint ``index`` (subscribed, "online" published) or None."""
        ep = self.endpoints[index]
        if self._states.get(ep.name) != CONNECTED:
            self._states[ep.name] = CONNECTING
        conn = Connection(
            ep.address,
            protocol=self.protocol,
            keepalive_s=max(1, round(self.keepalive_s)),
            clean_start=self.session_expiry_s <= 0,
            session_expiry_s=self.session_expiry_s,
            will=Will(self.state_topic, OFFLINE, qos=1, retain=True),
            max_inflight=self.max_inflight,
            on_message=self._on_message,
            monotonic=self._clock.monotonic,
        )
        try:
            await conn.connect(self.connect_timeout_s)
            await conn.subscribe([(self.down_topic, 1)], timeout_s=self.connect_timeout_s)
            await conn.publish(self.state_topic, ONLINE, qos=1, retain=True, timeout_s=self.connect_timeout_s)
        except MqttError as e:
            conn.abort(str(e))
            self._counters["connect_failures"] += 1
            self._states[ep.name] = DOWN
            self.last_errors[ep.name] = str(e)
            log.warning("uplink endpoint %s: %s", ep.name, e)
            return None
        self._counters["connects"] += 1
        self._states[ep.name] = STANDBY
        return conn

    def _activate(self, index: int, conn: Connection) -> None:
        for i, ep in enumerate(self.endpoints):
            if i == index:
                self._states[ep.name] = CONNECTED
            elif self._states[ep.name] == CONNECTED:
                self._states[ep.name] = STANDBY
        self._active = conn
        self._active_index = index
        self.connected_since_ms = self._clock.now_ms()
        self._connected_event.set()
        log.info("uplink: connected to %s (%s)", self.endpoints[index].name, conn.address)

    def _stalled(self, conn: Connection, now: float) -> str | None:
        oldest = conn.oldest_pending_since()
        if oldest is not None and now - oldest >= self.stall_s and conn.last_rx <= oldest:
            return f"no PUBACK and nothing read for {now - oldest:.1f}s"
        if now - conn.last_rx >= 2 * self.keepalive_s + 1:
            return f"nothing read for {now - conn.last_rx:.1f}s (no PINGRESP)"
        return None

    async def _serve(self, index: int, conn: Connection) -> None:
        self._activate(index, conn)
        tick = max(0.05, min(1.0, self.keepalive_s / 4, self.stall_s / 4))
        next_probe = self._clock.monotonic() + self.failback_s
        probe: asyncio.Task[tuple[int, Connection] | None] | None = None
        try:
            while not self._closing:
                lost = conn.lost
                assert lost is not None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(lost), tick)
                if lost.done():
                    self._counters["connection_losses"] += 1
                    self.last_errors[self.endpoints[index].name] = lost.result()
                    log.warning("uplink: lost %s: %s", self.endpoints[index].name, lost.result())
                    break
                now = self._clock.monotonic()
                why = self._stalled(conn, now)
                if why is not None:
                    self._counters["stalls"] += 1
                    log.warning("uplink: %s stalled (%s); restarting the client", self.endpoints[index].name, why)
                    conn.abort(f"stalled: {why}")
                    self.last_errors[self.endpoints[index].name] = f"stalled: {why}"
                    break
                if probe is None and index > 0 and now >= next_probe:
                    probe = asyncio.get_running_loop().create_task(self._connect_first(range(index)))
                if probe is not None and probe.done():
                    found = probe.result()
                    probe = None
                    next_probe = now + self.failback_s
                    if found is not None:
                        old = conn
                        index, conn = found
                        self._activate(index, conn)
                        self._counters["failbacks"] += 1
                        self._spawn(self._retire(old, drain=True))
        finally:
            if probe is not None:
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    found = await probe
                    if found is not None:
                        found[1].abort("closing")
            if self._active is conn:
                self._active = None
                self._connected_event.clear()
            name = self.endpoints[index].name
            self._states[name] = CLOSED if self._closing else DOWN

    async def _retire(self, conn: Connection, *, drain: bool) -> None:
        """Let in-flight publishes finish (bounded), say "offline" there, then disconnect."""
        if drain:
            await conn.drain(self.publish_timeout_s)
        if conn.connected:
            with contextlib.suppress(MqttError):
                await conn.publish(self.state_topic, OFFLINE, qos=1, retain=True, timeout_s=2.0)
        await conn.disconnect(timeout_s=2.0)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------------- commands

    def _on_message(self, message: Message) -> None:
        if message.topic != self.down_topic:
            return
        self._counters["commands_received"] += 1
        try:
            self._commands.put_nowait(message.payload)
        except asyncio.QueueFull:
            self._counters["commands_dropped"] += 1

    async def _dispatch_commands(self) -> None:
        while True:
            payload = await self._commands.get()
            handler = self._handler
            if handler is None:
                continue
            try:
                await handler(payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._counters["command_handler_errors"] += 1
                log.exception("command handler failed")
