"""NATS JetStream source: each sink is a member of one durable pull consumer (the work queue).

Why the stream is ``$MQTT_msgs`` (read docs/platform.md, "NATS deployment"): nats-server's MQTT listener
answers a QoS 1 PUBLISH with PUBACK only after it stored the message in its own stream ``$MQTT_msgs``
(subject ``$MQTT.msgs.<subject>``; a JetStream publish that waits for the stream's acknowledgement, i.e.
a quorum of replicas for R3). Delivery to any *other* stream capturing ``lifeline.v1.*.up.*`` happens
before that but without waiting: a PUBACK does not mean such a stream stored (or replicated) the batch,
and the gateway deletes a batch after its PUBACK. So the sink creates ``$MQTT_msgs`` itself, before
gateways connect, with limits retention (kept until ``max_age`` whether or not a consumer exists; the
MQTT listener would create it with interest retention, which drops messages nobody is consuming yet),
file storage and R3 in a cluster, and reads the batch subjects from it with a filtered durable consumer.

Each sink binds the shared durable ``lifeline-sinks``: JetStream hands every message to one of them, the
sink acknowledges it only after the store committed (or the reject was recorded), and a message not
acknowledged within ``ack_wait`` (sink killed, store down) is delivered again, to any sink; the store is
idempotent, so a redelivery stores nothing twice. ``max_deliver`` is unlimited: a batch is never dropped
because the database was down for a while.

URL: ``nats://HOST:PORT[,HOST:PORT...][?durable=NAME&replicas=N&max_age=SECONDS&ack_wait=SECONDS]``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from lifeline.tools.platform.source import Delivery, Handler, OtherHandler, SourceError

log = logging.getLogger(__name__)

STREAM = "$MQTT_msgs"  # the MQTT listener's QoS 1 stream (name fixed by nats-server)
STREAM_SUBJECTS = ("$MQTT.msgs.>",)
MQTT_PREFIX = "$MQTT.msgs."
UP_SUBJECT = "lifeline.v1.*.up.*"  # = MQTT topic lifeline/v1/+/up/+
OTHER_SUBJECTS = ("lifeline.v1.*.state", "lifeline.v1.*.down.result")  # presence, command results (core NATS)
DURABLE = "lifeline-sinks"


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """The ingest stream. ``replicas`` 0 = 3 in a cluster of 3 or more nodes, else the cluster size."""

    replicas: int = 0
    max_age_s: float = 7 * 86_400.0  # a batch waits this long for a sink (sinks down, backlog)
    max_bytes: int = -1  # -1 = bounded by max_age and the server's max_file_store only
    duplicate_window_s: float = 120.0  # JetStream dedupe by Nats-Msg-Id (MQTT sets none; the store dedupes)


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    durable: str = DURABLE
    ack_wait_s: float = 30.0  # an unacknowledged delivery goes to another sink after this
    max_deliver: int = -1  # unlimited: never drop a batch because the store was down
    max_ack_pending: int = 1024  # unacknowledged messages across all sinks of the durable
    fetch_batch: int = 64  # messages one sink pulls per request
    fetch_timeout_s: float = 1.0
    nak_delay_s: float = 1.0  # a batch the store could not take is offered again after this


@dataclass(frozen=True, slots=True)
class NatsUrl:
    servers: tuple[str, ...]
    stream: StreamSettings
    consumer: ConsumerSettings


def parse_nats_url(url: str) -> NatsUrl:
    """``nats://h:p[,h:p…][?durable=&replicas=&max_age=&ack_wait=]``. Raises SourceError naming the part."""
    if not url.startswith("nats://"):
        raise SourceError(f"{url!r}: a NATS source URL starts with nats://")
    body, _, query = url[len("nats://"):].partition("?")
    servers = []
    for hp in body.split(","):
        host, sep, port = hp.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise SourceError(f"{url!r}: {hp!r} is not HOST:PORT")
        servers.append(f"nats://{host}:{port}")
    stream, consumer = StreamSettings(), ConsumerSettings()
    for key, values in urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=False).items():
        value = values[-1]
        try:
            if key == "durable":
                if not value or any(c in value for c in ".*> \t"):
                    raise ValueError("letters, digits, - and _ only")
                consumer = replace(consumer, durable=value)
            elif key == "replicas":
                n = int(value)
                if not 0 <= n <= 5:
                    raise ValueError("0..5")
                stream = replace(stream, replicas=n)
            elif key == "max_age":
                s = float(value)
                if s <= 0:
                    raise ValueError("> 0 seconds")
                stream = replace(stream, max_age_s=s)
            elif key == "ack_wait":
                s = float(value)
                if s <= 0:
                    raise ValueError("> 0 seconds")
                consumer = replace(consumer, ack_wait_s=s)
            else:
                raise ValueError("unknown option (durable, replicas, max_age, ack_wait)")
        except ValueError as e:
            raise SourceError(f"{url!r}: option {key}={value!r}: {e}") from None
    return NatsUrl(tuple(servers), stream, consumer)


def topic_to_subject(topic: str) -> str:
    """``lifeline/v1/gw/down`` -> ``lifeline.v1.gw.down`` (the inverse of :func:`subject_to_topic`)."""
    return ".".join(level.replace(".", "//") for level in topic.split("/"))


def subject_to_topic(subject: str) -> str:
    """``$MQTT.msgs.lifeline.v1.gw.up.live`` -> ``lifeline/v1/gw/up/live`` (nats-server's MQTT mapping:
    ``/`` <-> ``.``, a ``.`` inside an MQTT topic level is ``//`` in the subject)."""
    if subject.startswith(MQTT_PREFIX):
        subject = subject[len(MQTT_PREFIX):]
    return subject.replace("//", "\0").replace(".", "/").replace("\0", ".")


def stream_config(settings: StreamSettings, cluster_size: int) -> StreamConfig:
    replicas = settings.replicas or min(3, max(1, cluster_size))
    return StreamConfig(
        name=STREAM,
        subjects=list(STREAM_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=settings.max_age_s,
        max_bytes=settings.max_bytes,
        duplicate_window=settings.duplicate_window_s,
        discard=DiscardPolicy.OLD,
    )


def consumer_config(settings: ConsumerSettings, replicas: int) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=settings.durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
        filter_subject=MQTT_PREFIX + UP_SUBJECT,
        num_replicas=replicas,
    )


def check_stream(info: StreamInfo) -> None:
    """Refuse a ``$MQTT_msgs`` that cannot keep batches safe (names the setting and the fix)."""
    cfg = info.config
    if cfg.retention != RetentionPolicy.LIMITS:
        raise SourceError(
            f"stream {STREAM} has retention {cfg.retention}, not limits: the MQTT listener created it because a "
            "client connected before any sink; with interest retention batches nobody consumes yet are dropped. "
            f"Delete it while no MQTT client is connected (nats stream rm {STREAM}) and start a sink first")
    if cfg.storage != StorageType.FILE:
        raise SourceError(f"stream {STREAM} uses {cfg.storage} storage; file storage is required")
    if not set(STREAM_SUBJECTS) <= set(cfg.subjects or []):
        raise SourceError(f"stream {STREAM} subjects {cfg.subjects} do not include {STREAM_SUBJECTS[0]}")


async def ensure_stream(js: JetStreamContext, settings: StreamSettings, nodes: int,
                        timeout_s: float = 30.0) -> StreamInfo:
    """Create ``$MQTT_msgs`` (limits, file, R3 in a cluster) or verify the one there. Retries while the
    cluster has no JetStream meta leader yet (a cluster that just started or lost a node)."""
    wanted = stream_config(settings, nodes)
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            try:
                info = await js.stream_info(STREAM)
            except nats.js.errors.NotFoundError:
                info = await js.add_stream(wanted)
            check_stream(info)
            return info
        except nats.js.errors.BadRequestError as e:  # e.g. created meanwhile by another sink: look again
            last = str(e)
        except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError,
                nats.errors.NoRespondersError, nats.js.errors.ServerError) as e:
            last = f"{type(e).__name__}: {e}"
        await asyncio.sleep(0.25)  # waiting for a meta leader, bounded by the deadline
    raise SourceError(f"stream {STREAM} not available within {timeout_s}s: {last}")


async def ensure_consumer(js: JetStreamContext, settings: ConsumerSettings, replicas: int,
                          timeout_s: float = 30.0) -> None:
    cfg = consumer_config(settings, replicas)
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            try:
                info = await js.consumer_info(STREAM, settings.durable)
            except nats.js.errors.NotFoundError:
                info = await js.add_consumer(STREAM, cfg)
            have = info.config
            if have.filter_subject != cfg.filter_subject or have.ack_policy != AckPolicy.EXPLICIT:
                raise SourceError(f"consumer {settings.durable} on {STREAM} filters {have.filter_subject!r} with "
                                  f"ack {have.ack_policy}; expected {cfg.filter_subject!r}, explicit")
            return
        except nats.js.errors.BadRequestError as e:
            last = str(e)
        except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError,
                nats.errors.NoRespondersError, nats.js.errors.ServerError) as e:
            last = f"{type(e).__name__}: {e}"
        await asyncio.sleep(0.25)
    raise SourceError(f"consumer {settings.durable} not available within {timeout_s}s: {last}")


class NatsSource:
    """A sink's pull subscription on the shared durable; runs its own asyncio loop on a thread.

    The handler runs on one worker thread, one delivery at a time; its answer decides ack / nak.
    """

    def __init__(self, url: str, *, name: str = "lifeline-sink", nodes: int | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.parsed = parse_nats_url(url)
        self._tls = tls  # the CA of the cluster and our client certificate (nats://… then speaks TLS)
        self._url = url.partition("?")[0]
        self.name = name
        self._nodes = nodes if nodes is not None else len(self.parsed.servers)
        self._counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nats-source-store")
        self.stream_info: StreamInfo | None = None
        self._on_other: OtherHandler | None = None
        self._js: JetStreamContext | None = None

    @property
    def url(self) -> str:
        return self._url

    def counters(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._counters)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    # ------------------------------------------------------------------------- lifecycle

    def start(self, handler: Handler, timeout_s: float = 30.0, on_other: OtherHandler | None = None) -> None:
        if self._thread is not None:
            return
        self._on_other = on_other
        self._thread = threading.Thread(target=self._run, args=(handler, timeout_s), name="nats-source",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s + 5):
            self.stop()
            raise SourceError(f"{self.url}: not ready within {timeout_s}s")
        if self._error is not None:
            err = self._error
            self.stop()
            raise SourceError(f"{self.url}: {err}") from None

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        self._worker.shutdown(wait=True)

    def _run(self, handler: Handler, timeout_s: float) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(handler, timeout_s))
        except BaseException as e:  # reported to start() or logged: the thread must not die silently
            if not self._ready.is_set():
                self._error = e
            else:
                log.exception("nats source stopped")
                self._count("fatal")
        finally:
            self._ready.set()
            loop.close()

    # ---------------------------------------------------------------------------- engine

    async def _connect(self, timeout_s: float) -> NatsClient:
        last_error: list[str] = []

        async def on_error(e: Exception) -> None:
            self._count("client_errors")
            last_error[:] = [f"{type(e).__name__}: {e}".strip()]
            log.info("nats: %s: %s", type(e).__name__, e)

        async def on_disconnect() -> None:
            self._count("disconnects")

        async def on_reconnect() -> None:
            self._count("reconnects")

        deadline_s = min(timeout_s, 10.0)  # the first connection; later losses are retried for ever
        try:
            return await asyncio.wait_for(nats.connect(
                servers=list(self.parsed.servers), name=self.name, connect_timeout=min(timeout_s, 5.0),
                allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.25, tls=self._tls,
                error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
            ), deadline_s)
        except TimeoutError:
            why = last_error[0] if last_error else "no answer"
            raise SourceError(f"cannot connect to {', '.join(self.parsed.servers)} within {deadline_s:g}s: "
                              f"{why}") from None
        except (nats.errors.Error, OSError) as e:
            raise SourceError(f"cannot connect to {', '.join(self.parsed.servers)}: {e}") from None

    async def _main(self, handler: Handler, timeout_s: float) -> None:
        self._stopping = asyncio.Event()
        nc = await self._connect(timeout_s)
        try:
            js = nc.jetstream(timeout=5.0)
            # servers named in the URL or announced by the cluster (INFO connect_urls)
            nodes = max(self._nodes, len(nc.servers))
            info = await ensure_stream(js, self.parsed.stream, nodes, timeout_s)
            self.stream_info = info
            await ensure_consumer(js, self.parsed.consumer, info.config.num_replicas or 1, timeout_s)
            psub = await js.pull_subscribe_bind(durable=self.parsed.consumer.durable, stream=STREAM)
            if self._on_other is not None:
                other = self._on_other

                async def on_other(m: Msg) -> None:
                    try:
                        other(subject_to_topic(m.subject), bytes(m.data))
                    except Exception:
                        log.exception("sink failed on %s", m.subject)

                for subject in OTHER_SUBJECTS:
                    await nc.subscribe(subject, cb=on_other)
            self._js = js
            self._ready.set()
            await self._pull(psub, handler)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()  # unacknowledged messages go back to the durable after ack_wait

    def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
        """A platform command into ``$MQTT_msgs`` (JetStream publish, acknowledged after the stream stored it):
        the MQTT listener delivers it with QoS 1 to the gateway's session, also one that reconnects later."""
        loop, js = self._loop, self._js
        if loop is None or js is None or loop.is_closed():
            raise SourceError("the NATS source is not running")
        fut = asyncio.run_coroutine_threadsafe(
            js.publish(MQTT_PREFIX + topic_to_subject(topic), payload, timeout=timeout_s), loop)
        try:
            fut.result(timeout_s + 1)
        except (nats.errors.Error, nats.js.errors.Error, concurrent.futures.TimeoutError) as e:
            raise SourceError(f"{topic}: not stored: {type(e).__name__} {e}") from None
        self._count("published")

    async def _pull(self, psub: JetStreamContext.PullSubscription, handler: Handler) -> None:
        assert self._stopping is not None
        cs = self.parsed.consumer
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                msgs = await psub.fetch(cs.fetch_batch, timeout=cs.fetch_timeout_s)
            except (TimeoutError, nats.errors.TimeoutError):
                continue  # nothing to do for now (nats-py raises either, depending on where it timed out)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # no leader for the consumer yet, connection lost mid-request…: the client reconnects by itself
                self._count("fetch_errors")
                log.debug("nats fetch: %s", e)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.25)
                continue
            for i, m in enumerate(msgs):
                if not await self._deliver(loop, m, handler):
                    # the store is down: hand the rest of this fetch back at once instead of letting it age
                    for rest in msgs[i + 1:]:
                        await self._settle(rest, False)
                    break

    async def _settle(self, m: Msg, ok: bool) -> None:
        try:
            if ok:
                await m.ack()
                self._count("acked")
            else:
                await m.nak(delay=self.parsed.consumer.nak_delay_s)
                self._count("naked")
        except (nats.errors.Error, nats.js.errors.Error) as e:
            # the ack is lost: JetStream redelivers after ack_wait and the idempotent store absorbs it
            self._count("ack_failures")
            log.debug("nats ack: %s", e)

    async def _deliver(self, loop: asyncio.AbstractEventLoop, m: Msg, handler: Handler) -> bool:
        try:
            n = m.metadata.num_delivered
        except (nats.errors.Error, ValueError, IndexError):
            n = 1
        d = Delivery(subject_to_topic(m.subject), bytes(m.data), redelivered=n > 1, deliveries=n)
        self._count("delivered")
        if n > 1:
            self._count("redelivered")
        work = loop.run_in_executor(self._worker, handler, d)
        beat = max(0.5, self.parsed.consumer.ack_wait_s / 3)
        while True:  # a store retrying in place (database restarting) keeps the delivery: "work in progress"
            done, _ = await asyncio.wait({work}, timeout=beat)
            if done:
                break
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await m.in_progress()
                self._count("in_progress")
        try:
            ok = bool(work.result())
        except Exception:
            log.exception("sink handler failed on %s", d.topic)
            ok = False
        await self._settle(m, ok)
        return ok
