"""Downlinks: platform commands queued durably until the node's next receive window, and ACKs.

* :class:`CommandQueue` validates platform command JSON (``lifeline/v1/<gw>/down``, batch_api.md), stores
  it in the ``commands`` table of the buffer DB and answers on ``.../down/result``
  (queued / sent / expired / rejected with a reason).
* The commit stage calls :meth:`CommandQueue.take` inside its transaction when a reading opens a window;
  the downlink counter is allocated in that same transaction (replay.py), so it is on disk before the
  frame exists.
* :class:`DownlinkSender` (the stage after commit) encodes the protected frame and hands it to the
  adapter that heard the uplink.

One downlink per receive window. A reading with ACK_REQ gets an ACK (``acked_fcnt`` = its counter; for
alarm kinds also ``alarm_id`` and ``alarm_state`` 0 = received by the gateway); a queued platform ``ack``
command for that device is merged into it (the platform's alarm_state). A reading without ACK_REQ carries
the oldest queued command of its device. Delivery is at least once: a command whose send was cut by a
crash goes back to the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import re
import sqlite3
from collections.abc import Callable, Mapping
from typing import Any

import cbor2

from lifeline.gateway import records as rec
from lifeline.gateway.clock import Clock, lifeline_time
from lifeline.gateway.config import DownlinkConfig
from lifeline.gateway.devices import DeviceTable, KeyCache
from lifeline.gateway.health import HEARTBEAT_S, Heartbeat
from lifeline.gateway.ingress.base import DownlinkRequest, IngressAdapter
from lifeline.gateway.log import Log
from lifeline.gateway.registry import PendingKey, RegistryError
from lifeline.gateway.statedb import StateDB, Transaction
from lifeline.gateway.stats import Stats
from lifeline.gateway.uplink_api import AckedPublisher, UplinkUnavailable, topic_down_result
from lifeline.protocols import frame, schema, schema_table

_log = Log("downlinks")
MAX_COMMAND_BYTES = 4096
_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_ALARM_KINDS = (schema.K_ALARM_RAISED, schema.K_ALARM_CLEARED)
GATEWAY_FILLED = {schema.C_ACK: (1,), schema.C_TIME_SYNC: (1,)}  # fields the gateway fills at send time
# a platform `rekey` carries no fields: the gateway draws the seed and stores the pending key (docs/keys.md)
REKEY_FIELDS = (1, 2)
MAX_RESULTS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands(
  id TEXT PRIMARY KEY,
  device BLOB NOT NULL,
  kind INTEGER NOT NULL,
  fields BLOB NOT NULL,
  received_ms INTEGER NOT NULL,
  expires_ms INTEGER NOT NULL,
  state TEXT NOT NULL,
  down_fcnt INTEGER,
  done_ms INTEGER
);
CREATE INDEX IF NOT EXISTS commands_open ON commands(device, received_ms) WHERE state IN ('queued', 'sending');
"""


class CommandRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_command(payload: bytes, devices: DeviceTable) -> tuple[str, bytes, int, dict[int, int | bytes]]:
    """Validate a platform command; returns (id, device, kind, fields). Raises CommandRejected."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejected("too_large")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise CommandRejected("bad_json") from None
    if not isinstance(obj, dict):
        raise CommandRejected("bad_json")
    cid = obj.get("id")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise CommandRejected("bad_id")
    unknown = set(obj) - {"id", "device", "command", "fields"}
    if unknown:
        raise CommandRejected(f"unknown_key:{sorted(unknown)[0]}")
    dev_hex = obj.get("device")
    if not isinstance(dev_hex, str) or not _HEX16.match(dev_hex):
        raise CommandRejected("bad_device")
    device = bytes.fromhex(dev_hex)
    d = devices.get(device)
    if d is None:
        raise CommandRejected(rec.R_UNKNOWN_DEVICE)
    if not d.active:
        raise CommandRejected(rec.R_REVOKED_DEVICE)
    name = obj.get("command")
    kind = schema.kind_id_by_name(name) if isinstance(name, str) else None
    if kind is None or not schema.is_downlink_kind(kind):
        raise CommandRejected("unknown_command")
    given = obj.get("fields", {})
    if not isinstance(given, dict):
        raise CommandRejected("bad_fields")
    fields: dict[int, int | bytes] = {}
    for fname, value in given.items():
        spec = next((f for f in schema.KINDS[kind][3] if f[1] == fname), None)
        if spec is None:
            raise CommandRejected(f"unknown_field:{fname}"[:64])
        if spec[6] == schema.T_BYTES:
            if not isinstance(value, str) or len(value) % 2 or not re.fullmatch(r"[0-9a-fA-F]*", value):
                raise CommandRejected(f"bad_value:{fname}")
            fields[spec[0]] = bytes.fromhex(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise CommandRejected(f"bad_value:{fname}")
            fields[spec[0]] = value
    if kind == schema_table.C_REKEY:
        if fields:
            raise CommandRejected("gateway_filled:" + str(next(iter(given)))[:48])
        return cid, device, kind, {1: 1, 2: bytes(16)}  # placeholders: CommandQueue.handle fills them
    trial = dict(fields)
    for key in GATEWAY_FILLED.get(kind, ()):
        trial.setdefault(key, 0xFFFFFFFF)
    try:
        frame.validate_fields(kind, trial)
        frame.encode(frame.derive_keys(bytes(32), device), device, 0xFFFFFFFF, 0xFFFFFFFF, kind, trial,
                     frame.FLAG_DOWN)
    except frame.FrameError as e:
        raise CommandRejected(e.reason) from None
    return cid, device, kind, fields


class CommandQueue:
    """Durable platform command queue (``commands`` table) plus the result messages owed to the platform."""

    def __init__(self, db: StateDB, devices: DeviceTable, config: DownlinkConfig, clock: Clock, stats: Stats,
                 gateway_id: str) -> None:
        self.db = db
        self.devices = devices
        self.config = config
        self.clock = clock
        self.stats = stats
        self.topic = topic_down_result(gateway_id)
        self.open_by_device: collections.Counter[bytes] = collections.Counter()
        self.results: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RESULTS)
        self.results_ready = asyncio.Event()
        self._publish_lock = asyncio.Lock()
        # Registry.begin_rekey (run in a worker thread): the daemon sets it; None refuses `rekey` commands
        self.begin_rekey: Callable[[bytes], PendingKey] | None = None

    # ------------------------------------------------------------------ DB thread

    def load(self, conn: sqlite3.Connection) -> None:
        conn.executescript(SCHEMA)
        conn.execute("UPDATE commands SET state='queued' WHERE state='sending'")
        self.open_by_device.clear()
        for dev, n in conn.execute("SELECT device, count(*) FROM commands WHERE state='queued' GROUP BY device"):
            self.open_by_device[bytes(dev)] = n

    def has_open(self, device: bytes) -> bool:
        return self.open_by_device.get(device, 0) > 0

    def take(self, conn: sqlite3.Connection, device: bytes, now_ms: int, ack_only: bool) -> rec.QueuedCommand | None:
        """Inside the commit transaction: the oldest open command for this window (marked 'sending')."""
        if not self.has_open(device):
            return None
        sql = ("SELECT id, kind, fields FROM commands WHERE device=? AND state='queued' AND expires_ms > ?"
               + (" AND kind=?" if ack_only else "") + " ORDER BY received_ms, rowid LIMIT 1")
        args: tuple[Any, ...] = (device, now_ms, schema.C_ACK) if ack_only else (device, now_ms)
        row = conn.execute(sql, args).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE commands SET state='sending' WHERE id=?", (row[0],))
        self.open_by_device[device] -= 1
        return rec.QueuedCommand(row[0], row[1], cbor2.loads(row[2]))

    def _finish(self, conn: sqlite3.Connection, cid: str, device: bytes, sent: bool, down_fcnt: int,
                now_ms: int) -> None:
        with Transaction(conn, durable=False):
            if sent:
                conn.execute("UPDATE commands SET state='sent', down_fcnt=?, done_ms=? WHERE id=?",
                             (down_fcnt, now_ms, cid))
            else:
                conn.execute("UPDATE commands SET state='queued' WHERE id=? AND state='sending'", (cid,))
        if not sent:
            self.open_by_device[device] += 1

    def _insert(self, conn: sqlite3.Connection, cid: str, device: bytes, kind: int,
                fields: Mapping[int, int | bytes], now_ms: int) -> str:
        with Transaction(conn):
            row = conn.execute("SELECT state FROM commands WHERE id=?", (cid,)).fetchone()
            if row is not None:
                return "duplicate:" + str(row[0])
            if self.open_by_device.get(device, 0) >= self.config.max_per_device:
                return "queue_full"
            conn.execute("INSERT INTO commands(id, device, kind, fields, received_ms, expires_ms, state) "
                         "VALUES (?,?,?,?,?,?, 'queued')",
                         (cid, device, kind, cbor2.dumps(dict(fields)), now_ms,
                          now_ms + self.config.command_ttl_s * 1000))
        self.open_by_device[device] += 1
        return "queued"

    def expire(self, conn: sqlite3.Connection, now_ms: int) -> list[tuple[str, bytes]]:
        with Transaction(conn, durable=False):
            rows = conn.execute("SELECT id, device FROM commands WHERE state='queued' AND expires_ms <= ?",
                                (now_ms,)).fetchall()
            conn.executemany("UPDATE commands SET state='expired', done_ms=? WHERE id=?",
                             [(now_ms, r[0]) for r in rows])
            # terminal rows are kept one more TTL so a re-delivered command id is recognised
            conn.execute("DELETE FROM commands WHERE state IN ('sent', 'expired') AND done_ms < ?",
                         (now_ms - self.config.command_ttl_s * 1000,))
        for _, dev in rows:
            self.open_by_device[bytes(dev)] -= 1
        return [(r[0], bytes(r[1])) for r in rows]

    # ------------------------------------------------------------------ loop side

    def result(self, cid: str, status: str, device: bytes | None = None, reason: str = "",
               down_fcnt: int | None = None) -> None:
        msg: dict[str, Any] = {"id": cid, "status": status}
        if device is not None:
            msg["device"] = device.hex()
        if reason:
            msg["reason"] = reason
        if down_fcnt is not None:
            msg["fcnt"] = down_fcnt
        self.results.append(msg)
        self.results_ready.set()
        if status != "queued":
            self.stats.commands.inc(status)

    async def handle(self, payload: bytes) -> None:
        """Entry point for platform command messages (CommandSource handler). Never raises for bad input."""
        cid = "?"
        try:
            with contextlib.suppress(Exception):
                obj = json.loads(payload)
                if isinstance(obj, dict) and isinstance(obj.get("id"), str) and _ID.match(obj["id"]):
                    cid = obj["id"]
            cid, device, kind, fields = parse_command(payload, self.devices)
        except CommandRejected as e:
            _log.warning("command rejected", id=cid, reason=e.reason)
            self.result(cid, "rejected", reason=e.reason)
            return
        if kind == schema_table.C_REKEY:
            try:
                fields = await self.prepare_rekey(device)
            except CommandRejected as e:
                _log.warning("command rejected", id=cid, reason=e.reason)
                self.result(cid, "rejected", device, reason=e.reason)
                return
        now = self.clock.now_ms()
        status = await self.db.run(lambda c: self._insert(c, cid, device, kind, fields, now))
        if status.startswith("duplicate:"):
            state = status.split(":", 1)[1]
            self.result(cid, "queued" if state in ("queued", "sending") else state, device)
        elif status == "queued":
            _log.info("command queued", id=cid, device=device, kind=schema.KINDS[kind][0])
            self.result(cid, "queued", device)
        else:
            self.result(cid, "rejected", device, reason=status)

    async def prepare_rekey(self, device: bytes) -> dict[int, int | bytes]:
        """Step 1 of the over-the-air re-key: the pending key stored in the registry (or the one already
        pending), the snapshot told, and the `rekey` fields (new epoch, seed) returned."""
        begin = self.begin_rekey
        if begin is None:
            raise CommandRejected("rekey_unavailable")
        try:
            p = await asyncio.to_thread(begin, device)
        except RegistryError as e:
            _log.warning("re-key refused", device=device, error=str(e))
            raise CommandRejected("rekey_refused") from None
        d = self.devices.get(device)
        if d is not None:
            self.devices.put(dataclasses.replace(d, pending_epoch=p.epoch, pending_root=p.root_key))
        return {1: p.epoch, 2: p.seed}

    async def queue_pending_rekeys(self) -> int:
        """Re-keys begun outside the daemon (``lifeline gateway devices rekey``): queue their `rekey` command
        (id ``rekey-<device>-<epoch>``: queued once; a re-send needs a new request after the TTL)."""
        n = 0
        for d in self.devices.pending():
            if self.has_open(d.device_id):
                continue
            dev = d.device_id
            cid = f"rekey-{dev.hex()}-{d.pending_epoch}"
            try:
                fields = await self.prepare_rekey(dev)
            except CommandRejected:
                continue
            now = self.clock.now_ms()
            status = await self.db.run(functools.partial(self._insert, cid=cid, device=dev, kind=schema_table.C_REKEY,
                                                         fields=fields, now_ms=now))
            if status == "queued":
                _log.info("command queued", id=cid, device=d.device_id, kind="rekey")
                n += 1
        return n

    async def expire_due(self) -> int:
        now = self.clock.now_ms()
        expired = await self.db.run(lambda c: self.expire(c, now))
        for cid, dev in expired:
            self.result(cid, "expired", dev, reason="no receive window before the command's TTL")
        return len(expired)

    async def finish(self, cmd: rec.QueuedCommand, device: bytes, sent: bool, down_fcnt: int) -> None:
        now = self.clock.now_ms()
        await self.db.run(lambda c: self._finish(c, cmd.id, device, sent, down_fcnt, now))
        if sent:
            self.result(cmd.id, "sent", device, down_fcnt=down_fcnt)

    async def drain_results(self, publisher: AckedPublisher) -> int:
        """Publish queued result messages in order until none is left or the uplink refuses one."""
        sent = 0
        async with self._publish_lock:
            while self.results and publisher.is_connected():
                msg = self.results[0]
                try:
                    await publisher.publish(self.topic, json.dumps(msg, separators=(",", ":")).encode())
                except UplinkUnavailable:
                    break
                except Exception as e:  # a publisher bug costs a retry, not the stage
                    _log.warning("result publish failed", error=type(e).__name__)
                    break
                if self.results and self.results[0] is msg:
                    self.results.popleft()
                sent += 1
        return sent

    async def publish_results(self, publisher: AckedPublisher, heartbeat: Heartbeat) -> None:
        """Stage loop: publish result messages as they come; on an uplink outage keep them and retry."""
        while True:
            heartbeat.beat()
            if not self.results:
                self.results_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.results_ready.wait(), HEARTBEAT_S)
                continue
            task = asyncio.create_task(self.drain_results(publisher))
            while not task.done():  # a publish waiting for its PUBACK must not look like a hung stage
                await asyncio.wait({task}, timeout=HEARTBEAT_S)
                heartbeat.beat()
            task.result()
            if self.results:
                await asyncio.sleep(HEARTBEAT_S / 2)


def ack_fields(plan: rec.DownlinkPlan, now_ms: int) -> tuple[int, dict[int, int | bytes]]:
    """(kind, fields) of the downlink for one window."""
    r = plan.reading
    cmd = plan.command
    if cmd is None:
        fields: dict[int, int | bytes] = {1: r.fcnt}
        alarm_id = r.fields.get(1) if r.kind in _ALARM_KINDS else None
        if isinstance(alarm_id, int):
            fields[2] = alarm_id
            fields[3] = 0  # received by the gateway
        return schema.C_ACK, fields
    fields = dict(cmd.fields)
    if cmd.kind == schema.C_ACK:
        fields[1] = r.fcnt
    elif cmd.kind == schema.C_TIME_SYNC and 1 not in fields:
        fields[1] = lifeline_time(now_ms)
    return cmd.kind, fields


class DownlinkSender:
    """Stage after commit: encode each owed downlink and hand it to the adapter that heard the uplink."""

    def __init__(self, *, devices: DeviceTable, keys: KeyCache, commands: CommandQueue,
                 adapters: Mapping[str, IngressAdapter], config: DownlinkConfig, clock: Clock, stats: Stats,
                 concurrency: int = 64) -> None:
        self.devices = devices
        self.keys = keys
        self.commands = commands
        self.adapters = adapters
        self.config = config
        self.clock = clock
        self.stats = stats
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, inq: asyncio.Queue[Any], heartbeat: Heartbeat) -> None:
        from lifeline.gateway.pipeline import Barrier

        while True:
            try:
                item = await asyncio.wait_for(inq.get(), HEARTBEAT_S)
            except TimeoutError:
                heartbeat.beat()
                continue
            heartbeat.beat()
            if isinstance(item, Barrier):
                await self.wait_idle()
                if not item.done.done():
                    item.done.set_result(None)
                continue
            for plan in item:
                while True:  # all send slots busy (slow radios): keep reporting that we are alive
                    try:
                        await asyncio.wait_for(self._sem.acquire(), HEARTBEAT_S)
                        break
                    except TimeoutError:
                        heartbeat.beat()
                t = asyncio.create_task(self._send(plan))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _send(self, plan: rec.DownlinkPlan) -> None:
        try:
            await self._send_one(plan)
        except Exception as e:
            _log.error("downlink failed", device=plan.reading.device_id, error=type(e).__name__)
        finally:
            self._sem.release()

    async def _send_one(self, plan: rec.DownlinkPlan) -> None:
        r = plan.reading
        rc = r.receptions[0]
        dev = self.devices.get(r.device_id)
        adapter = self.adapters.get(rc.adapter)
        now = self.clock.now_ms()
        kind, fields = ack_fields(plan, now)
        kind_name = schema.KINDS[kind][0]
        ok = False
        if dev is None or not dev.active or dev.key_epoch != r.key_epoch:
            result = "device_gone"
        elif adapter is None:
            result = "no_adapter"
        else:
            try:
                payload = frame.encode(self.keys.downlink_keys(dev), r.device_id, plan.down_fcnt,
                                       lifeline_time(now), kind, fields, frame.FLAG_DOWN)
            except frame.FrameError as e:
                result = "encode_" + e.reason
            else:
                req = DownlinkRequest(r.device_id, payload, rc, rc.rx_ms + self.config.window_ms)
                try:
                    ok = bool(await adapter.send_downlink(req))
                except Exception as e:
                    _log.warning("adapter send_downlink raised", adapter=rc.adapter, error=type(e).__name__)
                    ok = False
                result = "sent" if ok else "not_sent"
        self.stats.downlinks.inc(rc.adapter, kind_name, result)
        if plan.command is not None:
            await self.commands.finish(plan.command, r.device_id, ok, plan.down_fcnt)
