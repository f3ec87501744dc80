"""Typed immutable records passed between the pipeline stages (docs/architecture.md, "Records").

    RawFrame (ingress.base) -> Reading | ReceptionUpdate | GatewayEvent  (ingest: verify, dedupe, rules)
                            -> DownlinkPlan                               (commit: after the fsync)
    Rejection: a frame that was not accepted, with its reason code (counted, never raised).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from lifeline.gateway.ingress.base import Reception

# Record flags in a batch record (batch_api.md key 9).
RF_BACKFILLED = 1
RF_QUEUED = 2
RF_TEST = 4

# Record types (batch_api.md key 10).
RT_READING = 0
RT_EVENT = 1

# Gateway event codes (record type 1, carried in the record's kind). 64..255 belong to the rules engine.
EV_RECEPTIONS = 1  # late receptions of a reading already in a signed batch; fcnt = the reading's, fields {}
EV_BUFFER_DROP = 2  # readings dropped by the buffer policy; fields EVF_*; fcnt = EV_FCNT_BASE + buffer row id
# Gateway events that belong to no frame number their fcnt above every 32-bit node counter and above the
# rules audit range (1 << 32 + seq), with the buffer row id, which is unique per gateway and never reused:
# the platform keeps records once per (gateway, device, fcnt), so two drop reports must not share one.
EV_FCNT_BASE = 2 << 32
EV_RULES_FIRST = 64

EVF_PRIORITY = 1  # priority class of the dropped readings
EVF_REASON = 2  # DROP_TTL or DROP_QUOTA
EVF_COUNT = 3
EVF_OLDEST_RX_MS = 4

DROP_TTL = 0
DROP_QUOTA = 1
DROP_REASONS = ("ttl", "quota")

GATEWAY_DEVICE = bytes(8)  # device id of gateway-wide events

FieldMap = Mapping[int, "int | bytes"]


class Reading(NamedTuple):
    """A verified, deduplicated, accepted reading on its way to the buffer.

    A NamedTuple rather than a frozen dataclass like the other records: one is made per accepted frame,
    and a frozen dataclass's ``__init__`` (``object.__setattr__`` per field) costs three times as much
    (3.0 vs 1.0 us on the CI machine). Immutable all the same; a changed copy is ``r._replace(...)``."""

    id: int  # buffer row id, allocated at acceptance (acceptance order)
    device_id: bytes
    fcnt: int
    node_time: int  # Lifeline-epoch seconds as sent
    kind: int
    fields: FieldMap
    data_class: int
    priority: int  # schema.P_ALARM / P_EVENT / P_PERIODIC
    flags: int  # RF_* known at acceptance (queued at node, test)
    frame_flags: int  # header flags (ACK_REQ ...)
    receptions: tuple[Reception, ...]
    key_epoch: int = 0  # registry key generation the counter belongs to

    @property
    def rx_ms(self) -> int:
        return self.receptions[0].rx_ms


@dataclass(frozen=True, slots=True)
class ReceptionUpdate:
    """Another copy of an accepted reading, heard within the dedupe window."""

    reading_id: int
    device_id: bytes
    fcnt: int
    reception: Reception
    priority: int = 2  # the reading's priority (a late-reception event travels with it)


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    """A gateway-made record (record type 1): rules output, buffer drops, late receptions."""

    code: int
    device_id: bytes
    at_ms: int
    priority: int
    fields: FieldMap = field(default_factory=dict)
    fcnt: int = 0
    receptions: tuple[Reception, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejection:
    """A frame that was not accepted. ``reason`` is a frame.FrameError code or a pipeline code."""

    reason: str
    radio: str
    adapter: str
    device_id: bytes | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class QueuedCommand:
    """A platform command taken from the durable queue for one receive window."""

    id: str
    kind: int
    fields: FieldMap


@dataclass(frozen=True, slots=True)
class DownlinkPlan:
    """A downlink owed to a node after its reading was committed (counter already persisted)."""

    reading: Reading
    down_fcnt: int
    command: QueuedCommand | None  # None: the gateway's own ACK


# Reasons the pipeline adds to frame.FrameError's codes.
R_UNKNOWN_DEVICE = "unknown_device"
R_REVOKED_DEVICE = "revoked_device"
R_REPLAY = "replay"
R_COUNTER_REUSE = "counter_reuse"  # same counter, different MIC-valid content
R_TOO_MANY_RECEPTIONS = "too_many_receptions"
R_INTERNAL = "internal_error"
