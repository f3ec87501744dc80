"""A simulated ESP32 board on a real pseudo-terminal (and optionally a ``socket://`` TCP port).

What the host sees is what a USB-serial ESP32 dev board shows:

* **Download mode** (the ROM serial bootloader, as ``esptool --no-stub`` drives it): SLIP framing,
  SYNC, READ_REG / WRITE_REG (chip-detect magic, eFuse words with the MAC, UART clock divider, the SPI
  peripheral's user-command registers that esptool uses for the JEDEC flash id), SPI_ATTACH,
  SPI_SET_PARAMS, CHANGE_BAUDRATE, FLASH_BEGIN / FLASH_DATA / FLASH_END, FLASH_DEFL_* (zlib stream),
  SPI_FLASH_MD5 (32 hex characters, as the ROM answers), READ_FLASH_SLOW, GET_SECURITY_INFO (only the
  ESP32-S3 variant answers it; the ESP32 ROM rejects it like an unknown command). Byte layouts follow
  Espressif's published serial-protocol description (esptool docs, advanced-topics/serial-protocol).
  Responses carry the ESP32 ROM's four status bytes. Flash is a NOR array: erase sets 0xFF per 4 KiB
  sector, programming can only clear bits.
* **MicroPython** (after FLASH_END or a power-up without the BOOT strap): the second-stage bootloader
  checks the flashed image (bootloader header at 0x1000, partition table at 0x8000, the app's header,
  checksum and SHA-256), then MicroPython prints its banner and runs a REPL. The friendly REPL (Ctrl-C,
  Ctrl-D soft reboot, single-line statements) and the raw REPL (Ctrl-A, code ended by Ctrl-D, "OK",
  output, 0x04, traceback, 0x04, ">", Ctrl-B to leave; raw-paste is refused with "R\\x00" so clients use
  plain raw mode) are answered here.

Why code sent to the raw REPL runs under the real MicroPython (WebAssembly, Node) and not CPython: the
installer's statements (``open``, ``binascii.a2b_base64``, ``hashlib.sha256``, ``os.listdir``, the
self-test) must behave exactly as on the node, including MicroPython's error texts (``OSError: [Errno 28]
ENOSPC``). The board keeps one interpreter per boot (globals persist between raw-REPL executions, as on
the device) and mounts at ``/`` a filesystem object written in MicroPython (:data:`_BOARD_PY`) whose
block accounting follows LittleFS v2 (4 KiB blocks, two-block metadata pairs, small files inline), sized
from the ``vfs`` partition of the flashed partition table; writes beyond it fail with ENOSPC. After every
execution the changed files come back to this process and are written into the vfs partition of the
flash array (an emulator-specific layout, not LittleFS), so erasing that region wipes the filesystem,
exactly as on the board, and the test can read every installed file byte for byte.

Beyond the ROM and the REPL the board has a ``machine`` module with ``unique_id()`` (the eFuse MAC),
``reset()`` and ``bootloader()`` (back to download mode, as on the ESP32 port). ``os.uname().machine``
says it is this emulator, so an installer can tell it from a real board.

Timing: nothing sleeps. :attr:`Esp32Emulator.modelled_s` adds up what the same traffic would take on
real hardware: 10 bits per byte at the current baud rate both ways, plus flash erase and program times
(typical values of a 4 MB SPI NOR flash such as the W25Q32JV on ESP32-WROOM-32 modules: 4 KiB sector
erase 45 ms, 64 KiB block erase 150 ms, 256-byte page program 0.4 ms) and ROM MD5 at 1 MB/s (assumed).

Fault injection: :class:`Faults` (unplug in the middle of a FLASH_DATA frame, an ESP32-S3 instead of an
ESP32, two bytes swapped in a flash block so the 8-bit checksum passes but the MD5 does not, frames
over 40 bytes lost above a maximum reliable baud rate), plus :meth:`Esp32Emulator.unplug` and
:meth:`~Esp32Emulator.replug`. Garbage on the ROM's serial line is counted by reason in
:attr:`Esp32Emulator.rejects`, never raised.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import select
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import termios
import threading
import tty
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# --- chip facts -------------------------------------------------------------------------------------------

FLASH_SIZE = 4 * 1024 * 1024
SECTOR = 0x1000
BLOCK64 = 0x10000
PAGE = 256
BOOTLOADER_OFFSET = 0x1000
PARTITION_TABLE_OFFSET = 0x8000
ROM_BAUD = 115200
XTAL_HZ = 40_000_000

# Commands of the ROM loader (serial-protocol description, "Commands").
FLASH_BEGIN = 0x02
FLASH_DATA = 0x03
FLASH_END = 0x04
MEM_BEGIN = 0x05
MEM_END = 0x06
MEM_DATA = 0x07
SYNC = 0x08
WRITE_REG = 0x09
READ_REG = 0x0A
SPI_SET_PARAMS = 0x0B
SPI_ATTACH = 0x0D
READ_FLASH_SLOW = 0x0E
CHANGE_BAUDRATE = 0x0F
FLASH_DEFL_BEGIN = 0x10
FLASH_DEFL_DATA = 0x11
FLASH_DEFL_END = 0x12
SPI_FLASH_MD5 = 0x13
GET_SECURITY_INFO = 0x14

# ROM loader error codes (serial-protocol description, "ROM Loader Errors").
ERR_BAD_PARAM = 0x01
ERR_BAD_MESSAGE = 0x05
ERR_CHECKSUM = 0x07
ERR_DEFLATE = 0x0B

CHECKSUM_SEED = 0xEF
SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
MAX_FRAME = 0x4000 + 64  # largest request the ROM buffers (16 KiB data + header); longer = garbage

# Registers the host reads (ESP32 technical reference manual; esptool's target tables use the same).
CHIP_DETECT_MAGIC_REG = 0x40001000
ESP32_MAGIC = 0x00F01D83
EFUSE_BASE_ESP32 = 0x3FF5A000
UART_CLKDIV_REG = 0x3FF40014
APB_CTL_DATE_REG = 0x3FF6607C
RTCCALICFG1_REG = 0x3FF5F06C
SPI_BASE = 0x3FF42000
SPI_CMD_USR = 1 << 18
SPI_USR2_OFFS = 0x24
SPI_W0_OFFS = 0x80
EFUSE_BASE_S3 = 0x60007000

# Flash timing (typical values, W25Q32JV datasheet, AC electrical characteristics).
T_SECTOR_ERASE_S = 0.045
T_BLOCK_ERASE_S = 0.150
T_PAGE_PROGRAM_S = 0.0004
ROM_MD5_BYTES_PER_S = 1_000_000  # assumption, not a datasheet figure
JEDEC_ID = 0x1640EF  # Winbond, W25Q32 (capacity code 0x16 = 4 MB), as RDID returns it (LSB = vendor)

# The ESP32's second-stage bootloader and app image format (esptool docs, firmware-image-format).
IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
PART_MAGIC = b"\xaa\x50"
PART_MD5_MAGIC = b"\xeb\xeb"
CHIP_ID_ESP32 = 0
CHIP_ID_ESP32S3 = 9

_FS_MAGIC = b"LLEMUFS1"
_FS_BLOCK = 4096
_FS_INLINE_MAX = 512
_FS_ENTRY_OVERHEAD = 128
_FS_ROOT_BLOCKS = 2

BOOT_PY = (
    b"# This file is executed on every boot (including wake-boot from deepsleep)\n"
    b"#import esp\n#esp.osdebug(None)\n#import webrepl\n#webrepl.start()\n"
)
MICROPYTHON_BANNER = "MicroPython {version} on {date}; Generic ESP32 module with ESP32"
EMULATOR_MACHINE = "Lifeline ESP32 emulator (MicroPython WebAssembly) with ESP32"
RAW_REPL_BANNER = b"raw REPL; CTRL-B to exit\r\n>"

_REPO = Path(__file__).resolve().parent.parent
_MPY_PACKAGE = (
    _REPO / "tools" / "micropython" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
    / "micropython.mjs"
)


class EmulatorError(RuntimeError):
    """The emulator itself cannot run (Node or MicroPython missing, bad configuration)."""


# --- configuration ----------------------------------------------------------------------------------------


@dataclass
class Faults:
    """What goes wrong, on purpose. Counters are 1-based and count frames of that command since power-up."""

    unplug_in_flash_data: int | None = None  # cable pulled after half of the n-th FLASH_DATA/FLASH_DEFL_DATA
    swap_bytes_in_block: int | None = None  # the n-th data block lands with bytes 16 and 17 swapped
    max_reliable_baud: int | None = None  # above it, frames over 40 bytes are lost (framing errors)
    fail_exec_after: int | None = None  # the n-th raw-REPL execution hangs up the line (brown-out)


@dataclass
class ChipIdentity:
    name: str = "ESP32"
    mac: bytes = bytes.fromhex("246f28a1b2c3")
    revision: tuple[int, int] = (3, 1)  # ESP32-D0WD-V3 v3.1

    @property
    def chip_id(self) -> int:
        return CHIP_ID_ESP32S3 if self.name == "ESP32-S3" else CHIP_ID_ESP32


@dataclass
class Stats:
    commands: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    boots: int = 0
    raw_execs: int = 0


# --- images (what a MicroPython firmware .bin looks like) -------------------------------------------------


def _image(chip_id: int, segments: list[tuple[int, bytes]], entry: int) -> bytes:
    """An ESP32 app/bootloader image: header, extended header, segments, checksum, SHA-256 appended."""
    out = bytearray(struct.pack("<BBBBI", IMAGE_MAGIC, len(segments), 2, 0x20, entry))  # DIO, 4MB, 40MHz
    # wp pin, 3 drive bytes, chip id, min rev, min/max rev full, 4 reserved, hash appended
    out += struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", chip_id, 0, 0, 0xFFFF, b"\0" * 4, 1)
    checksum = CHECKSUM_SEED
    for addr, data in segments:
        data = data + b"\0" * (-len(data) % 4)
        out += struct.pack("<II", addr, len(data)) + data
        for b in data:
            checksum ^= b
    out += b"\0" * (15 - len(out) % 16) + bytes([checksum])
    out += hashlib.sha256(out).digest()
    return bytes(out)


def _partition_entry(ptype: int, subtype: int, offset: int, size: int, label: str) -> bytes:
    return PART_MAGIC + struct.pack("<BBII16sI", ptype, subtype, offset, size, label.encode(), 0)


def make_partition_table(vfs_size: int = 0x200000) -> bytes:
    """MicroPython's ESP32_GENERIC 4 MiB layout (partitions-4MiB.csv), vfs size adjustable."""
    rows = [
        _partition_entry(1, 0x02, 0x9000, 0x6000, "nvs"),
        _partition_entry(1, 0x01, 0xF000, 0x1000, "phy_init"),
        _partition_entry(0, 0x00, 0x10000, 0x1F0000, "factory"),
        _partition_entry(1, 0x81, 0x200000, vfs_size, "vfs"),
    ]
    body = b"".join(rows)
    body += PART_MD5_MAGIC + b"\xff" * 14 + hashlib.md5(body).digest()
    return body + b"\xff" * (0xC00 - len(body))


def make_firmware_image(
    size: int = 1_500_000,
    *,
    version: str = "v1.27.0",
    date: str = "2025-12-09",
    chip_id: int = CHIP_ID_ESP32,
    vfs_size: int = 0x200000,
    seed: int = 1,
) -> bytes:
    """A merged firmware .bin as micropython.org ships for ESP32_GENERIC (flashed at 0x1000): second-stage
    bootloader image, partition table at 0x8000, the app at 0x10000 with its esp_app_desc_t. The code
    bytes are deterministic filler that compresses about as well as real firmware (to ~60 %)."""
    rng = random.Random(seed)
    boot = _image(chip_id, [(0x3FFF0030, bytes(rng.getrandbits(8) for _ in range(0x4000)))], 0x40080400)
    desc = struct.pack(
        "<II8s32s32s16s16s32s32s",
        APP_DESC_MAGIC, 0, b"\0" * 8, version.encode(), b"micropython", b"00:00:00", date.encode(),
        b"v5.4.1", hashlib.sha256(version.encode()).digest(),
    )
    desc += b"\0" * (256 - len(desc))
    app_header_len = 24 + 8 + 256 + 8 + 16 + 32 + 64
    code_len = max(0, size - 0xF000 - app_header_len)
    words = [rng.getrandbits(32).to_bytes(4, "little") for _ in range(64)]
    code = bytearray()
    while len(code) < code_len:
        if rng.random() < 0.55:
            code += rng.randbytes(rng.randrange(8, 64))
        else:
            code += b"".join(rng.choice(words) for _ in range(rng.randrange(2, 16)))
    app = _image(chip_id, [(0x3F400020, desc), (0x400D0020, bytes(code[:code_len]))], 0x40081000)
    merged = bytearray(b"\xff" * (0x10000 - BOOTLOADER_OFFSET))
    merged[0 : len(boot)] = boot
    table = make_partition_table(vfs_size)
    merged[PARTITION_TABLE_OFFSET - BOOTLOADER_OFFSET : PARTITION_TABLE_OFFSET - BOOTLOADER_OFFSET + len(table)] = (
        table
    )
    return bytes(merged) + app


@dataclass(frozen=True, slots=True)
class Partition:
    label: str
    ptype: int
    subtype: int
    offset: int
    size: int


def parse_partition_table(data: bytes) -> list[Partition] | None:
    """Entries of a partition table (None when it is absent, torn or its MD5 row does not match)."""
    out: list[Partition] = []
    for i in range(0, min(len(data), 0xC00), 32):
        row = data[i : i + 32]
        if row[:2] == PART_MAGIC:
            ptype, subtype, offset, size, label, _flags = struct.unpack("<BBII16sI", row[2:])
            out.append(Partition(label.rstrip(b"\0").decode("ascii", "replace"), ptype, subtype, offset, size))
            continue
        if row[:2] == PART_MD5_MAGIC:
            return out if hashlib.md5(data[:i]).digest() == row[16:32] else None
        break
    return out or None


def _check_image(flash: bytes | bytearray, offset: int) -> tuple[str | None, int]:
    """(error or None, image length) of the app/bootloader image at offset, as the bootloader checks it."""
    if offset + 24 > len(flash) or flash[offset] != IMAGE_MAGIC:
        return f"invalid header: 0x{int.from_bytes(flash[offset:offset + 4], 'little'):08x}", 0
    nseg = flash[offset + 1]
    pos = offset + 24
    checksum = CHECKSUM_SEED
    for _ in range(nseg):
        if pos + 8 > len(flash):
            return "image truncated", 0
        _addr, length = struct.unpack_from("<II", flash, pos)
        if length > len(flash) - pos - 8:
            return f"segment length 0x{length:x} out of range", 0
        seg = flash[pos + 8 : pos + 8 + length]
        for b in seg:
            checksum ^= b
        pos += 8 + length
    pos += 15 - (pos - offset) % 16
    if pos >= len(flash) or flash[pos] != checksum:
        read = flash[pos] if pos < len(flash) else 0
        return f"Checksum failed. Calculated 0x{checksum:02x} read 0x{read:02x}", 0
    pos += 1
    if flash[offset + 23] == 1:
        if hashlib.sha256(bytes(flash[offset:pos])).digest() != bytes(flash[pos : pos + 32]):
            return "image has invalid SHA-256 hash", 0
        pos += 32
    return None, pos - offset


# --- the filesystem partition ------------------------------------------------------------------------------


def fs_usage_blocks(files: Mapping[str, bytes], dirs: Iterable[str]) -> int:
    """Blocks in use, LittleFS-style: root metadata pair, a pair per directory, whole blocks per file
    (files up to 512 bytes are inlined in their directory's metadata)."""
    used = _FS_ROOT_BLOCKS * _FS_BLOCK
    for d in dirs:
        if d != "/":
            used += 2 * _FS_BLOCK
    for data in files.values():
        used += _FS_ENTRY_OVERHEAD
        if len(data) > _FS_INLINE_MAX:
            used += -(-len(data) // _FS_BLOCK) * _FS_BLOCK
    return -(-used // _FS_BLOCK)


def _encode_fs(files: Mapping[str, bytes], dirs: Iterable[str]) -> bytes:
    body = bytearray()
    entries = [(b"D", d, b"") for d in sorted(dirs) if d != "/"] + [(b"F", p, files[p]) for p in sorted(files)]
    body += struct.pack("<I", len(entries))
    for kind, path, data in entries:
        raw = path.encode()
        body += kind + struct.pack("<H", len(raw)) + raw + struct.pack("<I", len(data)) + data
    return _FS_MAGIC + struct.pack("<II", len(body), zlib.crc32(body)) + bytes(body)


def _decode_fs(region: bytes | bytearray) -> tuple[dict[str, bytes], set[str]] | None:
    if bytes(region[:8]) != _FS_MAGIC:
        return None
    length, crc = struct.unpack_from("<II", region, 8)
    body = bytes(region[16 : 16 + length])
    if len(body) != length or zlib.crc32(body) != crc:
        return None
    files: dict[str, bytes] = {}
    dirs = {"/"}
    (count,) = struct.unpack_from("<I", body, 0)
    pos = 4
    for _ in range(count):
        kind = body[pos : pos + 1]
        (plen,) = struct.unpack_from("<H", body, pos + 1)
        path = body[pos + 3 : pos + 3 + plen].decode()
        pos += 3 + plen
        (dlen,) = struct.unpack_from("<I", body, pos)
        data = body[pos + 4 : pos + 4 + dlen]
        pos += 4 + dlen
        if kind == b"D":
            dirs.add(path)
        else:
            files[path] = data
    return files, dirs


# --- MicroPython side of the board (runs inside the WebAssembly interpreter) --------------------------------

_BOARD_PY = r'''
import sys, io, os, vfs, json, binascii

class _EmuReset(BaseException):
    pass

class _EmuBootloader(BaseException):
    pass

_S_IFDIR = 0x4000
_S_IFREG = 0x8000


class _EmuFile(io.IOBase):
    def __init__(self, fs, path, mode, data):
        self._fs = fs
        self._path = path
        self._buf = bytearray(data)
        self._pos = len(self._buf) if "a" in mode else 0
        self._text = "b" not in mode
        self._writable = ("w" in mode) or ("a" in mode) or ("+" in mode)
        self._readable = ("r" in mode) or ("+" in mode)
        self._closed = False

    def readinto(self, buf):
        n = min(len(buf), len(self._buf) - self._pos)
        buf[0:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def read(self, n=-1):
        if not self._readable:
            raise OSError(9)
        if n is None or n < 0:
            n = len(self._buf) - self._pos
        out = bytes(self._buf[self._pos:self._pos + n])
        self._pos += len(out)
        return out.decode() if self._text else out

    def readline(self):
        end = self._buf.find(b"\n", self._pos) if hasattr(self._buf, "find") else -1
        if end < 0:
            i = self._pos
            while i < len(self._buf) and self._buf[i] != 10:
                i += 1
            end = i
        end = min(end + 1, len(self._buf))
        out = bytes(self._buf[self._pos:end])
        self._pos = end
        return out.decode() if self._text else out

    def write(self, data):
        if self._closed or not self._writable:
            raise OSError(9)
        if isinstance(data, str):
            data = data.encode()
        end = self._pos + len(data)
        self._fs._reserve(self._path, max(end, len(self._buf)))
        if end > len(self._buf):
            self._buf.extend(bytes(end - len(self._buf)))
        self._buf[self._pos:end] = data
        self._pos = end
        return len(data)

    def seek(self, off, whence=0):
        base = 0 if whence == 0 else (self._pos if whence == 1 else len(self._buf))
        self._pos = max(0, base + off)
        return self._pos

    def tell(self):
        return self._pos

    def flush(self):
        if self._writable and not self._closed:
            self._fs._commit(self._path, bytes(self._buf))

    def close(self):
        if not self._closed:
            self.flush()
            self._closed = True

    def ioctl(self, req, arg):
        if req == 4:
            self.close()
        elif req == 3:
            self.flush()
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _EmuFS:
    """Files in a dict, LittleFS-like block accounting; every change is reported back to the emulator."""

    def __init__(self, files, dirs, blocks):
        self.files = files
        self.dirs = dirs
        self.blocks = blocks
        self.cwd = "/"
        self.changed = {}

    def _abs(self, path):
        if not path.startswith("/"):
            path = (self.cwd.rstrip("/") + "/" + path) if path else self.cwd
        parts = []
        for p in path.split("/"):
            if p == "" or p == ".":
                continue
            if p == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(p)
        return "/" + "/".join(parts)

    def _parent(self, path):
        i = path.rfind("/")
        return path[:i] if i > 0 else "/"

    def _usage(self, override_path=None, override_len=0):
        used = 2 * 4096
        for d in self.dirs:
            if d != "/":
                used += 2 * 4096
        for p in self.files:
            n = override_len if p == override_path else len(self.files[p])
            used += 128
            if n > 512:
                used += ((n + 4095) // 4096) * 4096
        if override_path is not None and override_path not in self.files:
            used += 128
            if override_len > 512:
                used += ((override_len + 4095) // 4096) * 4096
        return (used + 4095) // 4096

    def _reserve(self, path, new_len):
        if self._usage(path, new_len) > self.blocks:
            raise OSError(28)

    def _commit(self, path, data):
        self.files[path] = data
        self.changed[path] = True

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        path = self._abs(path)
        if path in self.dirs:
            raise OSError(21)
        if self._parent(path) not in self.dirs:
            raise OSError(2)
        if "w" in mode:
            self._reserve(path, 0)
            self._commit(path, b"")
            return _EmuFile(self, path, mode, b"")
        if path not in self.files:
            if "a" in mode:
                self._reserve(path, 0)
                self._commit(path, b"")
            else:
                raise OSError(2)
        return _EmuFile(self, path, mode, self.files[path])

    def ilistdir(self, path):
        path = self._abs(path)
        if path not in self.dirs:
            raise OSError(2)
        pre = path.rstrip("/") + "/"
        out = []
        for d in self.dirs:
            if d != "/" and self._parent(d) == path:
                out.append((d[len(pre):], _S_IFDIR, 0, 0))
        for p in self.files:
            if self._parent(p) == path:
                out.append((p[len(pre):], _S_IFREG, 0, len(self.files[p])))
        return iter(out)

    def stat(self, path):
        path = self._abs(path)
        if path in self.dirs:
            return (_S_IFDIR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        if path in self.files:
            return (_S_IFREG, 0, 0, 0, 0, 0, len(self.files[path]), 0, 0, 0)
        raise OSError(2)

    def statvfs(self, path):
        used = self._usage()
        free = max(0, self.blocks - used)
        return (4096, 4096, self.blocks, free, free, 0, 0, 0, 0, 255)

    def remove(self, path):
        path = self._abs(path)
        if path in self.dirs:
            raise OSError(21)
        if path not in self.files:
            raise OSError(2)
        del self.files[path]
        self.changed[path] = False

    def rename(self, old, new):
        old = self._abs(old)
        new = self._abs(new)
        if old not in self.files:
            raise OSError(2)
        if self._parent(new) not in self.dirs or new in self.dirs:
            raise OSError(2)
        data = self.files.pop(old)
        self.changed[old] = False
        self._commit(new, data)

    def mkdir(self, path):
        path = self._abs(path)
        if path in self.dirs or path in self.files:
            raise OSError(17)
        if self._parent(path) not in self.dirs:
            raise OSError(2)
        if self._usage() + 2 > self.blocks:
            raise OSError(28)
        self.dirs[path] = True
        self.changed[path + "/"] = True

    def rmdir(self, path):
        path = self._abs(path)
        if path not in self.dirs or path == "/":
            raise OSError(2)
        for p in list(self.files) + list(self.dirs):
            if p != path and p.startswith(path + "/"):
                raise OSError(39)
        del self.dirs[path]
        self.changed[path + "/"] = False

    def chdir(self, path):
        path = self._abs(path)
        if path not in self.dirs:
            raise OSError(2)
        self.cwd = path

    def getcwd(self):
        return self.cwd


class _Machine:
    PWRON_RESET = 1
    HARD_RESET = 2
    WDT_RESET = 3
    DEEPSLEEP_RESET = 4
    SOFT_RESET = 5

    def __init__(self, mac):
        self._mac = mac

    def unique_id(self):
        return self._mac

    def reset(self):
        raise _EmuReset()

    def soft_reset(self):
        raise _EmuReset()

    def bootloader(self):
        raise _EmuBootloader()

    def freq(self, f=None):
        return 160000000

    def reset_cause(self):
        return 1


def _emu_boot(state_json):
    st = json.loads(state_json)
    files = {}
    for p in st["files"]:
        files[p] = binascii.a2b_base64(st["files"][p].encode())
    dirs = {}
    for d in st["dirs"]:
        dirs[d] = True
    fs = _EmuFS(files, dirs, st["blocks"])
    vfs.umount("/")
    vfs.mount(fs, "/")
    os.chdir("/")
    sys.path.clear()
    sys.path.extend(["", ".frozen", "/lib"])
    sys.modules["machine"] = _Machine(binascii.unhexlify(st["mac"]))
    _uname = ("esp32", "esp32", st["release"], st["version"], st["machine"])

    def uname():
        return _uname
    os.uname = uname
    return fs


def _emu_exec(src, mode):
    global _emu_g
    err = io.StringIO()
    action = ""
    try:
        code = compile(src, "<stdin>", mode)
        exec(code, _emu_g)
    except _EmuBootloader:
        action = "bootloader"
    except _EmuReset:
        action = "reset"
    except BaseException as e:
        buf = io.StringIO()
        sys.print_exception(e, buf)
        err.write("\n".join(l for l in buf.getvalue().split("\n") if "in _emu_exec" not in l))
    changes = {}
    for p in _emu_fs.changed:
        if p.endswith("/"):
            changes[p] = _emu_fs.changed[p]
        elif _emu_fs.changed[p] and p in _emu_fs.files:
            changes[p] = binascii.b2a_base64(_emu_fs.files[p]).decode().strip()
        else:
            changes[p] = None
    _emu_fs.changed = {}
    return json.dumps({"err": err.getvalue(), "action": action, "changes": changes})

_emu_g = {"__name__": "__main__"}
'''

_DRIVER_JS = r"""
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
const { loadMicroPython } = await import(pathToFileURL(process.env.LIFELINE_MPY_PACKAGE).href);
let out = [];
const collect = (bytes) => { out.push(Buffer.from(bytes)); };
const mp = await loadMicroPython({ heapsize: 1024 * 1024, stdout: collect, stderr: collect, linebuffer: false });
const reply = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  let req;
  try { req = JSON.parse(line); } catch (e) { reply({ error: "bad request" }); continue; }
  out = [];
  try {
    if (req.op === "boot") {
      mp.runPython(req.board);
      mp.globals.set("_emu_state", req.state);
      mp.runPython("_emu_fs = _emu_boot(_emu_state)\ndel _emu_state");
      reply({ ok: true, out: Buffer.concat(out).toString("base64") });
    } else if (req.op === "exec") {
      mp.globals.set("_emu_src", req.code);
      mp.globals.set("_emu_mode", req.mode || "exec");
      mp.runPython("_emu_result = _emu_exec(_emu_src, _emu_mode)\ndel _emu_src");
      const result = JSON.parse(mp.globals.get("_emu_result"));
      mp.runPython("del _emu_result");
      result.out = Buffer.concat(out).toString("base64");
      reply(result);
    } else {
      reply({ error: "unknown op" });
    }
  } catch (e) {
    reply({ error: String(e && e.message ? e.message : e), out: Buffer.concat(out).toString("base64") });
  }
}
"""


class _MicroPythonBoard:
    """One boot of MicroPython: a Node process running the WebAssembly port, fed one request at a time."""

    def __init__(self, workdir: Path) -> None:
        node = os.environ.get("LIFELINE_NODE") or shutil.which("node") or shutil.which("nodejs")
        if not node:
            raise EmulatorError("Node.js is not installed (the emulated board runs MicroPython WebAssembly)")
        if not _MPY_PACKAGE.is_file():
            raise EmulatorError(f"MicroPython WebAssembly is missing ({_MPY_PACKAGE}); run tools/bootstrap.sh setup")
        driver = workdir / "board.mjs"
        if not driver.exists():
            driver.write_text(_DRIVER_JS, encoding="utf-8")
        env = dict(os.environ, LIFELINE_MPY_PACKAGE=str(_MPY_PACKAGE))
        self._proc = subprocess.Popen(
            [node, str(driver)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=_MPY_PACKAGE.parent,
            env=env,
        )

    def request(self, req: Mapping[str, object]) -> dict[str, object]:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(req).encode() + b"\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            raise EmulatorError(f"the MicroPython process died: {exc}") from None
        if not line:
            raise EmulatorError("the MicroPython process died")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise EmulatorError("bad reply from the MicroPython process")
        if "error" in reply:
            raise EmulatorError(f"MicroPython board: {reply['error']}")
        return reply

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# --- SLIP -------------------------------------------------------------------------------------------------


def slip_encode(payload: bytes) -> bytes:
    body = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class _SlipDecoder:
    """Splits a byte stream into SLIP frames; malformed escapes and overlong frames are counted and dropped."""

    def __init__(self, rejects: Counter[str]) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self._rejects = rejects

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """Complete frames in ``data`` (plus earlier partial input) and the length of the partial tail."""
        frames: list[bytes] = []
        parts = data.split(b"\xc0")
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            if self._in_frame:
                self._buf += part
                if len(self._buf) > 2 * MAX_FRAME:
                    self._rejects["frame_too_long"] += 1
                    self._buf.clear()
                    self._in_frame = False
            elif part:
                self._rejects["noise_outside_frame"] += len(part)
            if last:
                break
            # an END byte: closes the current frame (if any) and opens the next one
            if self._in_frame and self._buf:
                frame = self._unescape(bytes(self._buf))
                if frame is not None:
                    frames.append(frame)
            self._buf.clear()
            self._in_frame = True
        return frames, len(self._buf) if self._in_frame else 0

    def _unescape(self, raw: bytes) -> bytes | None:
        if _BAD_ESCAPE.search(raw):
            self._rejects["bad_slip_escape"] += 1
            return None
        frame = raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
        if len(frame) > MAX_FRAME:
            self._rejects["frame_too_long"] += 1
            return None
        return frame


_BAD_ESCAPE = re.compile(rb"\xdb(?![\xdc\xdd])", re.DOTALL)


# --- the emulator -----------------------------------------------------------------------------------------

DOWNLOAD = "download"
APP = "app"
DEAD = "no_app"  # the bootloader found nothing bootable: it prints why and waits for a reset


class _Unplugged(Exception):
    pass


class Esp32Emulator:
    """One simulated board. ``start()`` creates the pty (:attr:`path`, a symlink like a /dev/ttyUSB node)
    and, with ``tcp=True``, a loopback TCP port (:attr:`url` = ``socket://127.0.0.1:PORT``); a thread
    answers both. Flash and eFuses persist across :meth:`unplug`/:meth:`replug` and resets."""

    def __init__(
        self,
        *,
        chip: ChipIdentity | None = None,
        faults: Faults | None = None,
        boot_mode: str = DOWNLOAD,
        tcp: bool = False,
        flash_size: int = FLASH_SIZE,
        workdir: str | Path | None = None,
        seed: int = 7,
    ) -> None:
        if boot_mode not in (DOWNLOAD, APP):
            raise ValueError("boot_mode must be 'download' (BOOT strap held) or 'app'")
        self.chip = chip or ChipIdentity()
        self.faults = faults or Faults()
        self.boot_strap = boot_mode  # what a power-up or reset does: GPIO0 low = download
        self.flash = bytearray(b"\xff" * flash_size)
        self.stats = Stats()
        self.rejects: Counter[str] = Counter()
        self.modelled_s = 0.0
        self.modelled_by: dict[str, float] = {}  # serial_rom, serial_repl, flash_erase, flash_program, rom_md5
        self.console: list[str] = []  # what the board printed outside protocol replies (boot log)
        self.failures: list[str] = []  # internal errors of the emulated board (tests assert it stays empty)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lifeline-esp32-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / "ttyUSB0"
        self._tcp_wanted = tcp
        self.url: str | None = None
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._sel: selectors.DefaultSelector | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._master: int | None = None
        self._slave_keep: int | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._plugged = False
        self._mp: _MicroPythonBoard | None = None
        self._version = ""
        self._date = ""
        self._fs_files: dict[str, bytes] = {}
        self._fs_dirs: set[str] = {"/"}
        self._reset_volatile()

    # ---- life cycle ----------------------------------------------------------------------------------
    def start(self) -> Esp32Emulator:
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        if self._tcp_wanted:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self._listener.setblocking(False)
            self._sel.register(self._listener, selectors.EVENT_READ, "accept")
            self.url = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"
        with self._lock:
            self._plug()
        self._thread = threading.Thread(target=self._loop, name="esp32-emulator", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            self._unplug_locked()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._sel is not None:
            self._sel.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Esp32Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unplug(self) -> None:
        """Pull the USB cable: the pty closes (host reads fail), the device node disappears, power is lost."""
        with self._lock:
            self._unplug_locked()

    def replug(self, boot_mode: str | None = None) -> None:
        """Plug the cable back in (power-up); ``boot_mode`` changes the BOOT strap first."""
        with self._lock:
            if boot_mode is not None:
                self.boot_strap = boot_mode
            if not self._plugged:
                self._plug()

    def reset(self, boot_mode: str | None = None) -> None:
        """Press EN (with BOOT held when boot_mode is 'download')."""
        with self._lock:
            self._power_up(boot_mode or self.boot_strap, cause="0x1 (POWERON_RESET)")

    @property
    def mode(self) -> str:
        """download, app or no_app. Taken under the board's lock: a boot that a reply has announced (FLASH_END,
        machine.bootloader()) has finished by the time this returns, so tests need no waiting."""
        with self._lock:
            return self._mode

    @property
    def plugged(self) -> bool:
        return self._plugged

    # ---- what tests read -----------------------------------------------------------------------------
    def files(self) -> dict[str, bytes]:
        """The board's filesystem as stored in the vfs partition of the flash (empty when erased)."""
        with self._lock:
            decoded = self._read_fs_region()
            return dict(decoded[0]) if decoded else {}

    def vfs_partition(self) -> Partition:
        table = parse_partition_table(bytes(self.flash[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + 0xC00]))
        for p in table or []:
            if p.ptype == 1 and p.subtype == 0x81:
                return p
        return Partition("vfs", 1, 0x81, 0x200000, 0x200000)

    # ---- plumbing ------------------------------------------------------------------------------------
    def _reset_volatile(self) -> None:
        self._mode = DEAD
        self._chip_baud = ROM_BAUD
        self._slip = _SlipDecoder(self.rejects)
        self._regs: dict[int, int] = {}
        self._spi_params: tuple[int, ...] | None = None
        self._attached = False
        self._flashing: dict[str, int] | None = None
        self._inflate: zlib._Decompress | None = None
        self._counts: Counter[int] = Counter()
        self._repl_raw = False
        self._raw_buf = bytearray()
        self._line = bytearray()
        self._paste_state = 0

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self._master = master
        self._slave_keep = slave  # kept open: the host may close and reopen the port, as with USB serial
        tmp = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.path)
        os.set_blocking(master, False)
        self._plugged = True
        if self._sel is not None:
            self._sel.register(master, selectors.EVENT_READ, "pty")
        self._power_up(self.boot_strap, cause="0x1 (POWERON_RESET)")

    def _unplug_locked(self) -> None:
        if not self._plugged:
            return
        self._plugged = False
        self._stop_app()
        if self._master is not None:
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(self._master)
            os.close(self._master)
            self._master = None
        if self._slave_keep is not None:
            os.close(self._slave_keep)
            self._slave_keep = None
        if self._client is not None:
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(self._client)
            self._client.close()
            self._client = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._reset_volatile()

    def _loop(self) -> None:
        assert self._sel is not None
        while True:
            for key, _ in self._sel.select():
                tag = key.data
                if tag == "stop":
                    return
                with self._lock:
                    try:
                        if tag == "accept":
                            self._accept()
                        elif tag == "pty" and self._master is not None:
                            self._read_pty()
                        elif tag == "tcp" and self._client is not None:
                            self._read_tcp()
                    except _Unplugged:
                        self._unplug_locked()
                    except EmulatorError as exc:  # the board's MicroPython died: it hangs, as a crashed chip
                        self.failures.append(str(exc))
                        self._stop_app()
                        self._mode = DEAD

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        conn, _ = self._listener.accept()
        if self._client is not None or not self._plugged:
            conn.close()
            return
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a serial server forwards bytes at once
        self._client = conn
        self._sel.register(conn, selectors.EVENT_READ, "tcp")

    def _read_pty(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:
            return
        if data:
            self._receive(data, self._host_baud_pty())

    def _read_tcp(self) -> None:
        assert self._client is not None and self._sel is not None
        try:
            data = self._client.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._sel.unregister(self._client)
            self._client.close()
            self._client = None
            return
        self._receive(data, None)

    def _host_baud_pty(self) -> int | None:
        if self._slave_keep is None:
            return None
        try:
            attrs = termios.tcgetattr(self._slave_keep)
        except termios.error:
            return None
        return _SPEEDS.get(attrs[5])

    def _send(self, data: bytes) -> None:
        if not data:
            return
        self.stats.bytes_out += len(data)
        self._model("serial_rom" if self._mode == DOWNLOAD else "serial_repl", len(data) * 10 / self._chip_baud)
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.sendall(data)
            return
        if self._master is None:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                # nobody reads the port: wait a little for the host, then drop (a UART does not block)
                _r, writable, _x = select.select([], [self._master], [], 2.0)
                if not writable:
                    self.rejects["tx_dropped_bytes"] += len(view)
                    return
                continue
            except OSError:
                return
            view = view[n:]

    def _model(self, what: str, seconds: float) -> None:
        self.modelled_s += seconds
        self.modelled_by[what] = self.modelled_by.get(what, 0.0) + seconds

    def _console(self, text: str) -> None:
        self.console.append(text)
        self._send(text.encode())

    # ---- power and boot ------------------------------------------------------------------------------
    def _power_up(self, strap: str, cause: str) -> None:
        self._stop_app()
        self._reset_volatile()
        self.stats.boots += 1
        if strap == DOWNLOAD:
            self._mode = DOWNLOAD
            self._console(
                f"ets Jul 29 2019 12:21:46\r\n\r\nrst:{cause},boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
                "waiting for download\r\n"
            )
            return
        self._boot_flash(cause)

    def _boot_flash(self, cause: str) -> None:
        self._console(f"ets Jul 29 2019 12:21:46\r\n\r\nrst:{cause},boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")
        err, _ = _check_image(self.flash, BOOTLOADER_OFFSET)
        if err:
            self._mode = DEAD
            self._console(f"{err}\r\n")
            return
        table = parse_partition_table(bytes(self.flash[PARTITION_TABLE_OFFSET : PARTITION_TABLE_OFFSET + 0xC00]))
        if not table:
            self._mode = DEAD
            self._console("E (62) flash_parts: partition table verify failed\r\n"
                          "E (66) boot: Failed to verify partition table\r\n")
            return
        apps = [p for p in table if p.ptype == 0]
        if not apps:
            self._mode = DEAD
            self._console("E (70) boot: No bootable app partitions in the partition table\r\n")
            return
        app = apps[0]
        err, length = _check_image(self.flash, app.offset)
        if err or length > app.size:
            self._mode = DEAD
            self._console(f"E (412) esp_image: {err or 'image too large'}\r\n"
                          "E (415) boot: Factory app partition is not bootable\r\n"
                          "E (420) boot: No bootable app partitions in the partition table\r\n")
            return
        desc_at = app.offset + 24 + 8
        magic, _sv, _r, version, project, _t, date = struct.unpack_from("<II8s32s32s16s16s", self.flash, desc_at)
        if magic != APP_DESC_MAGIC or project.rstrip(b"\0") != b"micropython":
            self._mode = DEAD
            self._console("E (430) boot: the app is not MicroPython\r\n")
            return
        self._version = version.rstrip(b"\0").decode()
        self._date = date.rstrip(b"\0").decode()
        self._start_app()

    def _start_app(self) -> None:
        decoded = self._read_fs_region()
        fresh = decoded is None
        if decoded is None:
            self._fs_files, self._fs_dirs = {"/boot.py": BOOT_PY}, {"/"}
        else:
            self._fs_files, self._fs_dirs = decoded
        part = self.vfs_partition()
        blocks = part.size // _FS_BLOCK
        if fresh:
            self._write_fs_region()
        self._mp = _MicroPythonBoard(self.workdir)
        state = {
            "files": {p: base64.b64encode(d).decode() for p, d in self._fs_files.items()},
            "dirs": sorted(self._fs_dirs),
            "blocks": blocks,
            "mac": self.chip.mac.hex(),
            "machine": EMULATOR_MACHINE,
            "version": f"{self._version} on {self._date}",
            "release": self._version.lstrip("v"),
        }
        self._mp.request({"op": "boot", "board": _BOARD_PY, "state": json.dumps(state)})
        self._mode = APP
        if fresh:
            self._console("Performing initial setup\r\n")
        self._console(self._banner() + "\r\nType \"help()\" for more information.\r\n>>> ")

    def _banner(self) -> str:
        return MICROPYTHON_BANNER.format(version=self._version, date=self._date)

    def _prompt_banner(self) -> bytes:
        return (self._banner() + '\r\nType "help()" for more information.\r\n>>> ').encode()

    def _stop_app(self) -> None:
        if self._mp is not None:
            self._mp.close()
            self._mp = None

    def _read_fs_region(self) -> tuple[dict[str, bytes], set[str]] | None:
        part = self.vfs_partition()
        return _decode_fs(self.flash[part.offset : part.offset + part.size])

    def _write_fs_region(self) -> None:
        part = self.vfs_partition()
        blob = _encode_fs(self._fs_files, self._fs_dirs)
        if len(blob) > part.size:
            raise EmulatorError("filesystem image larger than the vfs partition (emulator accounting bug)")
        # a filesystem write is an erase + program of the touched sectors
        end = part.offset + -(-len(blob) // SECTOR) * SECTOR
        self.flash[part.offset : end] = b"\xff" * (end - part.offset)
        self.flash[part.offset : part.offset + len(blob)] = blob

    # ---- bytes from the host -------------------------------------------------------------------------
    def _receive(self, data: bytes, host_baud: int | None) -> None:
        self.stats.bytes_in += len(data)
        self._model("serial_rom" if self._mode == DOWNLOAD else "serial_repl", len(data) * 10 / self._chip_baud)
        if host_baud is not None and host_baud != self._chip_baud:
            # both ends at different rates: the chip's UART sees framing errors, not bytes
            self.rejects["baud_mismatch_bytes"] += len(data)
            data = bytes((b ^ 0x5A) | 0x01 for b in data)
        if self._mode == DOWNLOAD:
            self._rom_receive(data)
        elif self._mode == APP:
            self._repl_receive(data)
        else:
            self.rejects["input_while_not_running"] += len(data)

    # ---- ROM serial loader ---------------------------------------------------------------------------
    def _rom_receive(self, data: bytes) -> None:
        frames, _rest = self._slip.feed(data)
        for i, frame in enumerate(frames):
            self._rom_frame(frame)
            if self._mode != DOWNLOAD:
                # the loader left (FLASH_END): whatever followed goes to the new program
                self.rejects["bytes_after_loader_exit"] += sum(len(f) for f in frames[i + 1 :])
                return

    def _rom_frame(self, frame: bytes) -> None:
        lost_above = self.faults.max_reliable_baud
        if lost_above is not None and self._chip_baud > lost_above and len(frame) > 40:
            self.rejects["lost_framing_error"] += 1
            return
        if len(frame) < 8:
            self.rejects["short_frame"] += 1
            return
        direction, op, size, chk = struct.unpack_from("<BBHI", frame)
        if direction != 0:
            self.rejects["bad_direction"] += 1
            return
        body = frame[8:]
        if len(body) != size:
            self.rejects["bad_length"] += 1
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        self._counts[op] += 1
        armed = self.faults.unplug_in_flash_data
        if armed is not None and op in (FLASH_DATA, FLASH_DEFL_DATA) and (
            self._counts[FLASH_DATA] + self._counts[FLASH_DEFL_DATA] == armed
        ):
            # the cable comes out while this frame is on the wire: no answer, the port goes away
            self.faults.unplug_in_flash_data = None
            self.rejects["unplugged_mid_frame"] += 1
            raise _Unplugged
        self.stats.commands[_COMMAND_NAMES.get(op, f"0x{op:02x}")] += 1
        handler = _HANDLERS.get(op)
        if handler is None or (op == GET_SECURITY_INFO and self.chip.name == "ESP32"):
            self.rejects["unsupported_command"] += 1
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        handler(self, op, body, chk)

    def _reply(self, op: int, value: int, data: bytes, error: int = 0) -> None:
        status = bytes([1 if error else 0, error, 0, 0])
        payload = data + status
        self._send(slip_encode(struct.pack("<BBHI", 1, op, len(payload), value) + payload))

    def _cmd_sync(self, op: int, body: bytes, chk: int) -> None:
        if body != b"\x07\x07\x12\x20" + b"\x55" * 32:
            self.rejects["bad_sync"] += 1
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        for _ in range(8):
            self._reply(op, 0x20120707, b"")

    def _reg(self, addr: int) -> int:
        if addr in self._regs:
            return self._regs[addr]
        chip = self.chip
        mac = chip.mac
        if chip.name == "ESP32":
            if addr == CHIP_DETECT_MAGIC_REG:
                return ESP32_MAGIC
            if EFUSE_BASE_ESP32 <= addr < EFUSE_BASE_ESP32 + 0x100:
                return self._efuse_esp32((addr - EFUSE_BASE_ESP32) // 4)
            if addr == APB_CTL_DATE_REG:
                return (1 << 31) if chip.revision[0] >= 3 else 0
            if addr == RTCCALICFG1_REG:
                return 512 << 7  # ROM's 8 MHz calibration: 512 * 15625 * 200 / 40 = 40 MHz (no drift)
        else:  # ESP32-S3
            if addr == EFUSE_BASE_S3 + 0x44:
                return int.from_bytes(mac[2:6], "big")
            if addr == EFUSE_BASE_S3 + 0x48:
                return int.from_bytes(mac[0:2], "big")
        if addr == UART_CLKDIV_REG:
            return round(XTAL_HZ / self._chip_baud) & 0xFFFFF
        return 0

    def _efuse_esp32(self, word: int) -> int:
        mac = self.chip.mac
        major, minor = self.chip.revision
        if word == 1:
            return int.from_bytes(mac[2:6], "big")
        if word == 2:
            return (_mac_crc8(mac) << 16) | int.from_bytes(mac[0:2], "big")
        if word == 3:
            return (1 << 9) | ((1 << 15) if major >= 1 else 0) | (1 << 13)  # D0WD package, rev bit, 240 MHz
        if word == 4:
            return 200  # EFUSE_RD_CK8M_FREQ (see RTCCALICFG1)
        if word == 5:
            return ((1 << 20) if major >= 2 else 0) | ((minor & 3) << 24)
        return 0

    def _cmd_read_reg(self, op: int, body: bytes, chk: int) -> None:
        if len(body) != 4:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        (addr,) = struct.unpack("<I", body)
        self._reply(op, self._reg(addr), b"")

    def _cmd_write_reg(self, op: int, body: bytes, chk: int) -> None:
        if len(body) % 16:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        for i in range(0, len(body), 16):
            addr, value, mask, _delay = struct.unpack_from("<IIII", body, i)
            old = self._reg(addr)
            self._regs[addr] = (old & ~mask) | (value & mask)
            if addr == self._spi[0] and value & SPI_CMD_USR:
                self._spi_user_command()
        self._reply(op, 0, b"")

    @property
    def _spi(self) -> tuple[int, int, int]:
        """(base, USR2 offset, W0 offset) of the SPI1 peripheral esptool drives for flash commands."""
        return (SPI_BASE, SPI_USR2_OFFS, SPI_W0_OFFS) if self.chip.name == "ESP32" else (0x60002000, 0x20, 0x58)

    def _spi_user_command(self) -> None:
        base, usr2, w0 = self._spi
        cmd = self._regs.get(base + usr2, 0) & 0xFF
        if cmd == 0x9F:  # RDID
            self._regs[base + w0] = JEDEC_ID
        elif cmd in (0x05, 0x35, 0x15):  # status registers
            self._regs[base + w0] = 0
        else:
            self._regs[base + w0] = 0xFFFFFFFF
        self._regs[base] = self._regs.get(base, 0) & ~SPI_CMD_USR

    def _cmd_security_info(self, op: int, body: bytes, chk: int) -> None:
        data = struct.pack("<IB7BII", 0, 0, *([0] * 7), self.chip.chip_id, 0)
        self._reply(op, 0, data)

    def _cmd_spi_attach(self, op: int, body: bytes, chk: int) -> None:
        if len(body) != 8:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        self._attached = True
        self._reply(op, 0, b"")

    def _cmd_spi_set_params(self, op: int, body: bytes, chk: int) -> None:
        if len(body) != 24:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        self._spi_params = struct.unpack("<6I", body)
        self._reply(op, 0, b"")

    def _cmd_change_baud(self, op: int, body: bytes, chk: int) -> None:
        if len(body) != 8:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        new, _old = struct.unpack("<II", body)
        if not 9600 <= new <= 5_000_000:
            self._reply(op, 0, b"", ERR_BAD_PARAM)
            return
        self._reply(op, 0, b"")  # answered at the old rate, then the UART switches
        self._chip_baud = new

    def _erase(self, offset: int, size: int) -> None:
        """ROM erase: 4 KiB sectors up to a 64 KiB boundary, 64 KiB blocks, then sectors."""
        start = offset - offset % SECTOR
        end = offset + size
        end += -end % SECTOR
        pos = start
        while pos < end:
            if pos % BLOCK64 == 0 and end - pos >= BLOCK64:
                self.flash[pos : pos + BLOCK64] = b"\xff" * BLOCK64
                self._model("flash_erase", T_BLOCK_ERASE_S)
                pos += BLOCK64
            else:
                self.flash[pos : pos + SECTOR] = b"\xff" * SECTOR
                self._model("flash_erase", T_SECTOR_ERASE_S)
                pos += SECTOR

    def _program(self, offset: int, data: bytes) -> None:
        """NOR programming: bits can only go from 1 to 0 (writing over unerased data corrupts it)."""
        end = min(offset + len(data), len(self.flash))
        old = self.flash[offset:end]
        self.flash[offset:end] = bytes(a & b for a, b in zip(old, data, strict=False))
        self._model("flash_program", -(-len(data) // PAGE) * T_PAGE_PROGRAM_S)

    def _begin(self, op: int, body: bytes, compressed: bool) -> None:
        if len(body) not in (16, 20):
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        erase_size, blocks, block_size, offset = struct.unpack_from("<IIII", body)
        if not self._attached or offset + erase_size > len(self.flash) or block_size == 0:
            self._reply(op, 0, b"", ERR_BAD_PARAM)
            return
        if erase_size:
            self._erase(offset, erase_size)
        self._flashing = {"offset": offset, "blocks": blocks, "block_size": block_size, "seq": 0,
                          "written": 0, "end": offset + erase_size}
        self._inflate = zlib.decompressobj() if compressed else None
        self._reply(op, 0, b"")

    def _cmd_flash_begin(self, op: int, body: bytes, chk: int) -> None:
        self._begin(op, body, compressed=False)

    def _cmd_defl_begin(self, op: int, body: bytes, chk: int) -> None:
        self._begin(op, body, compressed=True)

    def _data(self, op: int, body: bytes, chk: int, compressed: bool) -> None:
        state = self._flashing
        if state is None or (self._inflate is None) == compressed or len(body) < 16:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        length, seq, _z1, _z2 = struct.unpack_from("<IIII", body)
        data = body[16:]
        if length != len(data) or seq != state["seq"]:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        check = CHECKSUM_SEED
        for b in data:
            check ^= b
        if check != (chk & 0xFF):
            self._reply(op, 0, b"", ERR_CHECKSUM)
            return
        n_block = self._counts[FLASH_DATA] + self._counts[FLASH_DEFL_DATA]
        if compressed:
            assert self._inflate is not None
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                self._reply(op, 0, b"", ERR_DEFLATE)
                return
        if self.faults.swap_bytes_in_block == n_block and len(data) > 17:
            self.faults.swap_bytes_in_block = None
            self.rejects["fault_swapped_bytes"] += 1
            data = data[:16] + data[17:18] + data[16:17] + data[18:]
        at = state["offset"] + state["written"]
        if at + len(data) > state["end"] + (0 if compressed else state["block_size"]):
            self._reply(op, 0, b"", ERR_BAD_PARAM)
            return
        self._program(at, data)
        state["written"] += len(data)
        state["seq"] += 1
        self._reply(op, 0, b"")

    def _cmd_flash_data(self, op: int, body: bytes, chk: int) -> None:
        self._data(op, body, chk, compressed=False)

    def _cmd_defl_data(self, op: int, body: bytes, chk: int) -> None:
        self._data(op, body, chk, compressed=True)

    def _cmd_flash_end(self, op: int, body: bytes, chk: int) -> None:
        if len(body) != 4:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        self._flashing = None
        self._inflate = None
        self._reply(op, 0, b"")
        # 0 = reboot, 1 = run user code: either way the ROM leaves the loader and boots from flash,
        # and the UART is back at the ROM's 115200 baud for the bootloader log and MicroPython
        self._power_up(APP, cause="0xc (SW_CPU_RESET)")

    def _cmd_md5(self, op: int, body: bytes, chk: int) -> None:
        if len(body) != 16:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        addr, size, _a, _b = struct.unpack("<IIII", body)
        if addr + size > len(self.flash):
            self._reply(op, 0, b"", ERR_BAD_PARAM)
            return
        self._model("rom_md5", size / ROM_MD5_BYTES_PER_S)
        digest = hashlib.md5(self.flash[addr : addr + size]).hexdigest().encode()
        self._reply(op, 0, digest)

    def _cmd_read_flash_slow(self, op: int, body: bytes, chk: int) -> None:
        if len(body) != 8:
            self._reply(op, 0, b"", ERR_BAD_MESSAGE)
            return
        addr, size = struct.unpack("<II", body)
        if size > 64 or addr + size > len(self.flash):
            self._reply(op, 0, b"", ERR_BAD_PARAM)
            return
        data = bytes(self.flash[addr : addr + size]) + b"\0" * (64 - size)
        self._reply(op, 0, data)

    def _cmd_refuse(self, op: int, body: bytes, chk: int) -> None:
        # RAM download (the flasher stub) is not modelled: this board speaks to esptool --no-stub only
        self.rejects["ram_download_refused"] += 1
        self._reply(op, 0, b"", ERR_BAD_MESSAGE)

    # ---- MicroPython REPL ----------------------------------------------------------------------------
    def _repl_receive(self, data: bytes) -> None:
        for i, b in enumerate(data):
            if self._mode != APP:
                rest = data[i:]
                if self._mode == DOWNLOAD and rest:
                    self._rom_receive(rest)
                return
            if self._repl_raw:
                self._raw_byte(b)
            else:
                self._friendly_byte(b)

    def _friendly_byte(self, b: int) -> None:
        if b == 0x01:  # Ctrl-A: raw REPL
            self._repl_raw = True
            self._raw_buf.clear()
            self._send(b"\r\n" + RAW_REPL_BANNER)
        elif b == 0x02:  # Ctrl-B: banner again
            self._line.clear()
            self._send(b"\r\n" + self._prompt_banner())
        elif b == 0x03:  # Ctrl-C
            self._line.clear()
            self._send(b"\r\n>>> ")
        elif b == 0x04:  # Ctrl-D on the friendly REPL: soft reboot
            if not self._line:
                self._soft_reboot(raw=False)
        elif b in (0x0D, 0x0A):
            line = self._line.decode("utf-8", "replace")
            self._line.clear()
            self._send(b"\r\n")
            if line.strip():
                out, err = self._execute(line, "single")
                self._send(_cooked(out + err))
            if self._mode == APP and not self._repl_raw:
                self._send(b">>> ")
        elif b == 0x7F or b == 0x08:
            if self._line:
                self._line.pop()
                self._send(b"\x08 \x08")
        elif b >= 0x20:
            self._line.append(b)
            self._send(bytes([b]))

    def _raw_byte(self, b: int) -> None:
        if self._paste_state == 1:  # after Ctrl-E in raw mode
            self._paste_state = 2 if b == ord("A") else 0
            if self._paste_state == 0:
                self._raw_buf.extend(b"\x05" + bytes([b]))
            return
        if self._paste_state == 2:
            self._paste_state = 0
            if b == 0x01:
                self._send(b"R\x00")  # raw-paste not offered: the client falls back to plain raw mode
                return
            self._raw_buf.extend(b"\x05A" + bytes([b]))
            return
        if b == 0x05 and not self._raw_buf:
            self._paste_state = 1
        elif b == 0x01:
            self._raw_buf.clear()
            self._send(b"\r\n" + RAW_REPL_BANNER)
        elif b == 0x02:
            self._repl_raw = False
            self._raw_buf.clear()
            self._send(b"\r\n" + self._prompt_banner())
        elif b == 0x03:
            self._raw_buf.clear()
        elif b == 0x04:
            if not self._raw_buf:
                self._soft_reboot(raw=True)
                return
            src = self._raw_buf.decode("utf-8", "replace")
            self._raw_buf.clear()
            self._send(b"OK")
            self.stats.raw_execs += 1
            limit = self.faults.fail_exec_after
            if limit is not None and self.stats.raw_execs >= limit:
                self.faults.fail_exec_after = None
                raise _Unplugged
            out, err = self._execute(src, "exec")
            if self._mode != APP:
                return  # reset or bootloader: the reply is never finished, as on the chip
            self._send(_cooked(out) + b"\x04" + _cooked(err) + b"\x04>")
        else:
            self._raw_buf.append(b)

    def _execute(self, src: str, mode: str) -> tuple[bytes, bytes]:
        assert self._mp is not None
        reply = self._mp.request({"op": "exec", "code": src, "mode": mode})
        out = base64.b64decode(str(reply.get("out", "")))
        err = str(reply.get("err", "")).encode()
        changes = reply.get("changes") or {}
        if isinstance(changes, dict) and changes:
            self._apply_changes(changes)
        action = reply.get("action")
        if action == "bootloader":
            self._stop_app()
            self._reset_volatile()
            self._mode = DOWNLOAD
            self._console("ets Jul 29 2019 12:21:46\r\n\r\nrst:0x3 (SW_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
                          "waiting for download\r\n")
        elif action == "reset":
            self._power_up(APP, cause="0xc (SW_CPU_RESET)")
        return out, err

    def _apply_changes(self, changes: Mapping[str, object]) -> None:
        for path, value in changes.items():
            if path.endswith("/"):
                d = path[:-1]
                if value:
                    self._fs_dirs.add(d)
                else:
                    self._fs_dirs.discard(d)
            elif value is None:
                self._fs_files.pop(path, None)
            else:
                self._fs_files[path] = base64.b64decode(str(value))
        self._write_fs_region()

    def _soft_reboot(self, raw: bool) -> None:
        assert self._mp is not None
        self._mp.request({"op": "exec", "code": "_emu_g.clear()\n_emu_g['__name__'] = '__main__'", "mode": "exec"})
        if raw:
            self._send(b"OK\r\nMPY: soft reboot\r\n" + RAW_REPL_BANNER)
        else:
            self._send(b"\r\nMPY: soft reboot\r\n" + self._prompt_banner())


def _cooked(data: bytes) -> bytes:
    """MicroPython's stdout turns \\n into \\r\\n on a UART."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _mac_crc8(mac: bytes) -> int:
    """CRC-8 over the MAC as the ESP32 eFuse stores it (polynomial 0x8C reflected, i.e. Dallas/Maxim)."""
    crc = 0
    for byte in mac:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


_SPEEDS = {
    getattr(termios, f"B{rate}"): rate
    for rate in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000,
                 1500000, 2000000)
    if hasattr(termios, f"B{rate}")
}

_COMMAND_NAMES = {
    FLASH_BEGIN: "FLASH_BEGIN", FLASH_DATA: "FLASH_DATA", FLASH_END: "FLASH_END", MEM_BEGIN: "MEM_BEGIN",
    MEM_END: "MEM_END", MEM_DATA: "MEM_DATA", SYNC: "SYNC", WRITE_REG: "WRITE_REG", READ_REG: "READ_REG",
    SPI_SET_PARAMS: "SPI_SET_PARAMS", SPI_ATTACH: "SPI_ATTACH", READ_FLASH_SLOW: "READ_FLASH_SLOW",
    CHANGE_BAUDRATE: "CHANGE_BAUDRATE", FLASH_DEFL_BEGIN: "FLASH_DEFL_BEGIN", FLASH_DEFL_DATA: "FLASH_DEFL_DATA",
    FLASH_DEFL_END: "FLASH_DEFL_END", SPI_FLASH_MD5: "SPI_FLASH_MD5", GET_SECURITY_INFO: "GET_SECURITY_INFO",
}

_HANDLERS = {
    SYNC: Esp32Emulator._cmd_sync,
    READ_REG: Esp32Emulator._cmd_read_reg,
    WRITE_REG: Esp32Emulator._cmd_write_reg,
    GET_SECURITY_INFO: Esp32Emulator._cmd_security_info,
    SPI_ATTACH: Esp32Emulator._cmd_spi_attach,
    SPI_SET_PARAMS: Esp32Emulator._cmd_spi_set_params,
    CHANGE_BAUDRATE: Esp32Emulator._cmd_change_baud,
    FLASH_BEGIN: Esp32Emulator._cmd_flash_begin,
    FLASH_DATA: Esp32Emulator._cmd_flash_data,
    FLASH_END: Esp32Emulator._cmd_flash_end,
    FLASH_DEFL_BEGIN: Esp32Emulator._cmd_defl_begin,
    FLASH_DEFL_DATA: Esp32Emulator._cmd_defl_data,
    FLASH_DEFL_END: Esp32Emulator._cmd_flash_end,
    SPI_FLASH_MD5: Esp32Emulator._cmd_md5,
    READ_FLASH_SLOW: Esp32Emulator._cmd_read_flash_slow,
    MEM_BEGIN: Esp32Emulator._cmd_refuse,
    MEM_DATA: Esp32Emulator._cmd_refuse,
    MEM_END: Esp32Emulator._cmd_refuse,
}

__all__ = [
    "APP",
    "DOWNLOAD",
    "ChipIdentity",
    "EmulatorError",
    "Esp32Emulator",
    "Faults",
    "Partition",
    "make_firmware_image",
    "make_partition_table",
    "parse_partition_table",
]
