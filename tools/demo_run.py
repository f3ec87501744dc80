"""The demo's run: build the district, start the stack, play the story phase by phase while a poller
watches the platform and the gateway, let everything drain, and count.

The district's virtual clock is paced against the event loop's clock (``story.speed`` virtual seconds
per real second); phase changes that touch the real world (stopping and starting the platform broker)
happen between fleet steps, at the virtual time the story gives them.

**Lost** is counted honestly: *accepted* is the gateway's own count of readings it verified and
committed (``readings_accepted_total`` from its metrics endpoint, scraped once everything settled),
*delivered* the number of distinct readings in the platform sink's database; lost = accepted −
delivered. The district's ground truth (frames heard by a gateway radio and valid for the registry)
is reported beside it as a cross-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeline.tools import demo_story
from lifeline.tools.demo_stack import DemoStack, sim_district
from lifeline.tools.demo_watch import Snapshot, Watch

POLL_S = 0.25
SCRAPE_S = 0.5


@dataclass(frozen=True, slots=True)
class Options:
    duration_s: float
    nodes: int
    seed: int
    workdir: Path
    ble: bool = True
    settle_timeout_s: float = 60.0


class Interrupted(Exception):
    """SIGINT / SIGTERM during the run."""


class DemoFailed(Exception):
    """The gateway daemon died during the run (exit 1: that is a failed check, not the environment)."""


class Demo:
    def __init__(self, opts: Options, *, say: Callable[[str], None],
                 show: Callable[[Snapshot, str], None] | None = None) -> None:
        self.opts = opts
        self.story = demo_story.plan(opts.duration_s)
        self.say = say
        self.show = show
        opts.workdir.mkdir(parents=True, exist_ok=True)
        path = opts.workdir / "district.toml"
        path.write_text(demo_story.district_toml(opts.nodes, opts.seed, self.story), encoding="utf-8")
        self.scenario, self.fleet, self.records = sim_district().build(path)
        self.watch = Watch(time.time(), self.fleet, opts.workdir / "platform.db")
        self.stack = DemoStack(opts.workdir, self.fleet, self.records, self.story, say=say,
                               site=self.scenario.gateway_site, ble=opts.ble)
        self.phase = "starting"
        self.platform_up = True
        self.restored_at: float | None = None
        self.drained_at: float | None = None
        self.lag_s = 0.0
        self._ack_queue: list[tuple[bytes, int]] = []
        self._acks: set[asyncio.Task[None]] = set()
        self._sms_seen = 0
        self._last_metrics: dict[str, list[tuple[dict[str, str], float]]] | None = None
        self.captures: list[tuple[str, Snapshot]] = []
        self.gateway_exit: int | None = None
        self.failure: DemoFailed | None = None

    @property
    def meta(self) -> dict[str, Any]:
        import datetime

        clock = datetime.datetime.fromtimestamp(self.fleet.clock.now() / 1000, datetime.UTC).strftime("%H:%M")
        return {"nodes": len(self.fleet.nodes), "clock": f"district time {clock}",
                "gateway_pid": self.stack.gateway.pid if self.stack.gateway else "?"}

    # ------------------------------------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> dict[str, Any]:
        """The whole demo; raises Interrupted when ``stop`` is set first. Always stops the stack."""
        try:
            await self._race(self.stack.start(on_lan=self.watch.lan_message), stop)
            self.watch.t0 = time.time()
            self.fleet.on_frame.append(self.watch.on_frame)
            self.fleet.start()
            poller = asyncio.create_task(self._poll())
            try:
                await self._race(self._play(), stop)
                self.phase = "drain"
                self.watch.event("the story is over: the district stops; waiting for everything to arrive")
                settled = await self._race(self._settle(), stop)
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            summary = await self._summary(settled)
            self.phase = "summary"
            return summary
        finally:
            for t in list(self._acks):
                t.cancel()
            self.watch.close()
            code = await self.stack.stop()
            self.gateway_exit = code

    async def _race(self, coro: Any, stop: asyncio.Event) -> Any:
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise Interrupted()
        return task.result()

    # ------------------------------------------------------------------------------------------- story

    async def _advance(self, until_s: float, t0: float) -> None:
        """Step the district to real time ``until_s`` since ``t0`` (loop clock), paced."""
        loop = asyncio.get_running_loop()
        fleet = self.fleet
        speed = self.story.speed
        end_ms = until_s * speed * 1000.0
        last_yield = loop.time()
        while True:
            if self.failure is not None:
                raise self.failure
            nxt = fleet.next_time_ms()
            if nxt is None or nxt > end_ms:
                break
            due = t0 + nxt / 1000.0 / speed
            now = loop.time()
            if due - now > 0.002:
                await asyncio.sleep(due - now)
                last_yield = loop.time()
            else:
                self.lag_s = max(0.0, now - due)
                if now - last_yield > 0.01:  # behind: still let the radios, the poller and signals run
                    await asyncio.sleep(0)
                    last_yield = loop.time()
            fleet.step()
        while (rest := t0 + until_s - loop.time()) > 0:
            if self.failure is not None:
                raise self.failure
            await asyncio.sleep(min(rest, POLL_S))
        fleet.run_until(end_ms)

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.watch.t0 = time.time()
        for p in self.story.phases:
            self.phase = p.name
            if p.name == "normal":
                self.watch.event(f"{len(self.fleet.nodes)} nodes start reporting: a normal day")
            elif p.name == "fire":
                self.watch.event(f"flat 3B of 7 Harbour Road ({demo_story.FIRE_FLAT}) catches fire at "
                                 f"{self.story.fire_at_s:.0f} s")
            elif p.name == "outage":
                self.stack.stop_platform()
                self.platform_up = False
                self.watch.event(f"PLATFORM OUTAGE: the platform broker (port {self.stack.platform.port}) is stopped")
            elif p.name == "restored":
                pid = self.stack.start_platform()
                self.platform_up = True
                self.restored_at = self.watch.now_s()
                self.watch.event(f"platform broker back on port {self.stack.platform.port} (pid {pid}): the "
                                 "gateway drains its backlog, alarms first")
            await self._advance(p.end_s, t0)
            self.captures.append((p.name, self._snapshot()))

    # ------------------------------------------------------------------------------------------- polling

    def _snapshot(self) -> Snapshot:
        sink = self.stack.sink
        return self.watch.snapshot(dict(sink.counters) if sink is not None else None)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        next_scrape = 0.0
        while True:
            gw = self.stack.gateway
            if gw is not None and not gw.running() and self.failure is None:
                self.failure = DemoFailed(f"the gateway exited with status {gw.exit_code()} during the run:\n"
                                          f"{gw.log_tail()}")
                self.watch.event(f"THE GATEWAY EXITED (status {gw.exit_code()})")
            for device, aid in self.watch.poll_sink():
                self._ack_queue.append((device, aid))
            if self._ack_queue and self.platform_up:
                batch, self._ack_queue = self._ack_queue, []
                for device, aid in batch:
                    task = asyncio.create_task(self._ack(device, aid))
                    self._acks.add(task)
                    task.add_done_callback(self._acks.discard)
            if self.stack.lan is not None:
                self.stack.lan.pump()
            for number, text, at in self.stack.sms_since(self._sms_seen):
                self._sms_seen += 1
                self.watch.sms_sent(number, text, at)
            if loop.time() >= next_scrape:
                next_scrape = loop.time() + SCRAPE_S
                await self._scrape()
            if self.show is not None:
                self.show(self._snapshot(), self.phase)
            await asyncio.sleep(POLL_S)

    async def _scrape(self) -> None:
        gw = self.stack.gateway
        if gw is None:
            return
        with contextlib.suppress(OSError, ValueError):
            parsed = await gw.scrape()
            self._last_metrics = parsed
            self.watch.gateway_metrics(parsed)
        with contextlib.suppress(OSError, ValueError):
            self.watch.gateway_status(await gw.status())
        g = self.watch.gateway
        if (g is not None and self.restored_at is not None and self.drained_at is None and g["uplink_connected"]
                and sum(g["backlog"].values()) == 0 and g["outbox_batches"] == 0):
            self.drained_at = self.watch.now_s()
            self.watch.event(f"backlog drained {self.drained_at - self.restored_at:.1f} s after the platform "
                             "came back")

    async def _ack(self, device: bytes, alarm_id: int) -> None:
        """The platform operator acknowledges an alarm (``lifeline/v1/<gw>/down``, command ack)."""
        sink = self.stack.sink
        if sink is None:
            return
        try:
            await asyncio.to_thread(sink.ack_alarm, demo_story.GATEWAY_ID, device, alarm_id, 5.0)
        except Exception as e:  # the broker may just have gone: retry
            self.watch.event(f"platform: ack of alarm {alarm_id} not sent ({type(e).__name__}); will retry")
            self._ack_queue.append((device, alarm_id))
            return
        self.watch.platform_acked(device, alarm_id)

    # ------------------------------------------------------------------------------------------- the end

    def _accepted(self) -> int:
        g = self.watch.gateway
        return int(sum((g or {}).get("accepted", {}).values()))

    async def _settle(self) -> bool:
        """Until the gateway has nothing left (ingest queue, backlog, outbox) and the platform holds at
        least every reading the gateway accepted, both steady for a second. False on the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.opts.settle_timeout_s
        steady_since: float | None = None
        last: tuple[int, int] | None = None
        while loop.time() < deadline:
            gw = self.stack.gateway
            if gw is not None and not gw.running():
                raise DemoFailed(f"the gateway exited with status {gw.exit_code()}:\n{gw.log_tail()}")
            await self._scrape()
            self.watch.poll_sink()
            g = self.watch.gateway
            m = self._last_metrics or {}
            ingest = sum(v for _, v in m.get("lifeline_gateway_ingest_queue", []))
            state = (self._accepted(), self.watch.snapshot().delivered_total)
            idle = (g is not None and g["uplink_connected"] and sum(g["backlog"].values()) == 0
                    and g["outbox_batches"] == 0 and g["inflight_batches"] == 0 and ingest == 0
                    and state[1] >= state[0] and not self._ack_queue)
            if idle and state == last:
                steady_since = steady_since or loop.time()
                if loop.time() - steady_since >= 1.0:
                    return True
            else:
                steady_since = None
            last = state
            if self.show is not None:
                self.show(self._snapshot(), self.phase)
            await asyncio.sleep(POLL_S)
        return False

    async def _summary(self, settled: bool) -> dict[str, Any]:
        await self._scrape()
        self.watch.poll_sink()
        snap = self._snapshot()
        g = snap.gateway or {}
        accepted = self._accepted()
        delivered = snap.delivered_total
        sink = self.stack.sink
        chains = sink.chain_report() if sink is not None else []
        rules = g.get("rules") or {}
        lost = max(0, accepted - delivered)
        heard_missing = self.watch.heard_not_delivered()
        counters = snap.sink_counters
        summary: dict[str, Any] = {
            "ok": settled and lost == 0 and all(c.intact for c in chains),
            "settled": settled,
            "lost": lost,
            "sent": snap.frames_sent,
            "heard": snap.frames_heard,
            "accepted": accepted,
            "accepted_by_radio": {k: int(v) for k, v in sorted(g.get("accepted", {}).items())},
            "delivered": delivered,
            "duplicates_removed": {
                "gateway_receptions": sum(int(r["duplicates"]) for r in (g.get("radios") or {}).values()),
                "platform_records": int(counters.get("records_duplicate", 0)),
                "platform_batches": int(counters.get("batches_redelivered", 0)),
            },
            "rejected": {k: int(v) for k, v in sorted((g.get("rejects") or {}).items()) if v},
            "heard_not_delivered": len(heard_missing),
            "latency_ms": {"live": snap.live.as_dict(), "alarms": snap.alarm_latency.as_dict(),
                           "backlog": snap.backlog_latency.as_dict()},
            "backlog": {"max_depth": snap.max_backlog, "max_oldest_s": snap.max_oldest_s,
                        "delivered": snap.backlog_delivered, "alarms_first": self.watch.alarms_first,
                        "drain_s": None if self.drained_at is None or self.restored_at is None
                        else round(self.drained_at - self.restored_at, 1)},
            "alarms": [{"node": a.node, "where": a.where, "alarm_id": a.alarm_id, "cause": a.cause,
                        "raised_s": a.raised_s, "at_platform_s": a.stored_s, "lane": a.lane,
                        "platform_ack_s": a.platform_ack_s, "node_ack_s": a.steps.get("ack_delivered"),
                        "cleared_s": a.cleared_s, "escalated": "escalated" in a.steps or a.escalated_live,
                        "gateway_steps": dict(a.steps)} for a in snap.alarms],
            "rules": {"fired": {k: int(v) for k, v in (rules.get("fired") or {}).items()},
                      "actions": {k: int(v) for k, v in (rules.get("actions") or {}).items()}},
            "sms": len(snap.sms),
            "lan_messages": len(snap.lan),
            "audit_records": snap.audit_records,
            "chain_intact": all(c.intact for c in chains),
            "batches": int(counters.get("batches_stored", 0)),
            "nodes": len(self.fleet.nodes),
            "by_kind_radio": [{"kind": k, "radio": r, "sent": n, "heard": snap.heard.get((k, r), 0),
                               "delivered": snap.delivered.get((k, r), 0)} for (k, r), n in sorted(snap.sent.items())],
            "duration_s": self.story.duration_s,
            "speed": round(self.story.speed, 2),
            "district_lag_s": round(self.lag_s, 2),
            "workdir": str(self.opts.workdir),
        }
        self.captures.append(("summary", snap))
        return summary
