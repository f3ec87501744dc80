"""What goes wrong on a bench: pulled cable, wrong chip, damaged data, full filesystem, a board that is
already provisioned, a slow link, the same board twice in a batch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lifeline.provisioning import records
from lifeline.provisioning.flow import DeviceFlow, Options
from lifeline.provisioning.nodeconfig import DeviceSpec
from lifeline.sim_devices.esp32_emulator import APP, DOWNLOAD, ChipIdentity, Esp32Emulator, Faults, make_firmware_image

pytestmark = pytest.mark.micropython


def test_cable_pulled_mid_flash_then_resume(tmp_path: Path, make_options: Callable[..., Options],
                                            spec: DeviceSpec) -> None:
    with Esp32Emulator(faults=Faults(unplug_in_flash_data=150), workdir=tmp_path / "b") as emu:
        opts = make_options(str(emu.path))
        first = DeviceFlow(opts, spec).run()
        assert first.result == "failed"
        assert first.reason == "port_lost"
        assert "check the cable" in first.message
        assert not emu.plugged
        assert first.device_id is not None
        assert not opts.state.done(first.device_id, "flash")
        emu.replug(boot_mode=DOWNLOAD)  # plugged back in with BOOT held
        second = DeviceFlow(opts, spec).run()
        assert second.result == "passed", second.message
        flash_note = dict((s[0], s[2]) for s in second.steps)["flash"]
        assert "already in flash" in flash_note and not flash_note.startswith("0 segments")
        skipped = int(flash_note.split(", ")[1].split()[0])
        assert skipped >= 2  # segments finished before the cable came out were not written again
        img = opts.firmware.data
        assert bytes(emu.flash[0x1000 : 0x1000 + len(img)]) == img


def test_wrong_chip_is_refused_before_writing(tmp_path: Path, make_options: Callable[..., Options],
                                              spec: DeviceSpec) -> None:
    with Esp32Emulator(chip=ChipIdentity(name="ESP32-S3"), workdir=tmp_path / "s3") as emu:
        outcome = DeviceFlow(make_options(str(emu.path)), spec).run()
        assert outcome.result == "refused"
        assert outcome.reason == "wrong_chip"
        assert "ESP32-S3" in outcome.message and "nothing was written" in outcome.message
        assert emu.flash.count(0xFF) == len(emu.flash)
        assert emu.stats.commands["FLASH_BEGIN"] == 0


def test_verify_mismatch_is_detected_and_a_rerun_repairs_it(tmp_path: Path, make_options: Callable[..., Options],
                                                            spec: DeviceSpec) -> None:
    with Esp32Emulator(faults=Faults(swap_bytes_in_block=40), workdir=tmp_path / "b") as emu:
        opts = make_options(str(emu.path))
        first = DeviceFlow(opts, spec).run()
        assert first.result == "failed"
        assert first.reason == "verify_mismatch"
        assert "MD5" in first.message
        assert emu.mode == DOWNLOAD  # the damaged image was not started
        second = DeviceFlow(opts, spec).run()
        assert second.result == "passed", second.message
        note = dict((s[0], s[2]) for s in second.steps)["flash"]
        assert note.startswith("1 segments written")  # only the damaged 64 KiB segment


def test_full_filesystem_is_a_clear_error(tmp_path: Path, make_options: Callable[..., Options],
                                          spec: DeviceSpec) -> None:
    small = tmp_path / "small-vfs.bin"
    small.write_bytes(make_firmware_image(300_000, vfs_size=0x8000))  # 32 KiB: the bundle does not fit
    from lifeline.provisioning import firmware_image

    with Esp32Emulator(workdir=tmp_path / "b") as emu:
        opts = make_options(str(emu.path), firmware=firmware_image.load(small))
        outcome = DeviceFlow(opts, spec).run()
        assert outcome.result == "failed"
        assert outcome.reason == "filesystem_full"
        assert "ENOSPC" in outcome.message and "vfs" in outcome.message
        assert outcome.steps[-1][:2] == ("install", "fail")


def _provisioned_board(tmp_path: Path, image: bytes) -> Esp32Emulator:
    emu = Esp32Emulator(workdir=tmp_path / "old", boot_mode=APP)
    emu.flash[0x1000 : 0x1000 + len(image)] = image
    emu.start()
    from lifeline.provisioning.rawrepl import RawRepl

    with RawRepl.open(str(emu.path), timeout=15) as repl:
        repl.exec("f = open('/config.json', 'w')\nf.write('{\"device_id\": \"00aa00fffe00bb01\"}')\nf.close()")
    return emu


def test_already_provisioned_board_is_refused_unless_forced(
    tmp_path: Path, make_options: Callable[..., Options], spec: DeviceSpec, image_bytes: bytes,
) -> None:
    emu = _provisioned_board(tmp_path, image_bytes)
    try:
        opts = make_options(str(emu.path))
        refused = DeviceFlow(opts, spec).run()
        assert refused.result == "refused"
        assert refused.reason == "already_provisioned"
        assert "--force" in refused.message and "00aa00fffe00bb01" in refused.message
        assert emu.mode == APP and "/config.json" in emu.files()
        assert emu.stats.commands["FLASH_BEGIN"] == 0
        forced = DeviceFlow(make_options(str(emu.path), force=True), spec).run()
        assert forced.result == "passed", forced.message
        cfg = json.loads(emu.files()["/config.json"])
        assert cfg["device_id"] == forced.device_id
    finally:
        emu.close()


def test_baud_falls_back_when_921600_is_unreliable(tmp_path: Path, make_options: Callable[..., Options],
                                                   spec: DeviceSpec) -> None:
    with Esp32Emulator(faults=Faults(max_reliable_baud=460800), workdir=tmp_path / "b") as emu:
        outcome = DeviceFlow(make_options(str(emu.path)), spec).run()
        assert outcome.result == "passed", outcome.message
        assert outcome.baud == 460800
        assert emu.rejects["lost_framing_error"] >= 1


def test_same_board_twice_in_a_batch_is_refused(tmp_path: Path, make_options: Callable[..., Options],
                                                spec: DeviceSpec) -> None:
    with Esp32Emulator(workdir=tmp_path / "b") as emu:
        opts = make_options(str(emu.path))
        first = DeviceFlow(opts, spec, row=2).run()
        assert first.result == "passed", first.message
        second = DeviceFlow(opts, spec, row=3).run()
        assert second.result == "failed"
        assert second.reason in ("duplicate_device", "already_provisioned")
        third = DeviceFlow(make_options(str(emu.path), force=True), spec, row=3).run()
        assert third.reason == "duplicate_device"
        assert "row 2" in third.message
        assert len(list(records.read(opts.records_path))) == 1
