"""The rules hook: where a later rules engine sees every accepted reading.

The pipeline calls :meth:`RulesHook.evaluate` once per accepted reading (not for TEST frames), after
verification and dedupe and before the buffer. A rule may raise the reading's priority (never lower it)
and emit gateway event records (record type 1, codes from ``records.EV_RULES_FIRST``), which are committed
in the same transaction as the reading. A rule that raises an exception is counted and ignored: a buggy
rule never costs a reading. Keep ``evaluate`` fast and non-blocking: it runs on the ingest hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lifeline.gateway.records import GatewayEvent, Reading


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    priority: int | None = None  # schema.P_ALARM / P_EVENT / P_PERIODIC; applied only if more urgent
    events: tuple[GatewayEvent, ...] = ()


class RulesHook(Protocol):
    def evaluate(self, reading: Reading) -> RuleOutcome | None: ...


class NoRules:
    """The default hook: accepts everything as it is."""

    def evaluate(self, reading: Reading) -> RuleOutcome | None:
        return None
