"""Uplink loop: pending buffer rows -> signed batches -> outbox -> QoS 1 publish -> PUBACK -> delete.

Lanes (batch key 6): the **live** lane carries alarms and fresh readings; the **backlog** lane drains what
is older than ``backfill_after_s`` or was buffered before the uplink came back from an outage (or before
this process started); backlog records carry the ``backfilled`` flag. Each step picks, in this order:

1. outbox batches that still need (re)publishing, oldest seq first, with their original bytes;
2. pending alarms, immediately (never held for dedupe collection, never behind a backlog);
3. a live batch of events/periodic readings once ``batch_max`` are eligible or the oldest eligible one has
   waited ``batch_ms`` (a reading becomes eligible ``collect_ms`` after its first reception, so duplicate
   receptions are attached before it is signed);
4. a backlog batch of ``backlog_batch_max`` records; one in-flight slot is always left for the live lane.

Sign -> commit to the outbox (with the chain state) -> publish; only after PUBACK are the batch and its rows
deleted. A publish that fails leaves the batch in the outbox; it is republished, same bytes and seq, after
an exponential backoff. Several batches may await PUBACK at once (``max_inflight``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
from dataclasses import dataclass

from lifeline.gateway import records as rec
from lifeline.gateway.buffer import Buffer, OutboxEntry, PendingRow, with_flags
from lifeline.gateway.clock import Clock
from lifeline.gateway.config import ForwarderConfig
from lifeline.gateway.health import HEARTBEAT_S, Heartbeat
from lifeline.gateway.log import Log
from lifeline.gateway.statedb import StateDB, Transaction
from lifeline.gateway.stats import Stats
from lifeline.gateway.tasks import cancel_and_wait
from lifeline.gateway.uplink_api import AckedPublisher, UplinkUnavailable, topic_up
from lifeline.protocols import batch, schema
from lifeline.protocols.cose_sign import PrivateKeyLike

_log = Log("forwarder")
LIVE = batch.LANE_LIVE
BACKLOG = batch.LANE_BACKLOG
_MIN = -(1 << 62)
_MAX = 1 << 62
POLL_S = 0.2  # while the uplink is down
RATE_WINDOW_S = 30.0


@dataclass(frozen=True, slots=True)
class Signed:
    entry: OutboxEntry
    radios: collections.Counter[str]


class Forwarder:
    def __init__(self, *, db: StateDB, buffer: Buffer, publisher: AckedPublisher,
                 signing_key: PrivateKeyLike, gateway_id: str, config: ForwarderConfig,
                 collect_ms: int, clock: Clock, stats: Stats) -> None:
        self.db = db
        self.buffer = buffer
        self.publisher = publisher
        self.key = signing_key
        self.gateway_id = gateway_id
        self.config = config
        self.collect_ms = collect_ms
        self.clock = clock
        self.stats = stats
        self._signer = batch.BatchSigner(signing_key, gateway_id)
        self._wake = asyncio.Event()
        self._inflight: dict[int, tuple[int, asyncio.Task[None]]] = {}  # seq -> (lane, task)
        self._retry: dict[int, OutboxEntry] = {}
        self._backoff_ms = 0
        self._pause_until = 0.0
        self._down = False
        self._stopping = False
        self.fatal: BaseException | None = None
        self.backlog_mark_ms = clock.now_ms()
        self._acked: collections.deque[tuple[float, int]] = collections.deque()
        self.fast_alarms = False  # sign new live alarms inside their own commit (set by the daemon)

    # ------------------------------------------------------------------ state

    def open(self, conn: sqlite3.Connection) -> None:
        """DB thread: restore the signer's chain and queue unacknowledged outbox batches for republish."""
        next_seq, prev_hash = self.buffer.load_chain(conn, self.gateway_id)
        self._signer = batch.BatchSigner(self.key, self.gateway_id, next_seq, prev_hash)
        self._retry = {e.seq: e for e in self.buffer.outbox_entries(conn)}
        self.backlog_mark_ms = self.clock.now_ms()
        if self._retry:
            _log.info("outbox to republish", batches=len(self._retry), first_seq=min(self._retry))

    @property
    def next_seq(self) -> int:
        return self._signer.next_seq

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def retry_pending(self) -> int:
        return len(self._retry)

    def wake(self) -> None:
        self._wake.set()

    def drain_rate(self) -> float:
        """Records PUBACKed per second over the last RATE_WINDOW_S."""
        now = self.clock.monotonic()
        while self._acked and now - self._acked[0][0] > RATE_WINDOW_S:
            self._acked.popleft()
        if not self._acked:
            return 0.0
        span = max(1.0, now - self._acked[0][0])
        return sum(n for _, n in self._acked) / span

    # ------------------------------------------------------------------ loop

    async def run(self, heartbeat: Heartbeat) -> None:
        while True:
            heartbeat.beat()
            if self.fatal is not None:
                raise self.fatal
            self._wake.clear()
            delay = await self.step()
            if delay == 0:
                await asyncio.sleep(0)
                continue
            timeout = HEARTBEAT_S if delay is None else min(delay, HEARTBEAT_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def step(self) -> float | None:
        """Do at most one unit of work. Returns 0 to be called again at once, seconds to wait, or None
        to wait for a wake-up (commit, PUBACK)."""
        if self._stopping:
            return None
        mono = self.clock.monotonic()
        if mono < self._pause_until:
            return self._pause_until - mono
        if not self.publisher.is_connected():
            self._down = True
            return POLL_S
        now = self.clock.now_ms()
        if self._down:
            self._down = False
            # the outage ended when the uplink connected, not when this loop noticed (up to POLL_S later):
            # readings committed since then are live, not backlog
            since = getattr(self.publisher, "connected_since_ms", None)
            self.backlog_mark_ms = since if isinstance(since, int) and since <= now else now
            _log.info("uplink back; older records go to the backlog lane", mark_ms=now)
        if len(self._inflight) >= self.config.max_inflight:
            return None
        if self._retry:
            seq = min(self._retry)
            entry = self._retry.pop(seq)
            self.stats.republished.inc()
            self._launch(Signed(entry, collections.Counter({"unknown": entry.count})))
            return 0
        backlog_busy = sum(1 for lane, _ in self._inflight.values() if lane == BACKLOG)
        allow_backlog = backlog_busy < max(1, self.config.max_inflight - 1)
        result = await self.db.run(lambda c: self._next_batch(c, now, allow_backlog))
        if isinstance(result, Signed):
            self._launch(result)
            return 0
        if result is None:
            return None
        return max(0.0, (result - now) / 1000.0)

    def _next_batch(self, conn: sqlite3.Connection, now: int, allow_backlog: bool) -> Signed | int | None:
        """DB thread: choose, sign and commit the next batch; else the Unix ms when one will be due."""
        cfg = self.config
        buf = self.buffer
        cutoff = max(now - cfg.backfill_after_s * 1000, self.backlog_mark_ms)
        rows = buf.select_pending(conn, schema.P_ALARM, _MIN, _MAX, cfg.batch_max)
        if rows:
            old = [r for r in rows if r.rx_ms < cutoff]
            return self._sign_commit(conn, old, BACKLOG, now) if old else self._sign_commit(conn, rows, LIVE, now)
        live: list[PendingRow] = []
        eligible_to = now - self.collect_ms + 1
        for p in (schema.P_EVENT, schema.P_PERIODIC):
            if len(live) < cfg.batch_max:
                live += buf.select_pending(conn, p, cutoff, eligible_to, cfg.batch_max - len(live))
        if live:
            oldest = min(r.rx_ms for r in live)
            if len(live) >= cfg.batch_max or now >= oldest + self.collect_ms + cfg.batch_ms:
                return self._sign_commit(conn, live, LIVE, now)
        firsts = [f for f in (buf.first_pending_rx(conn, p, cutoff) for p in (schema.P_EVENT, schema.P_PERIODIC))
                  if f is not None]
        due = min(firsts) + self.collect_ms + cfg.batch_ms if firsts else None
        if allow_backlog:
            bl: list[PendingRow] = []
            for p in (schema.P_EVENT, schema.P_PERIODIC):
                if len(bl) < cfg.backlog_batch_max:
                    bl += buf.select_pending(conn, p, _MIN, cutoff, cfg.backlog_batch_max - len(bl))
            if bl:
                return self._sign_commit(conn, bl, BACKLOG, now)
        return due

    def _sign_commit(self, conn: sqlite3.Connection, rows: list[PendingRow], lane: int, now: int) -> Signed:
        before = (self._signer.next_seq, self._signer.prev_hash)
        try:
            with Transaction(conn):
                return self._sign_into(conn, rows, lane, now)
        except BaseException:
            self._signer = batch.BatchSigner(self.key, self.gateway_id, *before)
            raise

    def _sign_into(self, conn: sqlite3.Connection, rows: list[PendingRow], lane: int, now: int) -> Signed:
        """Inside the caller's transaction: sign ``rows`` and add the batch to the outbox."""
        extra = rec.RF_BACKFILLED if lane == BACKLOG else 0
        encoded = [with_flags(r.record, extra) for r in rows]
        signed = self._signer.sign_encoded(encoded, lane, now)
        ids = [r.id for r in rows]
        self.buffer.outbox_add(conn, self.gateway_id, signed, now, ids)
        self.buffer.mark_assigned(rows)
        radios = collections.Counter(r.radio for r in rows)
        return Signed(OutboxEntry(signed.seq, lane, now, signed.count, tuple(ids), signed.data), radios)

    # ------------------------------------------------------------------ alarm fast path

    def signer_state(self) -> tuple[int, bytes]:
        return self._signer.next_seq, self._signer.prev_hash

    def restore_signer(self, state: tuple[int, bytes]) -> None:
        self._signer = batch.BatchSigner(self.key, self.gateway_id, *state)

    def sign_alarms_in(self, conn: sqlite3.Connection, now: int) -> Signed | None:
        """DB thread, inside the commit transaction that stored new alarms: sign the live alarms into the
        outbox in that same transaction, saving the second fsync (and a forwarder round trip) on the
        alarm path. Only while the uplink is up and nothing older waits for a republish, so the live lane
        keeps its order; otherwise the forwarder picks the alarms up as usual."""
        if (not self.fast_alarms or self._stopping or self._retry or self._down
                or len(self._inflight) >= self.config.max_inflight or not self.publisher.is_connected()):
            return None
        cutoff = max(now - self.config.backfill_after_s * 1000, self.backlog_mark_ms)
        rows = self.buffer.select_pending(conn, schema.P_ALARM, _MIN, _MAX, self.config.batch_max)
        if not rows or rows[0].rx_ms < cutoff:
            return None  # old alarms first: that is the forwarder's backlog decision
        return self._sign_into(conn, rows, LIVE, now)

    def launch(self, s: Signed) -> None:
        """Loop thread, after the COMMIT that put ``s`` in the outbox: publish it now."""
        self._launch(s)

    # ------------------------------------------------------------------ publishing

    def _launch(self, s: Signed) -> None:
        task = asyncio.create_task(self._publish(s))
        self._inflight[s.entry.seq] = (s.entry.lane, task)

    async def _publish(self, s: Signed) -> None:
        e = s.entry
        try:
            try:
                await self.publisher.publish(topic_up(self.gateway_id, e.lane), e.data)
            except (UplinkUnavailable, OSError, TimeoutError) as exc:
                self._failed(e, exc)
                return
            except Exception as exc:  # a publisher bug must not lose the batch: keep it and retry
                _log.error("publisher raised unexpectedly", error=type(exc).__name__)
                self._failed(e, exc)
                return
            try:
                await self.db.run(lambda c: self._done(c, e))
            except Exception as exc:
                self.fatal = exc
                return
            self._backoff_ms = 0
            self._acked.append((self.clock.monotonic(), e.count))
            lane = batch.LANE_NAMES[e.lane]
            self.stats.batches.inc(lane)
            for radio, n in s.radios.items():
                self.stats.published.inc(lane, radio, n=n)
        finally:
            self._inflight.pop(e.seq, None)
            self._wake.set()

    def _done(self, conn: sqlite3.Connection, e: OutboxEntry) -> None:
        with Transaction(conn, durable=False):
            self.buffer.outbox_done(conn, e.seq, e.ids)

    def _failed(self, e: OutboxEntry, exc: BaseException) -> None:
        self.stats.publish_failures.inc()
        self._retry[e.seq] = e
        self._down = True
        cfg = self.config
        self._backoff_ms = min(cfg.retry_max_ms, max(cfg.retry_initial_ms, self._backoff_ms * 2))
        self._pause_until = self.clock.monotonic() + self._backoff_ms / 1000.0
        _log.warning("publish failed; batch kept in outbox", seq=e.seq, backoff_ms=self._backoff_ms,
                     error=type(exc).__name__)

    async def wait_inflight(self) -> None:
        while self._inflight:
            await asyncio.gather(*(t for _, t in list(self._inflight.values())), return_exceptions=True)

    async def stop(self, timeout_s: float) -> None:
        """Stop taking new batches; give in-flight publishes ``timeout_s`` to be acknowledged."""
        self._stopping = True
        self._wake.set()
        tasks = [t for _, t in self._inflight.values()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
            if pending:
                await cancel_and_wait(pending)
                _log.info("stopped with batches awaiting PUBACK; they stay in the outbox", count=len(pending))
