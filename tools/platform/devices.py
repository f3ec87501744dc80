"""Device import for the platform store: provisioning records (``lifeline provision`` output, the same
JSON-lines file ``lifeline gateway devices import`` reads) to :class:`~.pg_store.DeviceRow` rows.

Only what the platform needs is taken: device id, kind, spatial unit, address, coordinates and data
class. The devices' root keys in that file are never read into the store. A revocation line
(``{"device_id": …, "revoked": true}``) marks the device revoked. Each bad line is reported with its line
number and a reason, never raised; the file is refused when others can read it (it holds root keys).
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeline.tools.platform.pg_store import DeviceRow

_DEVICE = re.compile(r"[0-9a-f]{16}")


class DeviceFileError(Exception):
    """The file cannot be read at all (missing, mode too loose)."""


@dataclass(frozen=True, slots=True)
class Parsed:
    devices: tuple[DeviceRow, ...]
    revoked: tuple[bytes, ...]
    problems: tuple[tuple[int, str], ...]  # (line number, reason)


def _int_or_none(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def parse_line(obj: Any) -> DeviceRow | bytes | str:
    """A device row, the id of a revoked device, or the reason the object is refused."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    dev = obj.get("device_id")
    if not isinstance(dev, str) or not _DEVICE.fullmatch(dev.lower()):
        return "device_id is not 16 hex digits"
    if obj.get("revoked") is True:
        return bytes.fromhex(dev)
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        return "kind missing"
    loc = obj.get("location", {})
    if not isinstance(loc, dict):
        return "location is not an object"
    unit = loc.get("spatial_unit", "")
    if not isinstance(unit, str):
        return "location.spatial_unit is not a string"
    address = loc.get("address", "")
    data_class = obj.get("data_class", "")
    return DeviceRow(device=bytes.fromhex(dev), kind=kind, spatial_unit=unit,
                     address=address if isinstance(address, str) else "",
                     lat_udeg=_int_or_none(loc.get("lat_udeg")), lon_udeg=_int_or_none(loc.get("lon_udeg")),
                     data_class=data_class if isinstance(data_class, str) else "")


def parse_lines(lines: Iterable[str]) -> Parsed:
    devices: dict[bytes, DeviceRow] = {}
    revoked: list[bytes] = []
    problems: list[tuple[int, str]] = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append((n, f"not JSON: {e.msg}"))
            continue
        got = parse_line(obj)
        if isinstance(got, str):
            problems.append((n, got))
        elif isinstance(got, bytes):
            revoked.append(got)
            devices.pop(got, None)
        else:
            devices[got.device] = got  # a later line of the same device wins
    return Parsed(tuple(devices.values()), tuple(revoked), tuple(problems))


def read_file(path: Path) -> Parsed:
    try:
        st = path.stat()
    except OSError as e:
        raise DeviceFileError(f"{path}: {e.strerror or e}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise DeviceFileError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); it holds root "
                              "keys: chmod 600 it")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DeviceFileError(f"{path}: {e}") from None
    return parse_lines(text.splitlines())
