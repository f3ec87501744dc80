"""The fleet simulator's side of ``lifeline demo`` (tools/demo_*.py): one small facade, so the demo's
modules (under ``mypy --strict``) reach the simulator through a single dynamically imported module
instead of following imports into the firmware and simulator code (not part of the strict set).

Every function is a thin call into the simulator's public pieces; nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


def build(scenario_file: Path) -> tuple[Any, Any, list[dict[str, Any]]]:
    """(scenario, fleet, registry records) of a scenario file; frames are recorded (for the cross-check)."""
    from lifeline.sim_devices import runner, scenario

    sc = scenario.load(scenario_file)
    fleet, records = runner.build(sc, record_frames=True)
    return sc, fleet, records


def links(fleet: Any, *, serial_path: Path, udp: tuple[str, int], broker: tuple[str, int], ble: bool,
          site: tuple[float, float]) -> Any:
    """The radios in front of a running gateway (emulated modem on a pty, packet forwarder, node broker, BLE)."""
    from lifeline.sim_devices.links import GatewayLinks

    return GatewayLinks(fleet, serial_path=serial_path, udp=udp, broker=broker, ble=ble, site=site)


async def gsm_modem(path: Path) -> Any:
    """A started GSM modem emulator on a pty (the gateway's SMS output)."""
    from lifeline.sim_devices.gsm_modem_emulator import GsmModemEmulator

    return await GsmModemEmulator(path).start()


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    from lifeline.sim_devices.provision import write_records as write

    return write(path, records)


def heard_valid(fleet: Any) -> set[tuple[bytes, int]]:
    """(device, fcnt) of every frame a gateway radio heard that verifies with the registered key."""
    from lifeline.sim_devices import runner

    return {(r.device, r.fcnt) for r in runner.readings(fleet) if r.heard and r.valid and r.fcnt >= 0}
