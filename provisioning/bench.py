"""Time per device, measured against the emulated board, and the expected time on real hardware.

:func:`measure` provisions one emulated board with a firmware image of ``image_size`` bytes (default
1.5 MB, a MicroPython ESP32_GENERIC build is 1.5-1.7 MB) at 921,600 baud and returns:

* ``wall_s``: the whole flow measured on this host (esptool protocol, compression, MicroPython under
  WebAssembly for every raw-REPL execution); this is the host-side cost, the serial line is a pty;
* ``step_s``: the same split by step;
* ``modelled_s``: what the emulator's ledger says the same traffic costs on a real board: 10 bits per
  byte at the baud rate in use, both directions, plus flash erase and page-program times (W25Q32JV typical
  values) and ROM MD5 time; this is the figure to expect on a bench, plus the technician's handling;
* ``formula_s``: :func:`expected_real_seconds`, the closed-form version of the same estimate, for the guide.
"""

from __future__ import annotations

import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeline.protocols import keys
from lifeline.provisioning import firmware_image
from lifeline.provisioning.audit import AuditLog
from lifeline.provisioning.flow import DeviceFlow, Options
from lifeline.provisioning.nodeconfig import DeviceSpec, Location
from lifeline.provisioning.state import StateFile

FLASH_SIZE = 4 * 1024 * 1024
SECTOR_ERASE_S = 0.045  # W25Q32JV tSE typical
BLOCK_ERASE_S = 0.150  # W25Q32JV tBE2 (64 KiB) typical
PAGE_PROGRAM_S = 0.0004  # W25Q32JV tPP typical, 256 bytes
ROM_MD5_BYTES_PER_S = 1_000_000  # assumption (not a datasheet figure)
ROM_BLOCK = 0x400  # ROM loader data block (esptool FLASH_WRITE_SIZE for the ROM)
FRAME_OVERHEAD = 16 + 8 + 2 + 14  # FLASH_DATA header words + command header + SLIP ends + the 14-byte reply


@dataclass(frozen=True, slots=True)
class BenchResult:
    image_size: int
    baud: int
    wall_s: float
    step_s: dict[str, float]
    modelled_s: float
    modelled_by: dict[str, float]
    formula_s: float
    result: str

    def to_json(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "baud": self.baud, "wall_s": round(self.wall_s, 2),
                "step_s": {k: round(v, 3) for k, v in self.step_s.items()}, "modelled_s": round(self.modelled_s, 1),
                "modelled_by": {k: round(v, 1) for k, v in sorted(self.modelled_by.items())},
                "formula_s": round(self.formula_s, 1), "result": self.result}


def expected_real_seconds(image_size: int, baud: int = 921600, compressed_ratio: float = 0.62,
                          bundle_bytes: int = 60_000, bundle_files: int = 37, repl_baud: int = 115200) -> float:
    """Serial time (bytes x 10 bits / baud) + flash erase and program (datasheet typical) + MD5 checks.

    * image: sent compressed (``compressed_ratio`` of its size; MicroPython images deflate to ~60-65 %)
      in 1 KiB ROM blocks with ~40 bytes of framing each;
    * erase: the image region in 64 KiB blocks, the rest of a 4 MB flash too (old filesystem and keys);
    * program: one page program per 256 bytes;
    * verify: one MD5 over the image (per-segment MD5s only when resuming an interrupted write);
    * REPL: the app bundle as base64 (4/3) at 115,200 baud plus ~700 bytes of statements and replies per
      file (open, rename, hash before and after).
    """
    sent = image_size * compressed_ratio
    frames = -(-int(sent) // ROM_BLOCK)
    serial_s = (sent + frames * FRAME_OVERHEAD) * 10 / baud
    blocks = -(-FLASH_SIZE // 0x10000)
    erase_s = blocks * BLOCK_ERASE_S
    program_s = -(-image_size // 256) * PAGE_PROGRAM_S
    md5_s = image_size / ROM_MD5_BYTES_PER_S
    repl_s = (bundle_bytes * 4 / 3 + bundle_files * 700) * 10 / repl_baud
    return serial_s + erase_s + program_s + md5_s + repl_s


def measure(image_size: int = 1_500_000, *, baud: int = 921600, workdir: Path | None = None) -> BenchResult:
    from lifeline.sim_devices.esp32_emulator import Esp32Emulator, make_firmware_image

    with tempfile.TemporaryDirectory(prefix="lifeline-bench-") as tmp:
        work = workdir or Path(tmp)
        fw = work / "fw.bin"
        data = make_firmware_image(image_size)
        fw.write_bytes(data)
        spec = DeviceSpec(kind="smoke", radio="lora", region="EU868", interval_s=900,
                          location=Location("bench", 52_000_000, 4_000_000, "bench"), data_class="sensitive",
                          install_date="2026-01-01", design_life_years=10)
        stamps: dict[str, float] = {}

        class Sink:
            def __init__(self) -> None:
                self.t = time.perf_counter()

            def start(self, step: str, total: int | None = None) -> None:
                return None

            def advance(self, done: int, total: int) -> None:
                return None

            def finish(self, step: str, status: str, note: str = "") -> None:
                now = time.perf_counter()
                stamps[step] = stamps.get(step, 0.0) + now - self.t
                self.t = now

        with Esp32Emulator(workdir=work / "board") as emu:
            opts = Options(port=str(emu.path), firmware=firmware_image.load(fw), records_path=work / "records.jsonl",
                           state=StateFile(work / "state.json"), audit=AuditLog(work / "audit.jsonl", "bench"),
                           technician_key=keys.generate(), labels_dir=work / "labels",
                           baud_ladder=tuple(b for b in (921600, 460800, 230400, 115200) if b <= baud))
            t0 = time.perf_counter()
            outcome = DeviceFlow(opts, spec, sink=Sink()).run()
            wall = time.perf_counter() - t0
            modelled = emu.modelled_s
            modelled_by = dict(emu.modelled_by)
        ratio = len(zlib.compress(data, 9)) / len(data)
        return BenchResult(image_size, outcome.baud or baud, wall, stamps, modelled, modelled_by,
                           expected_real_seconds(image_size, baud, ratio), outcome.result)


if __name__ == "__main__":
    import json

    print(json.dumps(measure().to_json(), indent=1))
