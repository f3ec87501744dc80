"""The rules hook: where the rules engine sees every accepted reading.

The pipeline calls :meth:`RulesHook.evaluate` once per accepted reading (not for TEST frames), after
verification and dedupe and before the buffer. A rule may raise the reading's priority (never lower it)
and emit gateway event records (record type 1, codes from ``records.EV_RULES_FIRST``), which are committed
in the same transaction as the reading. A rule that raises an exception is counted and ignored: a buggy
rule never costs a reading. Keep ``evaluate`` fast and non-blocking: it runs on the ingest hot path.

A hook that also does things over time (ticks, actions, platform commands, reloads) implements
:class:`RulesRuntime`; the daemon binds it at start, runs it as a stage, hands it the platform command
stream, reloads it on SIGHUP and stops it before the final flush. The rules engine
(``gateway/rules_engine/``, docs/rules.md) is that runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from lifeline.gateway.records import GatewayEvent, Reading

if TYPE_CHECKING:
    from lifeline.gateway.health import Heartbeat
    from lifeline.gateway.uplink_api import CommandHandler


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    priority: int | None = None  # schema.P_ALARM / P_EVENT / P_PERIODIC; applied only if more urgent
    events: tuple[GatewayEvent, ...] = ()


class RulesHook(Protocol):
    def evaluate(self, reading: Reading) -> RuleOutcome | None: ...


@runtime_checkable
class RulesRuntime(Protocol):
    def evaluate(self, reading: Reading) -> RuleOutcome | None: ...

    async def start(self, gateway: Any) -> None:
        """Bind to the started gateway's parts (before adapters start); load state, open outputs."""

    async def run(self, heartbeat: Heartbeat) -> None:
        """The stage loop (never returns; cancelled at shutdown)."""

    async def stop(self) -> None:
        """Finish or drop running actions, hand the last audit records to the commit queue, save state."""

    def reload(self) -> str | None:
        """Re-read the rules (SIGHUP); on error keep the old ones and return the reason."""

    def wrap_commands(self, handler: CommandHandler) -> CommandHandler:
        """Platform commands pass through here before the command queue."""


class NoRules:
    """The default hook: accepts everything as it is."""

    def evaluate(self, reading: Reading) -> RuleOutcome | None:
        return None
