"""Ingest stage: the FrameSink every adapter feeds; decode + verify, dedupe, replay check, priority, rules.

Adapters ``await submit(frame)``; the bounded queue is the back-pressure (a full pipeline makes the
adapter wait, it never drops silently). The stage takes what has arrived as one batch, runs
:meth:`Pipeline.process` (pure CPU, no I/O) and passes a list of records to the commit stage.
Every frame ends as exactly one of: a Reading, a ReceptionUpdate, or a counted Rejection (never an
exception out of the stage).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from lifeline.gateway import records as rec
from lifeline.gateway.buffer import encode_event
from lifeline.gateway.dedupe import Deduper
from lifeline.gateway.devices import DeviceInfo, DeviceTable, KeyCache
from lifeline.gateway.health import HEARTBEAT_S, Heartbeat
from lifeline.gateway.ingress.base import RawFrame
from lifeline.gateway.log import Log
from lifeline.gateway.priority import classify, raise_to
from lifeline.gateway.replay import ReplayGuard
from lifeline.gateway.rules import RulesHook
from lifeline.gateway.stats import Stats
from lifeline.protocols import fastpath, frame, schema, schema_table

_log = Log("ingest")
Item = rec.Reading | rec.ReceptionUpdate | rec.GatewayEvent
OUT_ACCEPTED = "accepted"
OUT_DUPLICATE = "duplicate"
_RATE_LIMIT_MS = 10_000


class Barrier:
    """Travels through the stage queues behind everything submitted before it (flush / shutdown)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Tracked:
    """A frame whose submitter waits until its outcome is durable (``Pipeline.submit_durable``)."""

    __slots__ = ("done", "frame")

    def __init__(self, frame: RawFrame) -> None:
        self.frame = frame
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()


class Waiters:
    """Rides at the end of a record list; the commit stage resolves these after that list's COMMIT."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[asyncio.Future[str], str]]) -> None:
        self.items = items

    def resolve(self, error: BaseException | None = None) -> None:
        for fut, outcome in self.items:
            if fut.done():
                continue
            if error is None:
                fut.set_result(outcome)
            else:
                fut.set_exception(error)


class FrameQueue(asyncio.Queue[Any]):
    """The ingest queue. An item is a frame, a Tracked frame, a Barrier, or a *burst* (a list of frames from
    ``submit_many``: one queue operation for many frames). Size and bound count frames, so back-pressure
    is unchanged; a burst is admitted whole while the queue is below its bound (it may overshoot by at
    most one burst)."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._frames = 0

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._frames += len(item) if type(item) is list else 1

    def _get(self) -> Any:
        item = super()._get()
        self._frames -= len(item) if type(item) is list else 1
        return item

    def qsize(self) -> int:
        return self._frames


class Pipeline:
    def __init__(self, *, devices: DeviceTable, keys: KeyCache, dedupe: Deduper, replay: ReplayGuard,
                 allocate_id: Callable[[], int], rules: RulesHook, stats: Stats, queue_max: int, batch_max: int,
                 now_ms: Callable[[], int], allowed_suites: frozenset[int] | None = None,
                 commit_rekey: Callable[[bytes, int], bool] | None = None) -> None:
        self.devices = devices
        # registry transaction of a confirmed over-the-air re-key (Registry.commit_rekey); None: no re-keys
        self.commit_rekey = commit_rekey
        self.allowed_suites = allowed_suites  # [gateway] node_suites as suite ids; None = every known suite
        self.keys = keys
        self.dedupe = dedupe
        self.replay = replay
        self.allocate_id = allocate_id
        self.rules = rules
        self.stats = stats
        self.batch_max = batch_max
        self._now_ms = now_ms
        self.queue: asyncio.Queue[RawFrame | Tracked | Barrier | list[RawFrame]] = FrameQueue(maxsize=queue_max)
        self._last_warn: dict[str, int] = {}
        self.last_rejection: rec.Rejection | None = None
        self._frames_in = stats.frames_in.values

    # ------------------------------------------------------------------ FrameSink

    async def submit(self, frame: RawFrame) -> None:
        await self.queue.put(frame)

    async def submit_many(self, frames: Sequence[RawFrame]) -> None:
        """Submit frames heard together (one datagram, one bench chunk) as one burst."""
        if frames:
            await self.queue.put(list(frames))

    async def submit_durable(self, frame: RawFrame) -> str:
        """Submit and wait until the frame's outcome is final: ``"accepted"`` or ``"duplicate"`` once the
        reading (or the extra reception) is committed to disk, or the rejection reason. An adapter whose
        transport has its own acknowledgement (MQTT PUBACK to the node broker) acknowledges after this
        returns, so a frame it acknowledged can never be lost in a crash."""
        t = Tracked(frame)
        await self.queue.put(t)
        return await t.done

    # ------------------------------------------------------------------ stage loop

    async def run(self, out: asyncio.Queue[list[Item | Waiters] | Barrier], heartbeat: Heartbeat) -> None:
        q = self.queue
        while True:
            try:
                first = await asyncio.wait_for(q.get(), HEARTBEAT_S)
            except TimeoutError:
                heartbeat.beat()
                continue
            frames: list[RawFrame | Tracked] = []
            barrier: Barrier | None = None
            item: RawFrame | Tracked | Barrier | list[RawFrame] = first
            while True:
                if type(item) is list:
                    frames.extend(item)
                elif isinstance(item, Barrier):
                    barrier = item
                    break
                else:
                    frames.append(item)  # type: ignore[arg-type]
                if len(frames) >= self.batch_max or q.empty():
                    break
                item = q.get_nowait()
            if frames:
                items = self.process(frames)
                if items:
                    await out.put(items)
            if barrier is not None:
                await out.put(barrier)
            heartbeat.beat()

    # ------------------------------------------------------------------ hot path

    def process(self, frames: Sequence[RawFrame | Tracked]) -> list[Item | Waiters]:
        out: list[Item | Waiters] = []
        waiting: list[tuple[asyncio.Future[str], str]] = []
        for t in frames:
            f = t.frame if isinstance(t, Tracked) else t
            try:
                outcome = self._one(f, out)
            except Exception as e:  # defensive: a bug here must cost one frame, not the daemon
                outcome = self._reject(rec.R_INTERNAL, f, None, type(e).__name__)
                _log.error("internal error on a frame", error=type(e).__name__)
            if isinstance(t, Tracked):
                if outcome in (OUT_ACCEPTED, OUT_DUPLICATE):
                    waiting.append((t.done, outcome))
                elif not t.done.done():
                    t.done.set_result(outcome)
        if waiting:
            out.append(Waiters(waiting))
        return out

    def _reject(self, reason: str, f: RawFrame, device: bytes | None, detail: str = "") -> str:
        rc = f.reception
        self.stats.rejects.inc(reason, rc.radio)
        self.last_rejection = rec.Rejection(reason, rc.radio, rc.adapter, device, detail)
        now = self._now_ms()
        if now - self._last_warn.get(reason, -_RATE_LIMIT_MS) >= _RATE_LIMIT_MS:
            self._last_warn[reason] = now
            _log.warning("frame rejected", reason=reason, radio=rc.radio, adapter=rc.adapter,
                         device=device.hex() if device else "-", total=self.stats.rejects.get(reason, rc.radio))
        return reason

    def _valid_event(self, e: object) -> bool:
        """A rules event must be encodable as a batch record, or it would fail the commit later."""
        try:
            if isinstance(e, rec.GatewayEvent) and e.priority in (0, 1, 2):
                encode_event(e)
                return True
        except Exception:
            pass
        self.stats.rules_errors.inc()
        _log.warning("rules hook emitted an invalid event; dropped")
        return False

    def _rekey_confirm(self, dev: DeviceInfo, hdr: frame.Header,
                       payload: bytes) -> tuple[DeviceInfo, frame.Frame] | None:
        """Step 3 of the over-the-air re-key (docs/keys.md): a frame that fails under the current key is
        tried under the pending one; a valid rekey_confirm (counter 1, the pending epoch) commits the switch
        in the registry (one transaction) and the snapshot. None: not such a confirm (the caller rejects)."""
        if self.commit_rekey is None:
            return None
        keys = fastpath.derive_keys(dev.pending_root, dev.device_id, dev.suite)
        try:
            decoded = fastpath.decode_parsed(hdr, payload, keys, allowed=self.allowed_suites)
        except frame.FrameError:
            return None
        if hdr.fcnt != 1 or decoded.fields.get(1) != dev.pending_epoch:
            return None
        if not self.commit_rekey(dev.device_id, dev.pending_epoch):
            return None
        new = dev.switched()
        self.devices.put(new)
        self.keys.invalidate((dev.device_id,))
        self.dedupe.forget(dev.device_id)
        _log.info("device re-keyed", device=dev.device_id.hex(), epoch=new.key_epoch)
        return new, decoded

    def _one(self, f: RawFrame, out: list[Item | Waiters]) -> str:
        """Process one frame; returns OUT_ACCEPTED, OUT_DUPLICATE or the rejection reason."""
        payload = f.payload
        rc = f.reception
        counts = self._frames_in
        key = (rc.radio, rc.adapter)
        counts[key] = counts.get(key, 0) + 1  # stats.frames_in.inc, inlined (once per frame)
        if type(payload) is not bytes:
            if not isinstance(payload, bytes | bytearray):
                return self._reject("bad_type", f, None)
            payload = bytes(payload)
        try:
            hdr = frame.parse_header(payload)
        except frame.FrameError as e:
            return self._reject(e.reason, f, None)
        dev_id = hdr.dev_id
        if self.allowed_suites is not None and hdr.suite not in self.allowed_suites:
            return self._reject("suite_not_allowed", f, dev_id)  # config policy: before the device lookup
        dev = self.devices.get(dev_id)
        if dev is None:
            return self._reject(rec.R_UNKNOWN_DEVICE, f, dev_id)
        dev_id = dev.device_id  # the table's id object: what per-device state keeps is then shared, not one per device
        if not dev.active:
            return self._reject(rec.R_REVOKED_DEVICE, f, dev_id)
        if hdr.flags & frame.FLAG_DOWN:
            return self._reject("bad_direction", f, dev_id)
        recent = self.dedupe.match(dev_id, hdr.fcnt, rc.rx_ms)
        if recent is not None and recent.payload == payload:
            if recent.count >= self.dedupe.max_receptions:
                return self._reject(rec.R_TOO_MANY_RECEPTIONS, f, dev_id)
            recent.count += 1
            self.stats.duplicates.inc(rc.radio)
            out.append(rec.ReceptionUpdate(recent.reading_id, dev_id, hdr.fcnt, rc, recent.priority))
            return OUT_DUPLICATE
        keys = self.keys.get(dev)
        try:
            decoded = fastpath.decode_parsed(hdr, payload, keys, allowed=self.allowed_suites)
        except frame.FrameError as e:
            if e.reason != "bad_mic" or not dev.pending_epoch or hdr.kind != schema_table.K_REKEY_CONFIRM:
                return self._reject(e.reason, f, dev_id)
            switched = self._rekey_confirm(dev, hdr, payload)
            if switched is None:
                return self._reject(e.reason, f, dev_id)
            dev, decoded = switched
            recent = None  # the dedupe entries were the old key's (forgotten): counters restart with the new one
        if recent is not None:
            return self._reject(rec.R_COUNTER_REUSE, f, dev_id)
        kind = hdr.kind
        if not self.replay.accept(dev_id, dev.key_epoch, hdr.fcnt) and not (
                kind == schema_table.K_REKEY_CONFIRM and hdr.fcnt == 1 and decoded.fields[1] == dev.key_epoch):
            # (a confirm re-sent because our ACK was lost is acknowledged again: the node switches only then)
            return self._reject(rec.R_REPLAY, f, dev_id)
        fields: dict[int, Any] = decoded.fields
        k = schema.KINDS[kind]
        flags = (rec.RF_QUEUED if hdr.flags & frame.FLAG_QUEUED else 0) | (
            rec.RF_TEST if hdr.flags & frame.FLAG_TEST else 0)
        # positional (field order of rec.Reading): a third cheaper than keywords, once per accepted frame
        reading = rec.Reading(self.allocate_id(), dev_id, hdr.fcnt, hdr.time, kind, fields,
                              max(k[1], dev.data_class), classify(kind, fields), flags, hdr.flags, (rc,),
                              dev.key_epoch)
        events: tuple[rec.GatewayEvent, ...] = ()
        if not flags & rec.RF_TEST:
            try:
                outcome = self.rules.evaluate(reading)
            except Exception as e:
                self.stats.rules_errors.inc()
                _log.warning("rules hook raised", error=type(e).__name__)
                outcome = None
            if outcome is not None:
                p = raise_to(reading.priority, outcome.priority)
                if p != reading.priority:
                    reading = reading._replace(priority=p)
                events = tuple(e for e in outcome.events if self._valid_event(e))
        self.dedupe.remember(dev_id, hdr.fcnt, rc.rx_ms, payload, reading.id, reading.priority)
        self.stats.accepted.inc(rc.radio)
        out.append(reading)
        out.extend(events)
        return OUT_ACCEPTED
