"""Ingress adapter types by config string, imported lazily (only the radios a gateway uses are loaded).

A radio engineer adds an adapter with one line in :data:`ADAPTERS`: ``"type": "module:Attribute"``.
The attribute is either a class with ``from_config(*, table, name, clock)`` (keywords; validates the
``[ingress.options]`` table, raising ``ValueError("option: reason")``) or a factory function
``factory(spec, context) -> IngressAdapter``. The adapter it returns is not started yet.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lifeline.gateway.clock import Clock
    from lifeline.gateway.config import IngressSpec
    from lifeline.gateway.ingress.base import IngressAdapter

ADAPTERS: dict[str, str] = {
    "nbiot-mqtt": "lifeline.gateway.ingress.nbiot:NbiotAdapter",
    "lora-serial": "lifeline.gateway.ingress.lora_serial:LoraSerialAdapter",
    "lora-udp": "lifeline.gateway.ingress.semtech_udp:SemtechUdpAdapter",
    "ble": "lifeline.gateway.ingress.ble:BleAdapter",
}


@dataclass(frozen=True, slots=True)
class AdapterContext:
    gateway_id: str
    state_dir: Path
    clock: Clock


class AdapterOptionError(ValueError):
    """An invalid ``[ingress.options]`` entry; ``option`` is the key inside ``options`` ("" if unknown)."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"{option}: {reason}" if option else reason)
        self.option = option
        self.reason = reason


class AdapterUnavailable(RuntimeError):
    """The adapter type is unknown, or its module is not installed/importable here."""


def resolve(type_name: str) -> Any:
    target = ADAPTERS.get(type_name)
    if target is None:
        raise AdapterUnavailable(f"unknown adapter type {type_name!r}")
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AdapterUnavailable(f"adapter type {type_name!r}: module {module_name} not available ({e})") from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise AdapterUnavailable(f"adapter type {type_name!r}: {target} not found")
    return obj


def create(spec: IngressSpec, context: AdapterContext) -> IngressAdapter:
    """Build (not start) the adapter for one ``[[ingress]]`` entry. Raises AdapterOptionError or
    AdapterUnavailable."""
    obj = resolve(spec.type)
    try:
        if hasattr(obj, "from_config"):
            adapter: IngressAdapter = obj.from_config(table=dict(spec.options), name=spec.name,
                                                      clock=context.clock)
        else:
            adapter = obj(spec, context)
    except AdapterOptionError:
        raise
    except (ValueError, TypeError) as e:
        text = str(e)
        option, _, reason = text.partition(": ")
        if reason and option.isidentifier():
            raise AdapterOptionError(option, reason) from None
        raise AdapterOptionError("", text) from None
    return adapter
