"""The Source interface of the platform sink: where verified-to-be batches come from.

A source hands the sink core one :class:`Delivery` at a time (MQTT topic + payload bytes) and learns from
the handler's answer whether to acknowledge it: ``True`` = the store committed it (or it was rejected for
good and the reject is recorded), so the source may acknowledge it to its engine; ``False`` = nothing was
committed (store unavailable), so the source must let the engine deliver it again (no ack / nak).

Implementations: :mod:`.nats_source` (NATS JetStream durable pull consumer); the MQTT source is the paho
code of :mod:`lifeline.tools.platform_sink` (shared subscription, manual PUBACK).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message from a source: the gateway's MQTT topic (``lifeline/v1/<gw>/up/<lane>``) and payload."""

    topic: str
    payload: bytes
    redelivered: bool = False  # the engine says it delivered this message before (to this or another sink)
    deliveries: int = 1  # how many times the engine has delivered it (1 = first time)


Handler = Callable[[Delivery], bool]
OtherHandler = Callable[[str, bytes], None]  # (topic, payload) of presence / command results


class Source(Protocol):
    """A running feed of deliveries; the handler runs on one thread at a time, in delivery order."""

    @property
    def url(self) -> str:
        """Where it reads from (no secrets)."""
        ...

    def start(self, handler: Handler, timeout_s: float = 30.0, on_other: OtherHandler | None = None) -> None:
        """Connect, set up what the engine needs, and begin delivering. Raises SourceError.

        ``on_other`` gets gateway presence (``lifeline/v1/<gw>/state``) and command results
        (``lifeline/v1/<gw>/down/result``) as they arrive (no acknowledgement)."""
        ...

    def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> None:
        """Send a platform command to a gateway (MQTT topic); returns once the engine has it stored."""
        ...

    def stop(self) -> None: ...

    def counters(self) -> Mapping[str, int]: ...


class SourceError(Exception):
    """The source could not start (engine unreachable, stream misconfigured); the message says why."""
