"""The ESP32 board emulator against real esptool (CLI and library) and the real MicroPython runtime."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from esptool.cmds import detect_chip  # type: ignore[import-untyped]

from lifeline.provisioning.flasher import Flasher
from lifeline.provisioning.rawrepl import DeviceException, RawRepl
from lifeline.sim_devices.esp32_emulator import (
    APP,
    DOWNLOAD,
    ChipIdentity,
    Esp32Emulator,
    Faults,
    make_firmware_image,
    parse_partition_table,
    slip_encode,
)

IMAGE_SIZE = 300_000


@pytest.fixture(scope="module")
def image() -> bytes:
    return make_firmware_image(IMAGE_SIZE)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Esp32Emulator]:
    with Esp32Emulator(workdir=tmp_path / "board", tcp=True) as e:
        yield e


def _flash(emu: Esp32Emulator, image: bytes) -> None:
    fl = Flasher(str(emu.path), reset_lines=False)
    try:
        fl.connect()
        fl.write_image(image, resume=False)
        fl.verify(image)
        fl.run_app()
    finally:
        fl.close()


def test_esptool_cli_writes_the_image_byte_for_byte(emu: Esp32Emulator, image: bytes, tmp_path: Path) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(image)
    proc = subprocess.run(
        [sys.executable, "-m", "esptool", "--chip", "esp32", "--port", str(emu.path), "--baud", "460800",
         "--before", "no-reset", "--after", "no-reset", "--no-stub", "write-flash", "0x1000", str(fw)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Hash of data verified." in proc.stdout
    assert bytes(emu.flash[0x1000 : 0x1000 + len(image)]) == image
    assert emu.flash[0x1000 + len(image) + 16 :].count(0xFF) == len(emu.flash) - 0x1000 - len(image) - 16
    assert emu.stats.commands["CHANGE_BAUDRATE"] == 1
    assert emu.stats.commands["SPI_FLASH_MD5"] >= 1
    assert emu.mode == DOWNLOAD  # --after no-reset: still in the loader


def test_esptool_reads_chip_and_mac_over_socket_url(emu: Esp32Emulator) -> None:
    assert emu.url is not None and emu.url.startswith("socket://127.0.0.1:")
    esp = detect_chip(emu.url, 115200, "no-reset", False, 3)
    try:
        assert esp.CHIP_NAME == "ESP32"
        assert bytes(esp.read_mac()) == emu.chip.mac
        assert esp.get_chip_description() == "ESP32-D0WD-V3 (revision v3.1)"
        assert esp.flash_id() & 0xFF == 0xEF
    finally:
        esp._port.close()


def test_an_esp32_s3_identifies_itself(tmp_path: Path) -> None:
    with Esp32Emulator(chip=ChipIdentity(name="ESP32-S3"), workdir=tmp_path / "s3") as e:
        esp = detect_chip(str(e.path), 115200, "no-reset", False, 3)
        try:
            assert esp.CHIP_NAME == "ESP32-S3"
            assert bytes(esp.read_mac()) == e.chip.mac
        finally:
            esp._port.close()


def test_rom_garbage_is_counted_and_answered_not_raised(emu: Esp32Emulator) -> None:
    port = serial.Serial(str(emu.path), 115200, timeout=1)
    try:
        port.write(b"\xc0\x00\x08\xdb\x01\xc0")  # bad SLIP escape
        port.write(slip_encode(b"\x00\x0a"))  # shorter than a header
        port.write(slip_encode(struct.pack("<BBHI", 0, 0x0A, 9, 0) + b"\0" * 4))  # length field lies
        port.write(slip_encode(struct.pack("<BBHI", 0, 0x0D, 8, 0) + b"\0" * 8))  # SPI_ATTACH
        port.write(slip_encode(struct.pack("<BBHI", 0, 0x02, 16, 0) + struct.pack("<IIII", 0, 1, 1024, 0x100000)))
        data = b"\x11" * 1024
        port.write(slip_encode(struct.pack("<BBHI", 0, 0x03, 1040, 0x12) + struct.pack("<IIII", 1024, 0, 0, 0) + data))
        replies = b""
        deadline = time.monotonic() + 5
        while replies.count(b"\xc0") < 8 and time.monotonic() < deadline:
            replies += port.read(256)
    finally:
        port.close()
    frames = [f for f in replies.split(b"\xc0") if f]
    status = {f[1]: f[8:] for f in frames}
    assert status[0x0D] == b"\x00\x00\x00\x00"
    assert status[0x03] == b"\x01\x07\x00\x00"  # checksum error (0x11 ^ ... != 0x12)
    assert emu.rejects["bad_slip_escape"] == 1
    assert emu.rejects["short_frame"] == 1
    assert emu.rejects["bad_length"] == 1
    assert emu.flash[0x100000] == 0xFF  # nothing programmed


def test_flashed_board_boots_micropython_and_runs_raw_repl_code(emu: Esp32Emulator, image: bytes) -> None:
    _flash(emu, image)
    with RawRepl.open(str(emu.path), timeout=15) as repl:
        assert repl.eval("__import__('sys').implementation.name") == "micropython"
        assert repl.eval("__import__('os').uname()[3]") == "v1.27.0 on 2025-12-09"
        assert repl.eval("__import__('machine').unique_id() == %r" % emu.chip.mac) == "True"
        repl.exec("f = open('/data.bin', 'wb')\nf.write(bytes(range(256)) * 3)\nf.close()")
        with pytest.raises(DeviceException) as info:
            repl.exec("open('/missing')")
        assert info.value.errno == 2
        assert info.value.traceback.splitlines()[-1] == "OSError: [Errno 2] ENOENT"
    assert emu.mode == APP
    assert emu.files()["/data.bin"] == bytes(range(256)) * 3
    assert "/boot.py" in emu.files()  # MicroPython's first-boot setup
    assert emu.failures == []
    # the filesystem lives in flash: power off and on, it is still there; erase the partition, it is gone
    emu.unplug()
    emu.replug(boot_mode=APP)  # BOOT no longer held: power-up runs the app
    with RawRepl.open(str(emu.path), timeout=15) as repl:
        assert repl.eval("len(open('/data.bin', 'rb').read())") == "768"
    vfs = emu.vfs_partition()
    emu.flash[vfs.offset : vfs.offset + vfs.size] = b"\xff" * vfs.size
    emu.reset()
    assert emu.mode == APP
    assert set(emu.files()) == {"/boot.py"}  # formatted afresh on boot


def test_a_small_vfs_partition_fills_up_with_enospc(tmp_path: Path) -> None:
    img = make_firmware_image(IMAGE_SIZE, vfs_size=0x4000)  # four 4 KiB blocks
    with Esp32Emulator(workdir=tmp_path / "b") as e:
        _flash(e, img)
        with RawRepl.open(str(e.path), timeout=15) as repl:
            assert repl.eval("__import__('os').statvfs('/')[2]") == "4"
            with pytest.raises(DeviceException) as info:
                repl.exec("f = open('/big', 'wb')\nf.write(bytes(9000))")
            assert info.value.errno == 28
            assert info.value.traceback.splitlines()[-1] == "OSError: 28"  # as the ESP32 port prints it


def test_a_damaged_app_does_not_boot(emu: Esp32Emulator, image: bytes) -> None:
    _flash(emu, image)
    emu.flash[0x10000 + 4000] ^= 0xFF  # one byte of the app changes after flashing
    emu.reset(APP)
    assert emu.mode == "no_app"
    assert "Checksum failed" in "".join(emu.console)


def test_partition_table_round_trip(image: bytes) -> None:
    table = parse_partition_table(image[0x7000:0x7C00])
    assert table is not None
    assert [(p.label, p.offset) for p in table] == [("nvs", 0x9000), ("phy_init", 0xF000), ("factory", 0x10000),
                                                   ("vfs", 0x200000)]
    broken = bytearray(image[0x7000:0x7C00])
    broken[40] ^= 1
    assert parse_partition_table(bytes(broken)) is None


def test_swapped_bytes_pass_the_checksum_but_not_the_md5(tmp_path: Path, image: bytes) -> None:
    with Esp32Emulator(faults=Faults(swap_bytes_in_block=3), workdir=tmp_path / "b") as e:
        fl = Flasher(str(e.path), reset_lines=False)
        try:
            fl.connect()
            fl.write_image(image, resume=False)
            want = hashlib.md5(image + b"\xff" * (-len(image) % 4)).hexdigest()
            assert fl.md5(0x1000, len(image) + (-len(image) % 4)) != want
        finally:
            fl.close()
        assert e.rejects["fault_swapped_bytes"] == 1
