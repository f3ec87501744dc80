"""The seam between the gateway pipeline and the platform uplink (MQTT/TLS).

The forwarder codes against :class:`AckedPublisher` only; ``lifeline.gateway.uplink.MqttUplink`` (owned by
the uplink engineer) implements it, and tests use :class:`lifeline.gateway.testing.MemoryPublisher`.

Contract:

* ``publish`` is QoS 1 and returns only after the broker's PUBACK for exactly this message. It raises
  :class:`UplinkUnavailable` when no endpoint can take the message now (not connected, PUBACK deadline
  passed, connection lost while waiting). The forwarder keeps the batch in its outbox and retries the same
  bytes later; the publisher never retries on its own behind the forwarder's back, never buffers to disk.
* ``is_connected`` is cheap and non-blocking; the forwarder uses it to pause instead of spinning.
* ``endpoint_states`` maps endpoint name -> state text ("connected", "connecting", "down", ...) for metrics.

Optional capabilities, detected with ``isinstance`` (the protocols are runtime-checkable):

* :class:`UplinkService` adds ``start``/``close`` (connect, LWT/presence, disconnect). The daemon calls them.
* :class:`CommandSource` lets the daemon receive platform commands (``lifeline/v1/<gw>/down``): the uplink
  calls the registered handler with each message's raw payload; the handler validates and queues it
  (it never raises for bad input; it answers on ``.../down/result`` itself through ``publish``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, runtime_checkable


class UplinkUnavailable(Exception):
    """The message was not acknowledged by any endpoint; the caller keeps it and retries later."""


@runtime_checkable
class AckedPublisher(Protocol):
    async def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1 publish; returns after PUBACK; raises UplinkUnavailable."""

    def is_connected(self) -> bool: ...

    def endpoint_states(self) -> Mapping[str, str]: ...


@runtime_checkable
class UplinkService(AckedPublisher, Protocol):
    async def start(self) -> None:
        """Begin connecting (returns without waiting for a connection)."""

    async def close(self) -> None:
        """Publish offline presence if possible and disconnect."""


CommandHandler = Callable[[bytes], Awaitable[None]]


@runtime_checkable
class CommandSource(Protocol):
    def set_command_handler(self, handler: CommandHandler) -> None:
        """Deliver every message received on ``lifeline/v1/<gateway_id>/down`` to ``handler``."""


def topic_up(gateway_id: str, lane: int) -> str:
    return f"lifeline/v1/{gateway_id}/up/{'live' if lane == 0 else 'backlog'}"


def topic_down(gateway_id: str) -> str:
    return f"lifeline/v1/{gateway_id}/down"


def topic_down_result(gateway_id: str) -> str:
    return f"lifeline/v1/{gateway_id}/down/result"


def topic_state(gateway_id: str) -> str:
    return f"lifeline/v1/{gateway_id}/state"
