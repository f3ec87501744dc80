"""The gateway daemon: assembles the stages from the config and runs them.

    adapters --submit--> [ingest: verify, dedupe, replay, priority, rules] --lists--> [commit: one SQLite
    transaction per group, fsync] --plans--> [downlinks: ACK / commands via the adapter that heard it]
                                          \\--wake--> [forwarder: sign -> outbox -> publish -> PUBACK -> delete]

:class:`Gateway` is the in-process form (tests build it with a MemoryPublisher and MemoryAdapters);
:func:`run` is ``lifeline gateway run``: systemd notify, watchdog, signals, final flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from lifeline.gateway import heap, statusinfo, statuspage
from lifeline.gateway import log as logmod
from lifeline.gateway.buffer import Buffer, BufferError
from lifeline.gateway.clock import Clock, SystemClock
from lifeline.gateway.commit import CommitStage
from lifeline.gateway.config import ConfigError, GatewayConfig, load
from lifeline.gateway.dedupe import Deduper
from lifeline.gateway.devices import DeviceInfo, DeviceTable, KeyCache
from lifeline.gateway.downlinks import CommandQueue, DownlinkSender
from lifeline.gateway.forwarder import Forwarder
from lifeline.gateway.health import HEARTBEAT_S, Heartbeats
from lifeline.gateway.ingress import registry as adapter_registry
from lifeline.gateway.ingress.base import IngressAdapter
from lifeline.gateway.keystore import GatewayKeys, KeyStoreError, open_keys
from lifeline.gateway.metrics import Metrics, MetricsServer
from lifeline.gateway.pipeline import Barrier, Pipeline
from lifeline.gateway.registry import Registry, RegistryError
from lifeline.gateway.replay import ReplayGuard
from lifeline.gateway.rules import NoRules, RulesHook, RulesRuntime
from lifeline.gateway.sdnotify import Notifier
from lifeline.gateway.statedb import StateDB, Transaction
from lifeline.gateway.stats import Stats
from lifeline.gateway.tasks import cancel_and_wait
from lifeline.gateway.uplink_api import (
    AckedPublisher,
    CommandHandler,
    CommandSource,
    UplinkService,
    UplinkUnavailable,
)
from lifeline.protocols import schema, suites
from lifeline.protocols.cose_sign import PrivateKeyLike

_log = logmod.Log("daemon")
T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 3
STOP_TIMEOUT_S = 5.0
# The buffer's page cache: the hot path appends at the right edge of the tables and indexes, and the forwarder
# reads what was just appended; a larger cache only keeps pages of a start-up scan (the default 2,000 KiB
# was ~1.7 MiB of the daemon's RSS; throughput measured the same with 256)
BUFFER_CACHE_KIB = 256


class StartupError(Exception):
    """The environment does not allow the daemon to start (key file, state DB, adapter options)."""


class NullPublisher:
    """Used when the config has no uplink endpoints: the gateway buffers everything and sends nothing."""

    async def publish(self, topic: str, payload: bytes) -> None:
        raise UplinkUnavailable("no uplink endpoints configured")

    def is_connected(self) -> bool:
        return False

    def endpoint_states(self) -> Mapping[str, str]:
        return {}


class Watchdog:
    """Pings systemd only while every stage heartbeat is fresh."""

    def __init__(self, notifier: Notifier, heartbeats: Heartbeats, max_age_s: float) -> None:
        self.notifier = notifier
        self.heartbeats = heartbeats
        self.max_age_s = max_age_s
        self.pings = 0
        self.withheld = 0
        self._warned: tuple[str, ...] = ()

    def tick(self) -> bool:
        stale = tuple(self.heartbeats.stale(self.max_age_s))
        if stale:
            self.withheld += 1
            if stale != self._warned:
                _log.warning("stage not making progress; withholding watchdog ping", stages=",".join(stale))
            self._warned = stale
            return False
        self._warned = ()
        self.pings += 1
        self.notifier.watchdog()
        return True


class Gateway:
    def __init__(self, config: GatewayConfig, *, publisher: AckedPublisher | None = None,
                 adapters: Sequence[IngressAdapter] | None = None, clock: Clock | None = None,
                 rules: RulesHook | None = None, signing_key: PrivateKeyLike | None = None,
                 serve_metrics: bool = True, run_forwarder: bool = True, fast_alarms: bool | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._publisher = publisher
        self._given_adapters = adapters
        self._signing_key = signing_key
        self.rules: RulesHook = rules or NoRules()
        self._rules_from_config = rules is None
        self.serve_metrics = serve_metrics
        self.run_forwarder = run_forwarder
        self.fast_alarms = run_forwarder if fast_alarms is None else fast_alarms
        self.metrics = Metrics()
        self.stats = Stats(self.metrics)
        self.heartbeats = Heartbeats(self.clock)
        self.devices = DeviceTable()
        self.keys = KeyCache(config.pipeline.key_cache)
        self.dedupe = Deduper(config.dedupe.window_ms)
        self.replay = ReplayGuard()
        self.buffer = Buffer(config.buffer)
        self.adapters: dict[str, IngressAdapter] = {}
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
        self.oldest_pending_rx: int | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.seen = statusinfo.Seen(self.clock.now_ms())  # per-device last reception, last alarms (status page)
        self._status_server: statuspage.StatusServer | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._registry: Registry | None = None
        # the one thread that uses the registry connection: a reload cancelled by stop() still runs there,
        # and closing the connection under it would crash the process (sqlite3 objects are not guarded)
        self._registry_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry")
        self.gateway_keys = GatewayKeys(None, None)
        self.certificate_not_after_ms: int | None = None  # the CA-issued identity's end ([gateway] certificate_file)
        self._db: StateDB | None = None
        self._metrics_server: MetricsServer | None = None
        self._started_adapters: list[IngressAdapter] = []
        self._stopped = False

    # ------------------------------------------------------------------ parts (valid after start)

    @property
    def db(self) -> StateDB:
        assert self._db is not None, "gateway not started"
        return self._db

    @property
    def publisher(self) -> AckedPublisher:
        assert self._publisher is not None, "gateway not started"
        return self._publisher

    @property
    def sink(self) -> Pipeline:
        return self.pipeline

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        cfg = self.config
        try:
            self.gateway_keys = open_keys(cfg, signer=self._signing_key is None)
        except KeyStoreError as e:
            raise StartupError(str(e)) from None
        if self._signing_key is not None:
            self.gateway_keys.signer_source = "given"
        key = self._signing_key or self.gateway_keys.signer
        assert key is not None
        if cfg.gateway.certificate_file is not None:
            from lifeline.protocols import cose_sign, gwcert

            try:
                chain_pem = cfg.gateway.certificate_file.read_bytes()
                key = gwcert.attach_chain(cose_sign.signing_key(key), chain_pem, cfg.gateway.id,
                                          now=self.clock.now_ms() / 1000)
                leaf = gwcert.load_chain(chain_pem)[0]
                self.certificate_not_after_ms = int(leaf.not_valid_after_utc.timestamp() * 1000)
            except OSError as e:
                raise StartupError(f"gateway.certificate_file: cannot read {cfg.gateway.certificate_file}: "
                                   f"{e.strerror or e}") from None
            except gwcert.CertError as e:
                raise StartupError(f"{cfg.gateway.certificate_file}: {e}") from None
        if self.gateway_keys.kek is None:
            _log.warning("registry root keys are stored in plaintext: set keys.kek_file or "
                         "keys.pkcs11.kek_label (docs/keys.md)", registry=cfg.gateway.registry_db)
        if self._rules_from_config and cfg.rules.files:
            from lifeline.gateway.rules_engine.loader import RulesError
            from lifeline.gateway.rules_engine.service import RulesService

            try:
                self.rules = RulesService.from_config(cfg, self.clock)
            except RulesError as e:
                raise StartupError(f"rules: {e}") from None
        try:
            self._registry = await self._in_registry(lambda: Registry(cfg.gateway.registry_db, self.gateway_keys.kek))
            self._db = StateDB(cfg.gateway.buffer_db, cache_kib=BUFFER_CACHE_KIB)
        except OSError as e:
            raise StartupError(f"state database: {e}") from None
        except RegistryError as e:
            raise StartupError(str(e)) from None
        reg = self._registry
        devices, generation = await self._in_registry(lambda: (_snapshot(reg), reg.generation()))
        self.devices.replace(devices, generation)
        if self._publisher is None:
            self._publisher = self._make_uplink()
        self.commands = CommandQueue(self.db, self.devices, cfg.downlinks, self.clock, self.stats, cfg.gateway.id)
        self.forwarder = Forwarder(db=self.db, buffer=self.buffer, publisher=self.publisher, signing_key=key,
                                   gateway_id=cfg.gateway.id, config=cfg.forwarder,
                                   collect_ms=cfg.dedupe.collect_ms, clock=self.clock, stats=self.stats)

        def open_state(conn: Any) -> None:
            self.buffer.open(conn)
            self.replay.load(conn)
            self.commands.load(conn)
            self.forwarder.open(conn)

        try:
            await self.db.run(open_state)
        except BufferError as e:
            raise StartupError(str(e)) from None
        self.pipeline = Pipeline(
            devices=self.devices, keys=self.keys, dedupe=self.dedupe, replay=self.replay,
            allocate_id=self.buffer.allocate_id, rules=self.rules, stats=self.stats,
            queue_max=cfg.pipeline.queue_batches * cfg.pipeline.batch_max, batch_max=cfg.pipeline.batch_max,
            now_ms=self.clock.now_ms, allowed_suites=frozenset(suites.IDS[s] for s in cfg.gateway.node_suites),
            commit_rekey=lambda dev, epoch: self._registry_thread.submit(
                reg.commit_rekey, dev, epoch, now_ms=self.clock.now_ms()).result())
        self.commands.begin_rekey = lambda dev: self._registry_thread.submit(
            reg.begin_rekey, dev, now_ms=self.clock.now_ms()).result()
        self.commit_q: asyncio.Queue[Any] = statusinfo.ObservedQueue(self.seen.observe, cfg.pipeline.queue_batches)
        self.plan_q: asyncio.Queue[Any] = asyncio.Queue(maxsize=cfg.pipeline.queue_batches)
        self.commit_stage = CommitStage(db=self.db, buffer=self.buffer, replay=self.replay, commands=self.commands,
                                        clock=self.clock, stats=self.stats,
                                        group_max=cfg.buffer.group_commit_max, on_commit=self.forwarder.wake,
                                        forwarder=self.forwarder)
        self.forwarder.fast_alarms = self.fast_alarms
        self.sender = DownlinkSender(devices=self.devices, keys=self.keys, commands=self.commands,
                                     adapters=self.adapters, config=cfg.downlinks, clock=self.clock,
                                     stats=self.stats)
        self._register_gauges()
        self.command_handler: CommandHandler = self.commands.handle
        if isinstance(self.rules, RulesRuntime):
            try:
                await self.rules.start(self)
            except OSError as e:
                raise StartupError(f"rules state: {e}") from None
            self.command_handler = self.rules.wrap_commands(self.commands.handle)

        # consumers first: uplink, forwarder, commit, then the producers (adapters)
        if isinstance(self._publisher, UplinkService):
            await self._publisher.start()
        if isinstance(self._publisher, CommandSource):
            self._publisher.set_command_handler(self.command_handler)
        hb = self.heartbeats
        self._spawn("downlinks", self.sender.run(self.plan_q, hb.register("downlinks")))
        self._spawn("commit", self.commit_stage.run(self.commit_q, self.plan_q, hb.register("commit")))
        self._spawn("ingest", self.pipeline.run(self.commit_q, hb.register("ingest")))
        self._spawn("results", self.commands.publish_results(self.publisher, hb.register("results")))
        self._spawn("maintenance", self._maintenance(hb.register("maintenance")))
        if self.run_forwarder:
            self._spawn("forwarder", self.forwarder.run(hb.register("forwarder")))
        if isinstance(self.rules, RulesRuntime):
            self._spawn("rules", self.rules.run(hb.register("rules")))
        if self.serve_metrics:
            self._metrics_server = MetricsServer(self.metrics, cfg.metrics.listen, cfg.metrics.port)
            try:
                self.metrics_address = await self._metrics_server.start()
                self._metrics_server.write_address(cfg.gateway.state_dir / "metrics.addr")
            except OSError as e:
                raise StartupError(f"metrics port {cfg.metrics.listen}:{cfg.metrics.port}: {e.strerror}") from None
            try:
                self._status_server = await statuspage.start(self)
            except statuspage.StatusPageError as e:
                raise StartupError(str(e)) from None
        await self._start_adapters()
        _log.info("started", gateway=cfg.gateway.id, devices=len(self.devices), adapters=len(self.adapters),
                  pending=sum(self.buffer.pending), outbox=self.buffer.outbox_count, next_seq=self.forwarder.next_seq)

    def _make_uplink(self) -> AckedPublisher:
        cfg = self.config
        if not cfg.uplink.endpoints:
            _log.warning("no uplink endpoints configured: buffering only")
            return NullPublisher()
        from lifeline.gateway.uplink import MqttUplink

        uplink: AckedPublisher = MqttUplink.from_config(cfg.gateway.id, cfg.uplink, clock=self.clock)
        return uplink

    async def _start_adapters(self) -> None:
        cfg = self.config
        if self._given_adapters is not None:
            adapters = list(self._given_adapters)
        else:
            ctx = adapter_registry.AdapterContext(cfg.gateway.id, cfg.gateway.state_dir, self.clock)
            adapters = []
            for i, spec in enumerate(cfg.ingress):
                try:
                    adapters.append(adapter_registry.create(spec, ctx))
                except adapter_registry.AdapterOptionError as e:
                    key = f"ingress[{i}].options" + (f".{e.option}" if e.option else "")
                    raise StartupError(str(ConfigError(cfg.source, key, e.reason))) from None
                except adapter_registry.AdapterUnavailable as e:
                    raise StartupError(str(ConfigError(cfg.source, f"ingress[{i}].type", str(e)))) from None
        for a in adapters:
            self.adapters[a.name] = a
        for a in adapters:
            try:
                await a.start(self.pipeline)
            except OSError as e:
                raise StartupError(f"adapter {a.name}: {e.strerror or e}") from None
            self._started_adapters.append(a)
            _log.info("adapter started", adapter=a.name, radio=a.radio)

    def _spawn(self, name: str, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"gateway-{name}")
        self._tasks[name] = task

        def done(t: asyncio.Task[None]) -> None:
            if t.cancelled() or self._stopped:
                return
            exc = t.exception()
            self.failure = exc or RuntimeError(f"stage {name} ended")
            _log.error("stage failed", stage=name, error=type(self.failure).__name__,
                       detail=logmod.scrub(str(self.failure))[:200])
            self.failed.set()

        task.add_done_callback(done)

    # ------------------------------------------------------------------ running

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed and its downlinks were handed over."""
        b = Barrier()
        await self.pipeline.queue.put(b)
        waiter: asyncio.Future[Any] = asyncio.ensure_future(b.done)
        failed: asyncio.Future[Any] = asyncio.ensure_future(self.failed.wait())
        try:
            await asyncio.wait({waiter, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
        if not waiter.done():
            waiter.cancel()
            raise RuntimeError("gateway failed while flushing") from self.failure

    async def forward_all(self) -> int:
        """Tests (with run_forwarder=False): run forwarder steps until nothing is due now; returns batches."""
        n = 0
        while True:
            delay = await self.forwarder.step()
            if delay == 0:
                n += 1
                continue
            if self.forwarder.inflight:
                await self.forwarder.wait_inflight()
                continue
            return n

    async def maintain(self) -> None:
        """One maintenance pass: TTL sweep, command expiry, registry reload, cached gauges."""
        now = self.clock.now_ms()

        def sweep(conn: Any) -> tuple[list[Any], int | None]:
            with Transaction(conn, durable=False):
                drops = self.buffer.sweep_ttl(conn, now)
            return drops, self.buffer.oldest_pending_rx(conn)

        drops, self.oldest_pending_rx = await self.db.run(sweep)
        for d in drops:
            self.stats.drops.inc("ttl", schema.PRIORITY_NAMES[d.priority], n=d.count)
            _log.warning("buffer TTL: dropped", priority=schema.PRIORITY_NAMES[d.priority], count=d.count)
        await self.commands.expire_due()
        await self.reload_devices()
        await self.commands.queue_pending_rekeys()
        self.forwarder.wake()

    async def close_state(self) -> None:
        """Close the buffer database and the registry (on the registry's thread, after any call still running
        there: a reload cancelled by stop() or a crash)."""
        if self._db is not None:
            self._db.close()
        if self._registry is not None:
            await self._in_registry(self._registry.close)
        self._registry_thread.shutdown(wait=True)

    async def _in_registry(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._registry_thread, fn)

    async def reload_devices(self, force: bool = False) -> bool:
        reg = self._registry
        assert reg is not None
        generation = await self._in_registry(reg.generation)
        if generation == self.devices.generation and not force:
            return False
        devices = await self._in_registry(lambda: _snapshot(reg))
        changed = self.devices.replace(devices, generation)
        self.keys.invalidate(changed)
        for d in changed:
            self.dedupe.forget(d)
        _log.info("registry reloaded", devices=len(devices), changed=len(changed), generation=generation)
        del devices
        heap.release_free_heap()  # the old snapshot and the rows read for the new one
        return True

    async def _maintenance(self, heartbeat: Any) -> None:
        interval = self.config.buffer.maintenance_s
        next_run = self.clock.monotonic()
        while True:
            heartbeat.beat()
            if self.clock.monotonic() >= next_run:
                await self.maintain()
                next_run = self.clock.monotonic() + interval
            await asyncio.sleep(min(HEARTBEAT_S, interval))

    def reload_rules(self) -> str | None:
        """SIGHUP: re-read the rule files; a bad file keeps the old rules (returns the reason)."""
        if isinstance(self.rules, RulesRuntime):
            return self.rules.reload()
        return None

    # ------------------------------------------------------------------ stop

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop adapters, commit what is in flight, give PUBACKs a moment, close everything."""
        if self._stopped:
            return
        for a in reversed(self._started_adapters):
            try:
                await asyncio.wait_for(a.stop(), timeout_s)
            except Exception as e:
                _log.warning("adapter stop failed", adapter=a.name, error=type(e).__name__)
        if "rules" in self._tasks and isinstance(self.rules, RulesRuntime):
            try:
                await asyncio.wait_for(self.rules.stop(), timeout_s)
            except Exception as e:
                _log.warning("rules stop incomplete", error=type(e).__name__)
        if "commit" in self._tasks and not self.failed.is_set():
            try:
                await asyncio.wait_for(self.flush(), timeout_s)
            except (TimeoutError, RuntimeError) as e:
                _log.error("final flush incomplete", error=type(e).__name__)
        if hasattr(self, "forwarder"):
            await self.forwarder.stop(timeout_s)
        if hasattr(self, "commands") and self._publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.commands.drain_results(self._publisher), timeout_s)
        self._stopped = True
        await cancel_and_wait(self._tasks.values())
        if hasattr(self, "sender"):
            await self.sender.wait_idle()
        if isinstance(self._publisher, UplinkService):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._publisher.close(), timeout_s)
        if self._metrics_server is not None:
            await self._metrics_server.close()
        if self._status_server is not None:
            await self._status_server.close()
        await self.close_state()
        self.gateway_keys.close()
        _log.info("stopped", gateway=self.config.gateway.id)

    # ------------------------------------------------------------------ metrics

    def _register_gauges(self) -> None:
        m = self.metrics
        buf = self.buffer
        clock = self.clock
        m.gauge("backlog", "Buffered records not yet in a signed batch, by priority.",
                lambda: [((schema.PRIORITY_NAMES[p],), buf.pending[p]) for p in range(3)], ("priority",))
        m.gauge("outbox_batches", "Signed batches awaiting PUBACK.", lambda: [((), buf.outbox_count)])
        m.gauge("inflight_batches", "Batches published and awaiting PUBACK now.",
                lambda: [((), self.forwarder.inflight)])
        m.gauge("oldest_buffered_age_seconds", "Age of the oldest pending record (refreshed by maintenance).",
                lambda: [((), 0 if self.oldest_pending_rx is None
                          else max(0, clock.now_ms() - self.oldest_pending_rx) / 1000)])
        m.gauge("drain_rate", "Records PUBACKed per second (last 30 s).",
                lambda: [((), round(self.forwarder.drain_rate(), 3))])
        m.gauge("drain_eta_seconds", "Pending records / drain rate (-1 while nothing drains).",
                lambda: [((), self._eta())])
        m.gauge("uplink_up", "1 per endpoint and its current state.",
                lambda: [((name, state), 1) for name, state in self.publisher.endpoint_states().items()],
                ("endpoint", "state"))
        m.gauge("uplink_connected", "1 if a broker connection is up.",
                lambda: [((), int(self.publisher.is_connected()))])
        m.gauge("disk_bytes", "State database files on disk (db + wal + shm).",
                lambda: [(("buffer",), self.db.file_bytes()),
                         (("registry",), _file_bytes(self.config.gateway.registry_db))], ("db",))
        m.gauge("disk_quota_bytes", "Configured buffer quota.", lambda: [((), buf.quota_bytes)])
        m.gauge("over_quota", "1 while signed in-flight data alone exceeds the quota.",
                lambda: [((), int(buf.over_quota))])
        m.gauge("devices", "Registered devices by status.", lambda: self._device_counts(), ("status",))
        m.gauge("next_seq", "Sequence number of the next signed batch.", lambda: [((), self.forwarder.next_seq)])
        m.gauge("ingest_queue", "Frames waiting for the ingest stage.", lambda: [((), self.pipeline.queue.qsize())])
        m.gauge("last_commit_seconds", "Duration of the last group commit (incl. fsync).",
                lambda: [((), round(self.commit_stage.last_commit_s, 6))])
        m.gauge("last_commit_group", "Records in the last group commit.",
                lambda: [((), self.commit_stage.last_group)])
        m.gauge("stage_heartbeat_age_seconds", "Seconds since each stage last reported progress.",
                lambda: [((n,), round(a, 3)) for n, a in sorted(self.heartbeats.ages().items())], ("stage",))
        m.gauge("adapter_counter", "Counters reported by ingress adapters.", lambda: self._adapter_counters(),
                ("adapter", "counter"))
        statusinfo.register_gauges(self)
        m.gauge("commands_open", "Platform commands waiting for a receive window.",
                lambda: [((), sum(self.commands.open_by_device.values()))])
        m.gauge("certificate_expires_in_seconds", "Seconds until the gateway certificate (x5chain) expires; "
                "absent without [gateway] certificate_file. Renew well before 0: the platform refuses batches "
                "signed under an expired certificate.", lambda: [] if self.certificate_not_after_ms is None else
                [((), round((self.certificate_not_after_ms - self.clock.now_ms()) / 1000))])
        m.gauge("key_storage", "Where the keys live: registry root keys (file/pkcs11 KEK, or plaintext) and the "
                "batch signing key (file/pkcs11); 1 per key.", lambda: [
                    (tuple(lab.values()), v) for lab, v in self.gateway_keys.storage()], ("key", "where", "cipher"))

    def _eta(self) -> float:
        rate = self.forwarder.drain_rate()
        pending = sum(self.buffer.pending)
        if pending == 0:
            return 0
        return round(pending / rate, 1) if rate > 0 else -1

    def _device_counts(self) -> list[tuple[tuple[str, ...], float]]:
        return [((k,), v) for k, v in self.devices.status_counts().items()]

    def _adapter_counters(self) -> list[tuple[tuple[str, ...], float]]:
        out: list[tuple[tuple[str, ...], float]] = []
        for name, a in self.adapters.items():
            try:
                out.extend(((name, k), v) for k, v in a.counters().items())
            except Exception:
                continue
        return out


def _snapshot(reg: Registry) -> list[DeviceInfo]:
    """The hot-path device table: every registered device with its pending re-key, if any."""
    pending = reg.all_pending()
    devices = [DeviceInfo.of(d, pending.get(d.device_id)) for d in reg.all()]
    reg.shrink_memory()
    return devices


def _file_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(str(path) + suffix).st_size
    return total


def watchdog_max_age(watchdog_s: float) -> float:
    """How stale a stage may be before pings stop: half the systemd timeout, never below 3 heartbeats."""
    return max(3 * HEARTBEAT_S, watchdog_s / 2)


async def serve(config: GatewayConfig, notifier: Notifier | None = None) -> int:
    """Run until SIGTERM/SIGINT or a stage failure. Returns the exit code."""
    notifier = notifier or Notifier()
    gw = Gateway(config)
    try:
        await gw.start()
    except (StartupError, RegistryError) as e:
        _log.error("cannot start", reason=logmod.scrub(str(e)))
        await gw.stop(timeout_s=1.0)
        return EXIT_CONFIG
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gw.reload_rules)
    watchdog_task: asyncio.Task[None] | None = None
    if notifier.watchdog_s:
        wd = Watchdog(notifier, gw.heartbeats, watchdog_max_age(notifier.watchdog_s))
        interval = notifier.watchdog_s / 2

        async def ping() -> None:
            while True:
                wd.tick()
                await asyncio.sleep(interval)

        watchdog_task = asyncio.create_task(ping())
    heap.release_free_heap()  # what start-up freed goes back to the OS before the long run
    notifier.ready(f"gateway {config.gateway.id}: {len(gw.devices)} devices, {len(gw.adapters)} adapters")
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(gw.failed.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    failed = gw.failed.is_set()
    _log.info("stopping", reason="stage failure" if failed else "signal")
    notifier.stopping()
    t0 = time.monotonic()
    if watchdog_task is not None:
        watchdog_task.cancel()
    await gw.stop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    _log.info("shutdown complete", seconds=round(time.monotonic() - t0, 3))
    return EXIT_FAILED if failed else EXIT_OK


def run(config_path: str | Path) -> int:
    """``lifeline gateway run``: validate the config, then serve. Returns the exit code."""
    logmod.setup("info")
    try:
        config = load(config_path)
    except ConfigError as e:
        _log.error("invalid configuration", error=str(e))
        return EXIT_CONFIG
    logmod.setup(config.gateway.log_level)
    os.umask(0o077)
    return asyncio.run(serve(config))
