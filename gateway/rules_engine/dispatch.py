"""From a firing to executed actions: de-duplication, cooldown and rate limit (:class:`Dispatcher`, pure
and synchronous, so a dry run makes the same decisions), then bounded retries with backoff
(:class:`ActionRunner`, asyncio). Every request ends with exactly one :class:`ActionResult`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from lifeline.gateway.actions import ActionFailed
from lifeline.gateway.log import Log, scrub
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.tasks import cancel_and_wait

_log = Log("rules")
RUN = "run"
COOLDOWN = "cooldown"
DUPLICATE = "duplicate"
RATE_LIMITED = "rate_limited"
MAX_BACKOFF_MS = 30_000


@dataclass(frozen=True, slots=True)
class ActionRequest:
    rule: str
    spec: m.ActionSpec
    firing_seq: int  # audit seq of the firing record
    device: bytes
    dedupe_key: tuple[str, int, bytes]
    values: Mapping[str, str]  # template variables
    at_ms: int  # firing time (injected clock)
    priority: int
    fired: bool = True
    progress: set[str] = field(default_factory=set)  # targets already done (SMS recipients) across retries


@dataclass(frozen=True, slots=True)
class ActionResult:
    ok: bool
    result: str  # audit.RESULTS: done | failed | rate_limited | dropped
    attempts: int
    detail: str
    target: str
    latency_ms: int


class _Bucket:
    __slots__ = ("count", "period", "start", "used")

    def __init__(self, count: int, period: int, now: int) -> None:
        self.count = count
        self.period = period
        self.start = now
        self.used = 0

    def take(self, now: int) -> bool:
        if now - self.start >= self.period:
            self.start = now - (now - self.start) % self.period
            self.used = 0
        if self.used >= self.count:
            return False
        self.used += 1
        return True


class Dispatcher:
    """Decides whether an action runs: not while the same one (rule, action, dedupe key) is in flight,
    not within its cooldown since it last ran, not beyond its rate limit (a fixed window per action)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int, bytes], int] = {}
        self._inflight: set[tuple[str, int, bytes]] = set()
        self._buckets: dict[tuple[str, int], _Bucket] = {}
        self._limited_reported: dict[tuple[str, int], int] = {}

    def decide(self, rule: str, spec: m.ActionSpec, key: bytes, now: int) -> str:
        k = (rule, spec.index, key)
        if k in self._inflight:
            return DUPLICATE
        last = self._last.get(k)
        if spec.cooldown_ms and last is not None and now - last < spec.cooldown_ms:
            return COOLDOWN
        if spec.rate is not None:
            b = self._buckets.get((rule, spec.index))
            if b is None:
                b = self._buckets[(rule, spec.index)] = _Bucket(spec.rate[0], spec.rate[1], now)
            if not b.take(now):
                return RATE_LIMITED
        self._last[k] = now
        self._inflight.add(k)
        return RUN

    def report_limit(self, rule: str, spec: m.ActionSpec, now: int) -> bool:
        """True for the first rate-limited request of a window (that one is audited, the rest counted)."""
        b = self._buckets.get((rule, spec.index))
        window = b.start if b is not None else now
        if self._limited_reported.get((rule, spec.index)) == window:
            return False
        self._limited_reported[(rule, spec.index)] = window
        return True

    def done(self, key: tuple[str, int, bytes]) -> None:
        self._inflight.discard(key)

    def forget_rule(self, names: set[str]) -> None:
        """After a reload: drop the memory of rules that no longer exist."""
        for d in (self._last,):
            for k in [k for k in d if k[0] not in names]:
                del d[k]
        for bk in [k for k in self._buckets if k[0] not in names]:
            del self._buckets[bk]


Execute = Callable[[ActionRequest], Awaitable[tuple[str, str]]]  # -> (detail, target)
OnResult = Callable[[ActionRequest, ActionResult], None]


class ActionRunner:
    """Runs requests concurrently (bounded), each with a per-attempt timeout and bounded retries with
    exponential backoff; reports one result per request."""

    def __init__(self, execute: Execute, on_result: OnResult, *, now_ms: Callable[[], int],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, concurrency: int = 16,
                 queue_max: int = 1000) -> None:
        self._execute = execute
        self._on_result = on_result
        self._now_ms = now_ms
        self._sleep = sleep
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: dict[asyncio.Task[None], ActionRequest] = {}
        self.queue_max = queue_max
        self.retries = 0
        self.closed = False

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def submit(self, req: ActionRequest) -> None:
        if self.closed or len(self._tasks) >= self.queue_max:
            self._finish(req, ActionResult(False, "dropped", 0, "queue full" if not self.closed else "stopping",
                                           "", 0))
            return
        task = asyncio.get_running_loop().create_task(self._run(req), name=f"rules-action-{req.rule}")
        self._tasks[task] = req
        task.add_done_callback(self._tasks.pop)

    def _finish(self, req: ActionRequest, res: ActionResult) -> None:
        try:
            self._on_result(req, res)
        except Exception as e:  # reporting must never kill the runner
            _log.error("action result handler failed", error=type(e).__name__)

    async def _run(self, req: ActionRequest) -> None:
        spec = req.spec
        attempts = 0
        delay = max(1, spec.backoff_ms)
        detail = ""
        target = ""
        try:
            async with self._sem:
                while True:
                    attempts += 1
                    try:
                        detail, target = await asyncio.wait_for(self._execute(req), spec.timeout_ms / 1000)
                        ok = True
                    except TimeoutError:
                        ok, detail = False, f"timeout after {spec.timeout_ms} ms"
                    except ActionFailed as e:
                        ok, detail = False, e.reason
                    except Exception as e:
                        ok, detail = False, f"internal error: {type(e).__name__}"
                        _log.error("action raised", rule=req.rule, type=spec.type, error=type(e).__name__,
                                   detail=scrub(str(e))[:120])
                    if ok or attempts > spec.retries:
                        break
                    self.retries += 1
                    _log.warning("action failed; retrying", rule=req.rule, type=spec.type, attempt=attempts,
                                 reason=scrub(detail)[:120], backoff_ms=delay)
                    await self._sleep(delay / 1000)
                    delay = min(MAX_BACKOFF_MS, delay * 2)
        except asyncio.CancelledError:
            self._finish(req, ActionResult(False, "dropped", attempts, "cancelled at shutdown", target,
                                           max(0, self._now_ms() - req.at_ms)))
            raise
        latency = max(0, self._now_ms() - req.at_ms)
        self._finish(req, ActionResult(ok, "done" if ok else "failed", attempts, detail, target, latency))

    async def idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, timeout_s: float) -> None:
        """Stop taking requests; give running ones ``timeout_s``, then cancel them (reported as dropped)."""
        self.closed = True
        tasks = list(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        await cancel_and_wait(pending)
