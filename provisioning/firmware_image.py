"""The MicroPython firmware image a technician flashes, checked before anything touches a board.

Expected: the merged ``.bin`` micropython.org publishes for ESP32_GENERIC (written at 0x1000): the
second-stage bootloader image (magic 0xE9, chip id in the extended header), the partition table at
0x8000 and the app at its ``factory`` partition, whose ``esp_app_desc_t`` names the project
("micropython") and version. Layouts: esptool docs "Firmware Image Format", ESP-IDF "Partition Tables".
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from lifeline.provisioning.errors import EnvironmentProblem, UsageProblem

FLASH_OFFSET = 0x1000
_PT_OFFSET = 0x8000
_IMAGE_MAGIC = 0xE9
_APP_DESC_MAGIC = 0xABCD5432
CHIP_NAMES = {0: "ESP32", 2: "ESP32-S2", 5: "ESP32-C3", 9: "ESP32-S3", 12: "ESP32-C2", 13: "ESP32-C6", 16: "ESP32-H2"}


@dataclass(frozen=True, slots=True)
class FirmwareImage:
    path: Path
    data: bytes
    sha256: str
    chip: str
    version: str
    project: str
    vfs_size: int | None

    @property
    def flash_range(self) -> tuple[int, int]:
        """[start, end) in flash, end rounded up to a 4 KiB sector."""
        end = FLASH_OFFSET + len(self.data)
        return FLASH_OFFSET, end + (-end % 0x1000)


def load(path: Path) -> FirmwareImage:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnvironmentProblem("firmware_unreadable", f"cannot read {path}: {exc.strerror}") from None
    return parse(path, data)


def parse(path: Path, data: bytes) -> FirmwareImage:
    if len(data) < 0x100 or data[0] != _IMAGE_MAGIC:
        raise UsageProblem("not_firmware", f"{path.name} is not an ESP32 firmware image (no 0xE9 header at its start)")
    (chip_id,) = struct.unpack_from("<H", data, 12)
    chip = CHIP_NAMES.get(chip_id, f"chip id {chip_id}")
    version, project, vfs_size = "unknown", "unknown", None
    pt = _PT_OFFSET - FLASH_OFFSET
    app_offset = None
    for i in range(pt, min(len(data), pt + 0xC00), 32):
        row = data[i : i + 32]
        if row[:2] != b"\xaa\x50":
            break
        ptype, subtype, offset, size = struct.unpack_from("<BBII", row, 2)
        if ptype == 0 and app_offset is None:
            app_offset = offset
        if ptype == 1 and subtype == 0x81:
            vfs_size = size
    if app_offset is not None:
        at = app_offset - FLASH_OFFSET + 24 + 8
        if at + 256 <= len(data) and struct.unpack_from("<I", data, at)[0] == _APP_DESC_MAGIC:
            version = data[at + 16 : at + 48].rstrip(b"\0").decode("ascii", "replace")
            project = data[at + 48 : at + 80].rstrip(b"\0").decode("ascii", "replace")
    if project != "micropython":
        raise UsageProblem("not_micropython", f"{path.name} does not contain a MicroPython app (project {project!r})")
    return FirmwareImage(path, data, hashlib.sha256(data).hexdigest(), chip, version, project, vfs_size)
