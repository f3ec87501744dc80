"""Audit records: what the gateway did on its own, as gateway events (record type 1) for the platform.

Every rule firing and clearing, every action result, every mode change, rule (re)load and alarm life-cycle
step becomes a :class:`~lifeline.gateway.records.GatewayEvent`, committed to the buffer and forwarded in
signed batches like readings (docs/rules.md, "Audit records"). The record's ``fcnt`` is
``AUDIT_FCNT_BASE + seq`` with ``seq`` a per-gateway audit sequence that is never reused (it is reserved
on disk in blocks), so a platform stores each audit record once by (gateway, device, fcnt) and the
values never collide with a node's 32-bit frame counters.
"""

from __future__ import annotations

from collections.abc import Mapping

from lifeline.gateway import records as rec
from lifeline.protocols import schema

AUDIT_FCNT_BASE = 1 << 32

# Event codes (record kind of a record-type-1 record); 64..255 belong to the rules engine.
EV_RULE_FIRED = rec.EV_RULES_FIRST  # 64
EV_RULE_CLEARED = 65
EV_ACTION = 66
EV_MODE = 67
EV_RULES_LOADED = 68
EV_ALARM = 69
EVENT_NAMES: Mapping[int, str] = {EV_RULE_FIRED: "rule_fired", EV_RULE_CLEARED: "rule_cleared",
                                  EV_ACTION: "action", EV_MODE: "mode", EV_RULES_LOADED: "rules_loaded",
                                  EV_ALARM: "alarm"}

# Field keys. Rule fired / cleared:
F_RULE = 1  # bytes: rule name (UTF-8)
F_TRIGGER = 2  # model.TRIGGER_CODES
F_VALUE = 3  # the trigger's value at wire scale (threshold field, alarm id, silent seconds, ...)
F_MODE = 4  # MODES index
F_REASON = 5  # bytes: why it cleared (hysteresis, returned, acked, uplink_restored, mode, ...)
F_ALARM_ID = 6
F_UPLINK = 7  # 1 while the uplink is down (failover)
F_MUTED = 8  # 1: fired inside the rule's cooldown, actions not run
# Action result:
FA_RULE = 1
FA_INDEX = 2  # action position (clear actions from 100)
FA_TYPE = 3  # model.ACTION_CODES
FA_RESULT = 4  # RESULTS index
FA_ATTEMPTS = 5
FA_DETAIL = 6  # bytes: "+CMGS: 12", "HTTP 200", the error
FA_LATENCY_MS = 7  # firing -> result
FA_TARGET = 8  # bytes: topic, masked phone numbers, URL path, line, device
FA_FIRING = 9  # audit seq of the firing this action belongs to
# Mode:
FM_OLD = 1
FM_NEW = 2
FM_SOURCE = 3  # SOURCES index
# Rules loaded:
FL_DIGEST = 1  # bytes: first 8 bytes of SHA-256 over the rule files
FL_RULES = 2
FL_OK = 3  # 1 loaded, 0 refused (the old rules stay)
FL_REASON = 4  # bytes: the error (file:line: key: reason)
# Alarm life cycle:
FAL_ID = 1
FAL_CAUSE = 2
FAL_STEP = 3  # alarms.STEPS index
FAL_SINCE_MS = 4  # ms since the alarm was raised
FAL_ACK_STATE = 5
FAL_DOWN_FCNT = 6

RESULTS = ("done", "failed", "rate_limited", "dropped")
SOURCES = ("local", "platform", "startup")
MAX_TEXT = 64


def text(value: str, limit: int = MAX_TEXT) -> bytes:
    b = value.encode("utf-8", "replace")
    if len(b) <= limit:
        return b
    return b[:limit].decode("utf-8", "ignore").encode()


def event(code: int, seq: int, device: bytes, at_ms: int, priority: int,
          fields: Mapping[int, int | bytes]) -> rec.GatewayEvent:
    p = priority if priority in (schema.P_ALARM, schema.P_EVENT, schema.P_PERIODIC) else schema.P_EVENT
    return rec.GatewayEvent(code, device, at_ms, p, dict(fields), fcnt=AUDIT_FCNT_BASE + seq)


class AuditSeq:
    """The audit sequence: in memory on the hot path; ``reserve`` tells the owner what to persist."""

    BLOCK = 65_536

    def __init__(self, start: int = 0) -> None:
        self.next = start
        self.reserved = start  # values below this are on disk as used-or-reserved

    def take(self) -> int:
        n = self.next
        self.next += 1
        return n

    def needs_reserve(self) -> bool:
        return self.next + self.BLOCK // 4 >= self.reserved

    def reserve(self) -> int:
        """The new high-water mark to store (call, persist, then it is safe to use up to it)."""
        self.reserved = max(self.reserved, self.next) + self.BLOCK
        return self.reserved
