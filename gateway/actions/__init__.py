"""Local action outputs of the rules engine: LAN MQTT (sirens, PLCs, displays), GPIO relays, SMS through a
serial GSM/NB-IoT modem, LAN webhooks. One small class per kind of hardware; each attempt either returns
a short detail (``"+CMGS: 12"``, ``"HTTP 204"``) or raises :class:`ActionFailed` with a reason that is safe
to log and report. Retries, timeouts and rate limits belong to the caller (``rules_engine.dispatch``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lifeline.gateway.clock import Clock
    from lifeline.gateway.rules_engine.model import OutputSpec


class ActionFailed(Exception):
    """An action attempt did not succeed; ``reason`` is short and safe to report (no secrets)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Output(Protocol):
    name: str

    async def start(self) -> None:
        """Prepare (connect in the background, open the chip); never blocks for long, never raises."""

    async def close(self) -> None:
        """Release the hardware or connection."""


def build(name: str, spec: OutputSpec, clock: Clock) -> Output:
    """The output object for one ``[outputs.<name>]`` table (imports only the module it needs)."""
    from lifeline.gateway.rules_engine import model as m

    if isinstance(spec, m.MqttOutput):
        from lifeline.gateway.actions.lan_mqtt import LanMqtt

        return LanMqtt(name, spec)
    if isinstance(spec, m.GpioOutput):
        from lifeline.gateway.actions.gpio import GpioRelays

        return GpioRelays(name, spec, clock)
    if isinstance(spec, m.SmsOutput):
        from lifeline.gateway.actions.sms import SmsModem

        return SmsModem(name, spec)
    from lifeline.gateway.actions.webhook import Webhook

    return Webhook(name, spec)
