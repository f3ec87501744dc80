"""Finding the board's serial port when ``--port`` is not given: USB-serial bridges used on ESP32 boards."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from serial.tools import list_ports

from lifeline.provisioning.errors import EnvironmentProblem

# (vid, pid): name. Bridges found on ESP32 dev boards and programming jigs.
KNOWN_BRIDGES = {
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x55D4): "WCH CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6015): "FTDI FT231X",
    (0x303A, 0x1001): "Espressif USB-Serial/JTAG",
}


def candidates(ports: Iterable[Any] | None = None) -> list[tuple[str, str]]:
    """(device, description) of every port behind a known ESP32 USB-serial bridge."""
    found = []
    for p in ports if ports is not None else list_ports.comports():
        key = (getattr(p, "vid", None), getattr(p, "pid", None))
        if key in KNOWN_BRIDGES:
            found.append((str(p.device), KNOWN_BRIDGES[key]))
    return sorted(found)


def find_board_port(lister: Callable[[], Iterable[Any]] | None = None) -> str:
    """The one board port, or EnvironmentProblem naming what was found."""
    found = candidates(lister() if lister is not None else None)
    if len(found) == 1:
        return found[0][0]
    if not found:
        raise EnvironmentProblem("no_port", "no ESP32 USB-serial bridge found; connect the board or pass --port")
    listing = ", ".join(f"{dev} ({name})" for dev, name in found)
    raise EnvironmentProblem("several_ports", f"several boards are connected ({listing}); pass --port")
