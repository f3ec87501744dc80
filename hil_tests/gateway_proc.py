"""The gateway under test: the real daemon (:class:`lifeline.gateway.testing_proc.GatewayProcess`, ``lifeline
gateway run --config FILE`` in a subprocess that dies with the test run) with a configuration written for the
bench: its radios, the platform broker, the node broker, optional rule files and buffer quota. It is managed
with the real CLI (``keygen``, ``devices import``, ``devices revoke``) and watched through its Prometheus
metrics; SIGKILL, SIGTERM and restarts are real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lifeline.gateway.testing_proc import Endpoint, GatewaySpec

GATEWAY_ID = "gw-hil"


@dataclass(slots=True)
class GatewaySettings:
    """What a drill may change in the gateway's configuration."""

    lora_serial: str | None = None  # the modem's port (emulated pty or the bench's /dev/ttyUSB*)
    lora_sf: int = 9
    platform: tuple[str, int] | None = None
    node_broker: tuple[str, int] | None = None
    quota_mb: int = 256
    rule_files: Sequence[Path] = ()
    trusted_technicians: Path | None = None
    extra: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # [section] key = value

    def spec(self) -> GatewaySpec:
        """The bench gateway's configuration: quick forwarder retries, the platform as its one endpoint."""
        sections: dict[str, dict[str, object]] = {
            "buffer": {"quota_mb": self.quota_mb},
            "forwarder": {"retry_initial_ms": 100, "retry_max_ms": 1000},
        }
        if self.trusted_technicians is not None:
            sections["gateway"] = {"trusted_technicians": self.trusted_technicians}
        if self.rule_files:
            sections["rules"] = {"files": list(self.rule_files)}
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        endpoints = [] if self.platform is None else [Endpoint("platform", *self.platform)]
        return GatewaySpec(GATEWAY_ID, endpoints=endpoints, nbiot_broker=self.node_broker,
                           lora_serial=self.lora_serial, lora_sf=self.lora_sf, sections=sections)
