"""The rules service inside the gateway daemon: the ``RulesHook`` the ingest stage calls, plus the task
that ticks time-based triggers, runs actions, tracks alarms, applies mode changes and reloads the rules.

    reading --evaluate (hot path, no I/O)--> firings --Reactor--> audit records (committed with the
                                                                  reading) + action requests --> ActionRunner
    tick (1 s): durations, silence, uplink health, unacked alarms, disk, schedule --> firings --> ...
    action results, alarm steps, mode changes, reloads --> audit records --> commit queue --> platform

The daemon builds it from ``[rules]`` (:meth:`RulesService.from_config`), binds it with :meth:`start`,
runs :meth:`run` as a stage, calls :meth:`reload` on SIGHUP and :meth:`stop` at shutdown. Tests build
it with a rule set or files and pass it to ``Gateway(rules=...)``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifeline.gateway import actions
from lifeline.gateway import records as rec
from lifeline.gateway.actions import ActionFailed
from lifeline.gateway.alarms import STEPS as ALARM_STEPS
from lifeline.gateway.alarms import Alarm, AlarmTracker
from lifeline.gateway.alarms import save as save_alarms
from lifeline.gateway.clock import Clock, SystemClock
from lifeline.gateway.health import HEARTBEAT_S, Heartbeat
from lifeline.gateway.log import Log, scrub
from lifeline.gateway.metrics import Metrics
from lifeline.gateway.rules import RuleOutcome
from lifeline.gateway.rules_engine import audit, state
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.dispatch import ActionRequest, ActionResult, ActionRunner, Dispatcher
from lifeline.gateway.rules_engine.engine import DeviceAttrs, Engine, Firing, Health
from lifeline.gateway.rules_engine.loader import RulesError, load_files
from lifeline.gateway.rules_engine.reactor import Reactor, firing_json
from lifeline.gateway.statedb import StateDB
from lifeline.gateway.uplink_api import CommandHandler
from lifeline.protocols import schema

if TYPE_CHECKING:
    from lifeline.gateway.actions.gpio import GpioRelays
    from lifeline.gateway.actions.lan_mqtt import LanMqtt
    from lifeline.gateway.actions.sms import SmsModem
    from lifeline.gateway.actions.webhook import Webhook
    from lifeline.gateway.config import GatewayConfig
    from lifeline.gateway.daemon import Gateway

_log = Log("rules")
SEEN_SAVE_MS = 60_000
ATTRS_CHECK_S = 5.0
STOP_ACTIONS_S = 3.0


def attrs_from_registry(path: Path) -> dict[bytes, DeviceAttrs]:
    from lifeline.gateway.registry import Registry

    if not path.exists():
        return {}
    with Registry(path, metadata_only=True) as reg:  # attributes only: no key-encryption key needed
        return {d.device_id: DeviceAttrs(d.kind, d.location.spatial_unit, d.data_class, frozenset(d.tags),
                                         d.location.address) for d in reg.all() if d.active}


class RulesService:
    def __init__(self, ruleset: m.RuleSet, *, files: Sequence[str | Path] = (), state_db: Path | None = None,
                 clock: Clock | None = None, tick_ms: int = 1000, gateway_id: str = "") -> None:
        self.ruleset = ruleset
        self.files = tuple(Path(f) for f in files)
        self.state_db = state_db
        self.clock: Clock = clock or SystemClock()
        self.tick_ms = tick_ms
        self.gateway_id = gateway_id
        self.tracker = AlarmTracker(on_step=self._on_alarm_step)
        self.attrs: dict[bytes, DeviceAttrs] = {}
        self.engine = Engine(ruleset, start_ms=self.clock.now_ms(), attrs=self.attrs, alarms=self.tracker)
        self.seq = audit.AuditSeq()
        self.dispatcher = Dispatcher()
        self.reactor = Reactor(gateway_id, ruleset, attrs=self.attrs.get, state=self._mode_state,
                               submit=self._submit, seq=self.seq, dispatcher=self.dispatcher,
                               cause_of=self._cause_of)
        self.runner: ActionRunner | None = None
        self.outputs: dict[str, actions.Output] = {}
        self._retired: dict[str, actions.Output] = {}
        self._staged: list[rec.GatewayEvent] = []
        self._events: collections.deque[rec.GatewayEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._gw: Gateway | None = None
        self._db: StateDB | None = None
        self._started = False
        self._stopping = False
        self._mode_request_id = 0
        self._seen_saved_ms = 0
        self._attrs_generation = -2
        self._attrs_checked = 0.0
        self._stall_since = 0
        self._stall_batches = -1
        self._forward_checked = -1  # PUBACKed batch count when alarm rows were last looked up
        self.reloads: collections.Counter[str] = collections.Counter()
        self.last_reload_error = ""
        self._init_metrics(Metrics())

    @classmethod
    def from_files(cls, files: Sequence[str | Path], **kw: Any) -> RulesService:
        return cls(load_files(files), files=files, **kw)

    @classmethod
    def from_config(cls, cfg: GatewayConfig, clock: Clock | None = None) -> RulesService:
        """Raises :class:`RulesError` for invalid rule files."""
        return cls.from_files(cfg.rules.files, state_db=cfg.rules.state_db, clock=clock, gateway_id=cfg.gateway.id)

    # ------------------------------------------------------------------ metrics

    def _init_metrics(self, metrics: Metrics) -> None:
        mt = metrics
        self.m_fired = mt.counter("rules_fired_total", "Rule firings by rule and state (fired, cleared, muted).",
                                  ("rule", "state"))
        self.m_actions = mt.counter("rules_actions_total", "Rule actions by type and result "
                                    "(done, failed, rate_limited, dropped, cooldown, duplicate).", ("type", "result"))
        self.m_retries = mt.counter("rules_action_retries_total", "Action attempts that failed and were retried.")
        self.m_reloads = mt.counter("rules_reloads_total", "Rule file (re)loads by result (ok, refused).",
                                    ("result",))
        mt.gauge("rules_loaded", "Rules in force.", lambda: [((), len(self.engine.rts))])
        mt.gauge("rules_active", "Active rule firings.", lambda: [((), self.engine.active_count())])
        mt.gauge("rules_mode", "Operating mode (1 for the current one).",
                 lambda: [((x,), int(x == self.engine.mode)) for x in m.MODES], ("mode",))
        mt.gauge("rules_failover", "1 while the uplink counts as down (failover grace passed).",
                 lambda: [((), int(self.engine.uplink_down))])
        mt.gauge("alarms", "Node alarms known to the gateway by life-cycle stage.",
                 lambda: [((k,), v) for k, v in self.tracker.counts().items()], ("stage",))
        mt.gauge("rules_actions_inflight", "Actions running or waiting to retry.",
                 lambda: [((), self.runner.busy if self.runner else 0)])

    # ------------------------------------------------------------------ small helpers

    def _mode_state(self) -> tuple[str, bool]:
        return self.engine.mode, self.engine.uplink_down

    def _cause_of(self, device: bytes, alarm_id: int) -> int | None:
        a = self.tracker.get(device, alarm_id)
        return a.cause if a is not None else None

    @property
    def mode(self) -> str:
        return self.engine.mode

    def _emit(self, events: Sequence[rec.GatewayEvent]) -> None:
        if events:
            self._events.extend(events)
            self._wake.set()

    def _take_staged(self) -> list[rec.GatewayEvent]:
        out = self._staged
        self._staged = []
        return out

    def _count_firings(self, firings: Sequence[Firing]) -> None:
        for f in firings:
            self.m_fired.inc(f.rule.name, "muted" if f.muted else ("fired" if f.fired else "cleared"))
            _log.info("rule " + ("fired" if f.fired else "cleared"), rule=f.rule.name,
                      device=f.device.hex() if f.device != rec.GATEWAY_DEVICE else "gateway",
                      value="-" if f.value is None else f.value, reason=f.reason or "-", muted=int(f.muted))

    def _react(self, firings: list[Firing]) -> list[rec.GatewayEvent]:
        """Firings -> audit records and actions; alarm escalation is recorded on the alarm."""
        if not firings:
            return self._take_staged()
        self._count_firings(firings)
        self._wake.set()  # active firings changed: saved by the stage loop
        events = self.reactor.handle(firings)
        for f in firings:
            if f.fired and isinstance(f.rule.trigger, m.AlarmUnacked) and f.alarm_id is not None:
                self.tracker.escalated(f.device, f.alarm_id, f.at_ms)
        return events + self._take_staged()

    # ------------------------------------------------------------------ hot path (RulesHook)

    def evaluate(self, reading: rec.Reading) -> RuleOutcome | None:
        res = self.engine.evaluate(reading)
        kind = reading.kind
        if kind == schema.K_ALARM_RAISED or kind == schema.K_ALARM_CLEARED:
            res = self._alarm_reading(reading, res)
        if res is None and not self._staged:
            return None
        firings, prio = res if res is not None else ([], None)
        events = self._react(firings)
        if not events and prio is None:
            return None
        return RuleOutcome(prio, tuple(events))

    def _alarm_reading(self, r: rec.Reading, res: tuple[list[Firing], int | None] | None
                       ) -> tuple[list[Firing], int | None] | None:
        aid = r.fields.get(1)
        cause = r.fields.get(2)
        value = r.fields.get(3)
        if not isinstance(aid, int) or not isinstance(cause, int):
            return res
        now = r.rx_ms
        if r.kind == schema.K_ALARM_RAISED:
            self.tracker.raised(r.device_id, aid, cause, value if isinstance(value, int) else None, now, r.id, r.fcnt)
            return res
        if self.tracker.cleared(r.device_id, aid, cause, now) is None:
            return res
        more = self.engine.alarms_changed(now)
        if not more:
            return res
        firings, prio = res if res is not None else ([], None)
        return firings + more, prio

    def _on_alarm_step(self, a: Alarm, step: str, at_ms: int) -> None:
        fields: dict[int, int | bytes] = {audit.FAL_ID: a.alarm_id, audit.FAL_CAUSE: a.cause,
                                          audit.FAL_STEP: ALARM_STEPS.index(step),
                                          audit.FAL_SINCE_MS: max(0, at_ms - a.raised_ms)}
        if a.ack_state is not None:
            fields[audit.FAL_ACK_STATE] = a.ack_state
        if step == "ack_delivered" and a.ack_down_fcnt is not None:
            fields[audit.FAL_DOWN_FCNT] = a.ack_down_fcnt
        prio = schema.P_ALARM if step in ("escalated", "acked") else schema.P_EVENT
        self._staged.append(audit.event(audit.EV_ALARM, self.seq.take(), a.device, at_ms, prio, fields))
        _log.info("alarm " + step, device=a.device.hex(), alarm_id=a.alarm_id, cause=a.cause)
        self._wake.set()  # the stage saves the change within milliseconds

    # ------------------------------------------------------------------ actions

    def _submit(self, req: ActionRequest) -> None:
        if self.runner is None:  # not started (or a dry run wired wrongly): never lose it silently
            self._on_result(req, ActionResult(False, "dropped", 0, "rules service not started", "", 0))
            return
        self.runner.submit(req)

    def _on_result(self, req: ActionRequest, res: ActionResult) -> None:
        self.dispatcher.done(req.dedupe_key)
        self.m_actions.inc(req.spec.type, res.result)
        now = self.clock.now_ms()
        log = _log.info if res.ok else _log.warning
        log("action " + res.result, rule=req.rule, type=req.spec.type, attempts=res.attempts,
            detail=scrub(res.detail)[:120] or "-", target=res.target or "-", latency_ms=res.latency_ms)
        self._emit([self.reactor.result_event(req.rule, req.spec, req.firing_seq, req.device, now, req.priority, res)])

    def _output(self, name: str | None) -> actions.Output:
        out = self.outputs.get(name or "") or self._retired.get(name or "")
        if out is None:
            raise ActionFailed(f"output {name!r} is gone (rules reloaded)")
        return out

    async def _execute(self, req: ActionRequest) -> tuple[str, str]:
        spec = req.spec
        body = spec.body
        v = req.values
        timeout_s = spec.timeout_ms / 1000
        if isinstance(body, m.MqttAction):
            lan: LanMqtt = self._output(spec.output)  # type: ignore[assignment]
            topic = body.topic.render(v)
            payload = (body.payload.render(v) if body.payload is not None
                       else json.dumps(firing_json(v), separators=(",", ":")))
            await lan.publish(topic, payload.encode(), qos=body.qos, retain=body.retain, timeout_s=timeout_s)
            return "published", topic
        if isinstance(body, m.GpioAction):
            relays: GpioRelays = self._output(spec.output)  # type: ignore[assignment]
            detail = await relays.set(body.line, body.value)
            if body.pulse_ms:
                await asyncio.sleep(body.pulse_ms / 1000)
                detail = await relays.set(body.line, 1 - body.value)
                detail = f"line {body.line} pulsed {body.pulse_ms} ms"
            return detail, f"line {body.line}"
        if isinstance(body, m.SmsAction):
            return await self._sms(req, body)
        if isinstance(body, m.WebhookAction):
            hook: Webhook = self._output(spec.output)  # type: ignore[assignment]
            path = body.path.render(v) if body.path is not None else None
            doc: Mapping[str, Any] = ({k: t.render(v) for k, t in body.body.items()} if body.body is not None
                                      else firing_json(v))
            status = await hook.post(path, doc, timeout_s)
            return f"HTTP {status}", path or "/"
        if isinstance(body, m.DownlinkAction):
            return await self._downlink(req, body)
        raise ActionFailed(f"action type {spec.type} has nothing to execute")

    def recipients(self, body: m.SmsAction, values: Mapping[str, str]) -> list[str]:
        out: list[str] = []
        for t in body.to:
            item = t.render(values)
            if item.startswith("@"):
                group = self.ruleset.contacts.get(item[1:])
                if group is None:
                    _log.debug("contact group not defined", group=item[1:])
                    continue
                out.extend(n for n in group if n not in out)
            elif item not in out:
                out.append(item)
        return out

    async def _sms(self, req: ActionRequest, body: m.SmsAction) -> tuple[str, str]:
        from lifeline.gateway.actions.sms import mask_number

        modem: SmsModem = self._output(req.spec.output)  # type: ignore[assignment]
        numbers = self.recipients(body, req.values)
        if not numbers:
            raise ActionFailed("no recipients (contact groups empty or undefined)")
        text = body.text.render(req.values)
        target = ",".join(mask_number(n) for n in numbers)
        refs: list[str] = []
        for n in numbers:
            if n in req.progress:
                continue
            try:
                mr = await modem.send(n, text)
            except ActionFailed as e:
                raise ActionFailed(f"{len(req.progress)}/{len(numbers)} sent; {mask_number(n)}: {e.reason}") from None
            req.progress.add(n)
            refs.append(str(mr))
        return f"{len(numbers)} sent (+CMGS {' '.join(refs) or '-'})", target

    async def _downlink(self, req: ActionRequest, body: m.DownlinkAction) -> tuple[str, str]:
        from lifeline.gateway.downlinks import CommandRejected, parse_command

        gw = self._gw
        if gw is None:
            raise ActionFailed("not bound to a gateway")
        device = body.device.render(req.values)
        cid = f"rules-{req.firing_seq}-{req.spec.index}"
        payload = json.dumps({"id": cid, "device": device, "command": schema.KINDS[body.command][0],
                              "fields": dict(body.fields)}).encode()
        try:
            parse_command(payload, gw.devices)
        except CommandRejected as e:
            raise ActionFailed(f"command rejected: {e.reason}") from None
        await gw.commands.handle(payload)
        status: dict[str, Any] = next((r for r in reversed(gw.commands.results) if r.get("id") == cid), {})
        if status.get("status") != "queued":
            raise ActionFailed(f"command {status.get('status', 'not queued')}: {status.get('reason', '')}".strip())
        return f"queued {schema.KINDS[body.command][0]} as {cid}", device

    # ------------------------------------------------------------------ platform commands

    def wrap_commands(self, handler: CommandHandler) -> CommandHandler:
        """Platform commands pass here first: ``mode`` is applied by the gateway itself; alarm ``ack``s are
        recorded in the alarm life cycle and then queued for the node as before."""

        async def handle(payload: bytes) -> None:
            obj: Any = None
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                obj = json.loads(payload)
            if isinstance(obj, dict) and obj.get("command") == "mode":
                await self._mode_command(obj)
                return
            ack = self._ack_of(payload) if isinstance(obj, dict) and obj.get("command") == "ack" else None
            await handler(payload)
            if ack is not None:
                self.platform_ack(*ack)

        return handle

    def _ack_of(self, payload: bytes) -> tuple[bytes, int, int, str] | None:
        from lifeline.gateway.downlinks import CommandRejected, parse_command

        gw = self._gw
        if gw is None:
            return None
        try:
            cid, device, kind, fields = parse_command(payload, gw.devices)
        except CommandRejected:
            return None
        aid = fields.get(2)
        if kind != schema.C_ACK or not isinstance(aid, int):
            return None
        st = fields.get(3, 1)
        return device, aid, st if isinstance(st, int) else 1, cid

    def platform_ack(self, device: bytes, alarm_id: int, ack_state: int, command_id: str) -> None:
        now = self.clock.now_ms()
        known = self.tracker.get(device, alarm_id)
        if known is not None and known.ack_command == command_id:
            return  # a redelivered command
        self.tracker.platform_ack(device, alarm_id, ack_state, command_id, now)
        self._emit(self._react(self.engine.alarms_changed(now)))

    async def _mode_command(self, obj: Mapping[str, Any]) -> None:
        gw = self._gw
        cid = obj.get("id") if isinstance(obj.get("id"), str) else "?"
        fields = obj.get("fields")
        raw = fields.get("mode") if isinstance(fields, dict) else None
        mode = m.MODES[raw] if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(m.MODES) \
            else raw
        ok = isinstance(mode, str) and mode in m.MODES
        if ok:
            assert isinstance(mode, str)
            await self.set_mode(mode, "platform")
        if gw is not None and isinstance(cid, str):
            if ok:
                gw.commands.result(cid, "applied", reason=f"mode {mode}")
            else:
                gw.commands.result(cid, "rejected", reason="bad_mode")

    async def set_mode(self, mode: str, source: str) -> None:
        old = self.engine.mode
        if mode not in m.MODES:
            raise ValueError(f"unknown mode {mode!r}")
        now = self.clock.now_ms()
        firings = self.engine.set_mode(mode, now)
        if old != mode:
            _log.info("mode changed", old=old, new=mode, source=source)
            self._emit([audit.event(audit.EV_MODE, self.seq.take(), rec.GATEWAY_DEVICE, now, schema.P_EVENT, {
                audit.FM_OLD: m.MODES.index(old), audit.FM_NEW: m.MODES.index(mode),
                audit.FM_SOURCE: audit.SOURCES.index(source)})])
        self._emit(self._react(firings))
        if self._db is not None:
            await self._db.run(lambda c: state.set_meta(c, {"mode": mode}))

    # ------------------------------------------------------------------ reload

    def reload(self) -> str | None:
        """Re-read the rule files (SIGHUP). A bad file keeps the old rules. Returns the error or None."""
        now = self.clock.now_ms()
        try:
            rs = load_files(self.files)
        except RulesError as e:
            self.m_reloads.inc("refused")
            self.reloads["refused"] += 1
            self.last_reload_error = str(e)
            _log.error("rules reload refused; the old rules stay", error=scrub(str(e))[:300])
            self._emit([self._loaded_event(self.ruleset, now, str(e))])
            return str(e)
        old_outputs = self.outputs
        self.ruleset = rs
        new = Engine(rs, start_ms=self.engine.start_ms, attrs=self.attrs, alarms=self.tracker, mode=self.engine.mode)
        firings = new.adopt(self.engine, now)
        self.engine = new  # one assignment: the hot path sees the old or the new engine, never a mix
        self.reactor.set_ruleset(rs)
        if self._gw is not None:
            kept: dict[str, actions.Output] = {}
            for name, spec in rs.outputs.items():
                cur = old_outputs.get(name)
                if cur is not None and getattr(cur, "spec", None) == spec:
                    kept[name] = cur
                else:
                    kept[name] = actions.build(name, spec, self.clock)
            retired = {n: o for n, o in old_outputs.items() if kept.get(n) is not o}
            self.outputs = kept
            self._retired.update(retired)
            if retired:
                asyncio.get_running_loop().create_task(self._close_retired(list(retired.values())))
        self.m_reloads.inc("ok")
        self.reloads["ok"] += 1
        self.last_reload_error = ""
        _log.info("rules reloaded", rules=len(new.rts), files=len(self.files), digest=rs.digest[:8].hex())
        self._emit([self._loaded_event(rs, now, None), *self._react(firings)])
        return None

    async def _close_retired(self, outs: list[actions.Output]) -> None:
        if self.runner is not None:
            await self.runner.idle()
        for o in outs:
            with contextlib.suppress(Exception):
                await o.close()
            if self._retired.get(o.name) is o:
                del self._retired[o.name]

    def _loaded_event(self, rs: m.RuleSet, now: int, error: str | None) -> rec.GatewayEvent:
        fields: dict[int, int | bytes] = {audit.FL_DIGEST: rs.digest[:8], audit.FL_RULES: len(rs.rules),
                                          audit.FL_OK: int(error is None)}
        if error:
            fields[audit.FL_REASON] = audit.text(scrub(error), 200)
        return audit.event(audit.EV_RULES_LOADED, self.seq.take(), rec.GATEWAY_DEVICE, now, schema.P_EVENT, fields)

    # ------------------------------------------------------------------ life cycle (RulesRuntime)

    async def start(self, gw: Gateway) -> None:
        self._gw = gw
        cfg = gw.config
        self.clock = gw.clock
        self.gateway_id = cfg.gateway.id
        self.reactor.gateway_id = cfg.gateway.id
        self._init_metrics(gw.metrics)
        path = self.state_db or cfg.rules.state_db
        self._db = StateDB(path)
        snap = await self._db.run(lambda c: state.open_state(c, self.tracker))
        self.seq.next = self.seq.reserved = snap.audit_next
        hw = self.seq.reserve()
        await self._db.run(lambda c: state.set_meta(c, {"audit_reserved": str(hw)}))
        self._mode_request_id = snap.mode_request_id
        now = self.clock.now_ms()
        self.engine.reset_clock(now)
        self.engine.mode = snap.mode
        self.engine.seen.update(snap.last_seen)
        self._seen_saved_ms = now
        orphans = self.engine.restore(snap.active)
        for o in orphans:
            _log.warning("active firing of a rule that no longer exists forgotten", rule=o.rule)
        await self._load_attrs(force=True)
        self.runner = ActionRunner(self._execute, self._on_result, now_ms=self.clock.now_ms)
        for name, spec in self.ruleset.outputs.items():
            self.outputs[name] = actions.build(name, spec, self.clock)
        for out in self.outputs.values():
            await out.start()
        self._started = True
        self._emit([self._loaded_event(self.ruleset, now, None)])
        self._reassert(now)
        _log.info("rules started", rules=len(self.engine.rts), mode=self.engine.mode,
                  restored=len(snap.active) - len(orphans), alarms=len(self.tracker))

    def _reassert(self, now: int) -> None:
        """After a restart, drive held GPIO levels of restored active firings again (relays follow state)."""
        for s in self.engine.active():
            rt = self.engine.by_name.get(s.rule)
            if rt is None:
                continue
            for spec in rt.rule.actions:
                if isinstance(spec.body, m.GpioAction) and spec.body.pulse_ms == 0:
                    seq = self.seq.take()
                    f = Firing(rt.rule, s.key, s.device, now, True, s.value, s.alarm_id, "restored")
                    self._submit(ActionRequest(rt.rule.name, spec, seq, s.device, (rt.rule.name, spec.index, b"\xff"),
                                               self.reactor.values(f, seq), now, rt.rule.priority))

    async def _load_attrs(self, force: bool = False) -> None:
        gw = self._gw
        if gw is None:
            return
        gen = gw.devices.generation
        if not force and gen == self._attrs_generation:
            return
        self._attrs_generation = gen
        attrs = await asyncio.to_thread(attrs_from_registry, gw.config.gateway.registry_db)
        self.attrs.clear()
        self.attrs.update(attrs)
        self.engine.set_attrs(self.attrs)

    async def run(self, heartbeat: Heartbeat) -> None:
        next_tick = 0.0
        while True:
            heartbeat.beat()
            self._wake.clear()  # anything that happens from here on wakes the next round
            await self._forward_events()
            if self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), HEARTBEAT_S)
                continue
            mono = time.monotonic()
            if mono >= next_tick:
                try:
                    await self.tick()
                except Exception as e:  # a failing tick must not stop the gateway; it is logged and retried
                    _log.error("rules tick failed", error=type(e).__name__, detail=scrub(str(e))[:200])
                next_tick = mono + self.tick_ms / 1000
            try:
                await self._save()
            except Exception as e:  # the rules state file failing must not stop forwarding readings
                _log.error("rules state not saved; retrying", error=type(e).__name__, detail=scrub(str(e))[:200])
            heartbeat.beat()
            if self._events:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.01, min(HEARTBEAT_S, next_tick - time.monotonic())))

    async def _forward_events(self) -> None:
        gw = self._gw
        if gw is None or not self._events:
            return
        batch = list(self._events)
        self._events.clear()
        await gw.commit_q.put(batch)

    def _health(self, now: int) -> Health:
        gw = self._gw
        assert gw is not None
        connected = gw.publisher.is_connected()
        done = gw.stats.batches.total()
        inflight = gw.forwarder.inflight if hasattr(gw, "forwarder") else 0
        if inflight == 0 or done != self._stall_batches:
            self._stall_since = now
            self._stall_batches = done
        oldest = gw.oldest_pending_rx
        pct: float | None = None
        free: float | None = None
        if any(isinstance(rt.rule.trigger, m.Disk) for rt in self.engine.tickers):
            quota = gw.buffer.quota_bytes
            pct = 100.0 * gw.db.file_bytes() / quota if quota else None
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(gw.config.gateway.state_dir).free / (1 << 20)
        return Health(connected=connected, puback_stall_ms=now - self._stall_since,
                      backlog_age_ms=0 if oldest is None else max(0, now - oldest), disk_quota_pct=pct,
                      disk_free_mb=free)

    async def tick(self) -> None:
        """One pass over everything time changes (the run loop calls it every ``tick_ms``; tests call it
        after moving the injected clock)."""
        if not self._started:
            return
        now = self.clock.now_ms()
        await self._apply_mode_requests()
        if time.monotonic() - self._attrs_checked >= ATTRS_CHECK_S:
            self._attrs_checked = time.monotonic()
            await self._load_attrs()
        firings = self.engine.tick(now, self._health(now))
        self._emit(self._react(firings))
        await self._follow_alarms(now)
        gone = self.tracker.expire(now)
        if gone and self._db is not None:
            await self._db.run(lambda c: save_alarms(c, [], gone))

    async def _apply_mode_requests(self) -> None:
        db = self._db
        if db is None:
            return
        after = self._mode_request_id
        reqs = await db.run(lambda c: state.pending_mode_requests(c, after))
        if not reqs:
            return
        last_id, mode, source = reqs[-1]
        self._mode_request_id = last_id
        if mode in m.MODES:
            await self.set_mode(mode, source if source in audit.SOURCES else "local")
        await db.run(lambda c: state.set_meta(c, {"mode_request_id": str(last_id)}))

    async def _follow_alarms(self, now: int) -> None:
        """Alarm steps the platform side drives: forwarded (row PUBACKed and deleted), ack delivered."""
        gw = self._gw
        if gw is None:
            return
        waiting = self.tracker.awaiting_forward()
        published = gw.stats.batches.total()
        if waiting and published != self._forward_checked:  # nothing PUBACKed since the last look: skip
            self._forward_checked = published
            await gw.flush()  # everything evaluated before this tick is committed: a missing row was sent
            ids = list(waiting)
            present = await gw.db.run(lambda c: {int(r[0]) for r in c.execute(
                f"SELECT id FROM readings WHERE id IN ({','.join('?' * len(ids))})", ids)})
            for rid, a in waiting.items():
                if rid not in present:
                    self.tracker.forwarded(a, now)
        delivering = self.tracker.awaiting_delivery()
        if delivering:
            cids = list(delivering)
            rows = await gw.db.run(lambda c: c.execute(
                f"SELECT id, state, down_fcnt FROM commands WHERE id IN ({','.join('?' * len(cids))})",
                cids).fetchall())
            for cid, st, down in rows:
                if st == "sent":
                    self.tracker.ack_delivered(delivering[cid], down, now)
        self._emit(self._take_staged())

    async def _save(self, final: bool = False) -> None:
        db = self._db
        if db is None:
            return
        if self.seq.needs_reserve():
            hw = self.seq.reserve()
            await db.run(lambda c: state.set_meta(c, {"audit_reserved": str(hw)}))
        rows = self.tracker.take_dirty()
        if rows:
            await db.run(lambda c: save_alarms(c, rows))
        if self.engine.active_changed:
            self.engine.active_changed = False
            active = self.engine.active()
            await db.run(lambda c: state.save_active(c, active))
        now = self.clock.now_ms()
        if self.engine.seen and (final or now - self._seen_saved_ms >= SEEN_SAVE_MS):
            self._seen_saved_ms = now
            seen = dict(self.engine.seen)
            await db.run(lambda c: state.save_seen(c, seen))

    async def wait_idle(self) -> None:
        """Tests: until every action finished and every audit record is in the commit queue."""
        if self.runner is not None:
            await self.runner.idle()
        self._emit(self._take_staged())
        await self._forward_events()
        await self._save()

    async def stop(self) -> None:
        if not self._started or self._stopping:
            return
        self._stopping = True
        if self.runner is not None:
            await self.runner.close(STOP_ACTIONS_S)
        self._emit(self._take_staged())
        await self._forward_events()
        with contextlib.suppress(Exception):
            await self._save(final=True)
        for out in [*self.outputs.values(), *self._retired.values()]:
            with contextlib.suppress(Exception):
                await out.close()
        if self._db is not None:
            self._db.close()
            self._db = None
        _log.info("rules stopped")

    async def abandon(self) -> None:
        """Tests (kill -9): drop everything in memory, close the files without saving."""
        self._stopping = True
        if self.runner is not None:
            self.runner.closed = True
            for t in list(self.runner._tasks):
                t.cancel()
        for out in self.outputs.values():
            with contextlib.suppress(Exception):
                await out.close()
        if self._db is not None:
            self._db.close()
            self._db = None
