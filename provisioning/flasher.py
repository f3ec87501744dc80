"""Flash a firmware image through the ESP32 ROM serial loader, with esptool (5.x) as a library.

Only ROM loader commands are used (no flasher stub, the equivalent of ``esptool --no-stub``): SYNC,
register reads for chip detection and the MAC, SPI_ATTACH/SPI_SET_PARAMS, CHANGE_BAUDRATE,
FLASH_BEGIN (which erases) / FLASH_DATA / FLASH_DEFL_*, SPI_FLASH_MD5. On top of esptool this module adds:

* the **baud ladder**: 921600, then 460800, 230400, 115200 until a link test (SYNC frames, which are
  44 bytes on the wire, plus an MD5 request) passes; a failed rate is left by sending CHANGE_BAUDRATE
  (a 16-byte frame) again at the failed rate until the chip confirms;
* **resumable writes**: the image is written in 64 KiB segments, and a segment whose flash MD5 already
  matches is skipped, so a run interrupted by a pulled cable continues where it stopped;
* **erase** of the flash outside the image (old filesystem with keys, NVS), then **verify**: the MD5 of
  the whole written region must match the image's.

Reset: a USB-serial adapter's DTR/RTS lines reset the chip into the loader (``default-reset``). A pty
and a ``socket://`` port have no such lines, so ``reset_lines=False`` connects with ``no-reset`` (the
chip must already be in download mode: BOOT held at power-up, or ``machine.bootloader()`` from the REPL).
After flashing, :meth:`Flasher.run_app` leaves the loader the ROM way (FLASH_BEGIN of 0 bytes, then
FLASH_END "run user code"), which needs no reset line either.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import serial
from esptool.cmds import detect_chip  # type: ignore[import-untyped]
from esptool.loader import ESPLoader  # type: ignore[import-untyped]
from esptool.logger import log as esptool_log  # type: ignore[import-untyped]
from esptool.util import FatalError  # type: ignore[import-untyped]

from lifeline.provisioning.errors import EnvironmentProblem, ProvisionError
from lifeline.provisioning.identity import eui64_from_mac

BAUD_LADDER = (921600, 460800, 230400, 115200)
ROM_BAUD = 115200
SEGMENT = 0x10000
SECTOR = 0x1000
ESP32_FLASH_OFFSET = 0x1000
LINK_TEST_TIMEOUT_S = 0.5
_MD5_TIMEOUT_PER_MB_S = 8.0
_ERASE_TIMEOUT_PER_MB_S = 30.0

Progress = Callable[[str, int, int], None]  # (what, done, total)


def _no_progress(what: str, done: int, total: int) -> None:
    return None


@dataclass(frozen=True, slots=True)
class BoardInfo:
    chip: str
    description: str
    mac: bytes
    device_id: bytes
    flash_size: int


@dataclass(frozen=True, slots=True)
class WriteReport:
    segments_written: int
    segments_skipped: int
    bytes_sent: int  # on the wire, after compression


class FlashError(ProvisionError):
    """A flash step failed (lost connection, write or verify mismatch, wrong chip)."""


def _translate(exc: BaseException, doing: str) -> ProvisionError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, serial.SerialException | OSError):
        return FlashError("port_lost", f"serial connection lost while {doing} ({text}); check the cable and rerun")
    return FlashError("loader_error", f"ROM loader error while {doing}: {text}")


class Flasher:
    """One connection to a chip in download mode."""

    def __init__(self, url: str, *, reset_lines: bool, progress: Progress = _no_progress,
                 connect_attempts: int = 3, verbose: bool = False) -> None:
        self.url = url
        self.reset_lines = reset_lines
        self.progress = progress
        self.connect_attempts = connect_attempts
        self.esp: ESPLoader | None = None
        self.baud = ROM_BAUD
        if not verbose:
            esptool_log.set_verbosity("silent")

    # ---- connect -----------------------------------------------------------------------------------
    def connect(self, expect_chip: str | None = None) -> BoardInfo:
        mode = "default-reset" if self.reset_lines else "no-reset"
        try:
            esp = detect_chip(self.url, ROM_BAUD, mode, False, self.connect_attempts)
        except FatalError as exc:
            raise FlashError(
                "no_loader",
                f"no ESP32 ROM loader answers on {self.url}: {str(exc).splitlines()[0]}. "
                "Hold BOOT, press and release EN, release BOOT, then retry.",
            ) from None
        except (serial.SerialException, OSError) as exc:
            raise EnvironmentProblem("port_unavailable", f"cannot open {self.url}: {exc}") from None
        self.esp = esp
        try:
            chip = str(esp.CHIP_NAME)
            description = str(esp.get_chip_description())
            if expect_chip is not None and chip != expect_chip:
                raise FlashError("wrong_chip", f"the board is an {chip} ({description}), this firmware is for "
                                 f"{expect_chip}; nothing was written")
            mac = bytes(esp.read_mac())
            flash_size = self._attach_flash()
        except (FatalError, serial.SerialException, OSError) as exc:
            raise _translate(exc, "reading the chip") from None
        return BoardInfo(chip, description, mac, eui64_from_mac(mac), flash_size)

    def _attach_flash(self) -> int:
        esp = self._loader()
        esp.flash_spi_attach(0)
        flash_id = int(esp.flash_id())
        size_code = (flash_id >> 16) & 0xFF
        size = 1 << size_code if 0x12 <= size_code <= 0x1A else 4 * 1024 * 1024
        esp.flash_set_parameters(size)
        return size

    def _loader(self) -> ESPLoader:
        if self.esp is None:
            raise FlashError("not_connected", "not connected to a chip")
        return self.esp

    # ---- baud --------------------------------------------------------------------------------------
    def _link_ok(self) -> bool:
        esp = self._loader()
        try:
            for _ in range(3):
                esp.command(esp.ESP_CMDS["SYNC"], b"\x07\x07\x12\x20" + 32 * b"\x55", timeout=LINK_TEST_TIMEOUT_S)
                for _ in range(7):
                    esp.command(timeout=LINK_TEST_TIMEOUT_S)
            esp.flash_md5sum(ESP32_FLASH_OFFSET, SECTOR)
        except (FatalError, struct.error):
            esp.flush_input()  # a time-out ends esptool's SLIP reader; start a fresh one
            return False
        return True

    def _change_baud(self, new: int) -> None:
        self._loader().change_baud(new)
        self.baud = new

    def _change_baud_retrying(self, rate: int) -> None:
        esp = self._loader()
        last: BaseException | None = None
        for _ in range(5):
            try:
                self._change_baud(rate)
                return
            except FatalError as exc:  # the request or its answer was lost on a bad link: ask again
                last = exc
                esp.flush_input()
            except (serial.SerialException, OSError) as exc:
                raise _translate(exc, f"changing the baud rate to {rate}") from None
        raise FlashError("baud_unrecoverable",
                         f"the chip stopped answering while changing to {rate} baud ({last}); reset it and retry")

    def set_fastest_baud(self, ladder: Sequence[int] = BAUD_LADDER) -> int:
        """Switch to the fastest rate of ``ladder`` that passes the link test; returns it. A failed rate is
        left by asking for the next one at the failed rate (a short frame that still gets through)."""
        for rate in ladder:
            if rate != self.baud:
                self._change_baud_retrying(rate)
            if self._link_ok():
                return rate
        raise FlashError("link_unreliable", "no baud rate gives a reliable link; try another USB cable or port")

    # ---- flash -------------------------------------------------------------------------------------
    def erase(self, start: int, end: int) -> None:
        """Erase [start, end) (sector aligned) through ROM FLASH_BEGIN without data blocks."""
        esp = self._loader()
        if end <= start:
            return
        size = end - start
        try:
            esp.check_command(
                "erase flash region",
                esp.ESP_CMDS["FLASH_BEGIN"],
                struct.pack("<IIII", size, 0, esp.FLASH_WRITE_SIZE, start),
                timeout=max(3.0, _ERASE_TIMEOUT_PER_MB_S * size / 1e6),
            )
        except (FatalError, serial.SerialException, OSError) as exc:
            raise _translate(exc, "erasing") from None

    def md5(self, offset: int, size: int) -> str:
        esp = self._loader()
        try:
            return str(esp.flash_md5sum(offset, size))
        except (FatalError, serial.SerialException, OSError) as exc:
            raise _translate(exc, "reading the flash MD5") from None

    def write_image(self, image: bytes, offset: int = ESP32_FLASH_OFFSET, *, resume: bool = True,
                    compress: bool = True) -> WriteReport:
        """Write ``image`` at ``offset`` in 64 KiB segments; with ``resume``, segments already in flash
        (same MD5) are skipped."""
        esp = self._loader()
        image = image + b"\xff" * (-len(image) % 4)
        total = len(image)
        written = skipped = sent = 0
        done = 0
        block = int(esp.FLASH_WRITE_SIZE)
        # segments end on 64 KiB flash boundaries, so the ROM erases them with block erases (150 ms per
        # 64 KiB) instead of sixteen sector erases (16 x 45 ms)
        cuts = [0, *range(SEGMENT - offset % SEGMENT, total, SEGMENT), total]
        for seg_start, seg_end in itertools.pairwise(cuts):
            if seg_end <= seg_start:
                continue
            seg = image[seg_start:seg_end]
            addr = offset + seg_start
            if resume and self.md5(addr, len(seg)) == hashlib.md5(seg).hexdigest():
                skipped += 1
                done += len(seg)
                self.progress("write", done, total)
                continue
            try:
                if compress:
                    packed = zlib.compress(seg, 9)
                    blocks = -(-len(packed) // block)
                    erase_size = -(-len(seg) // block) * block
                    esp.check_command(
                        "enter compressed flash mode", esp.ESP_CMDS["FLASH_DEFL_BEGIN"],
                        struct.pack("<IIII", erase_size, blocks, block, addr),
                        timeout=max(3.0, _ERASE_TIMEOUT_PER_MB_S * erase_size / 1e6),
                    )
                    for seq in range(blocks):
                        esp.flash_defl_block(packed[seq * block : (seq + 1) * block], seq, timeout=3.0)
                    sent += len(packed)
                else:
                    esp.flash_begin(len(seg), addr, logging=False)
                    for seq in range(0, len(seg), block):
                        chunk = seg[seq : seq + block]
                        esp.flash_block(chunk + b"\xff" * (block - len(chunk)), seq // block)
                    sent += len(seg)
            except (FatalError, serial.SerialException, OSError) as exc:
                raise _translate(exc, f"writing flash at 0x{addr:06x}") from None
            written += 1
            done += len(seg)
            self.progress("write", done, total)
        return WriteReport(written, skipped, sent)

    def verify(self, image: bytes, offset: int = ESP32_FLASH_OFFSET) -> None:
        image = image + b"\xff" * (-len(image) % 4)
        want = hashlib.md5(image).hexdigest()
        got = self.md5(offset, len(image))
        if got != want:
            raise FlashError(
                "verify_mismatch",
                f"flash verify failed: MD5 of 0x{offset:06x}..0x{offset + len(image):06x} is {got}, "
                f"the image's is {want}; the data was damaged on the way. Rerun (only damaged segments are "
                "rewritten); if it repeats, use a shorter cable or a lower baud rate.",
            )

    def run_app(self) -> None:
        """Leave the loader and start the flashed app (ROM: FLASH_BEGIN 0 bytes, FLASH_END run user code)."""
        esp = self._loader()
        try:
            esp.flash_begin(0, 0, logging=False)
            esp.flash_finish(False)
        except (FatalError, serial.SerialException, OSError) as exc:
            raise _translate(exc, "starting the app") from None

    def close(self) -> None:
        if self.esp is not None and self.baud != ROM_BAUD:
            # leave the loader as we found it: a chip left at 921600 ignores the next session at 115200
            with contextlib.suppress(FatalError, serial.SerialException, OSError, struct.error):
                self._change_baud(ROM_BAUD)
        if self.esp is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self.esp._port.close()
            self.esp = None
