"""A whole provisioning run on the emulated board: flash, install, key, register, self-test, label."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from lifeline.gateway.registry import Registry, parse_record
from lifeline.protocols import frame, keys
from lifeline.provisioning import bundle, records
from lifeline.provisioning.flow import DeviceFlow, Options
from lifeline.provisioning.nodeconfig import DeviceSpec
from lifeline.sim_devices.esp32_emulator import APP, Esp32Emulator
from lifeline.tools import mpy_runtime

pytestmark = pytest.mark.micropython


def _files_with(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_provision_one_board_end_to_end(
    emulator: Esp32Emulator, make_options: Callable[..., Options], spec: DeviceSpec, tmp_path: Path,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    opts = make_options(str(emulator.path))
    outcome = DeviceFlow(opts, spec).run()
    assert outcome.result == "passed", outcome.message
    dev = "246f28fffea1b2c3"  # EUI-64 of the emulator's MAC 24:6f:28:a1:b2:c3 with FF FE inserted
    assert outcome.device_id == dev
    assert [s[0] for s in outcome.steps] == ["detect", "flash", "install", "config", "register", "selftest",
                                             "finalize", "label"]
    assert outcome.baud == 921600

    # flashed image and installed files, byte for byte
    img = opts.firmware.data
    assert bytes(emulator.flash[0x1000 : 0x1000 + len(img)]) == img
    files = emulator.files()
    b = bundle.build("smoke", "lora", device=False)
    for path, data in {**b.lib, **b.root}.items():
        assert files[path] == data, path
    cfg = json.loads(files["/config.json"])
    assert cfg["device_id"] == dev and cfg["kind"] == "smoke" and cfg["interval"] == 900
    assert cfg["location"] == {"label": "district-7", "lat_e7": 523702160, "lon_e7": 48951680}
    assert "Elm Road" not in files["/config.json"].decode()  # the street address stays off the node

    # the record: 0600, signed, accepted by the gateway registry (real SQLite), same key as on the board
    rec_path = opts.records_path
    assert stat.S_IMODE(rec_path.stat().st_mode) == 0o600
    (rec,) = list(records.read(rec_path))
    assert rec["root_key"] == cfg["root_key"]
    pub = keys.public_key(opts.technician_key)
    parsed = parse_record(rec, {"alice": pub})
    assert parsed.device_id.hex() == dev and parsed.kind == "smoke" and parsed.location.lat_udeg == 52_370_216
    with Registry(tmp_path / "registry.db") as reg:
        report = reg.import_lines(rec_path.read_text().splitlines(), now_ms=1, trusted={"alice": pub})
        assert report.count("added") == 1
    tampered = dict(rec, kind="water_level")
    with pytest.raises(Exception, match="signature"):
        parse_record(tampered, {"alice": pub})

    # self-test: the test frame verifies with the record's key; the ack step is skipped, not passed
    st = outcome.selftest
    assert st is not None and st.passed
    checks = {c.name: c.status for c in st.checks}
    assert checks["frame_verify"] == "pass"
    assert checks["gateway_ack"] == "skipped"
    root_key = bytes.fromhex(rec["root_key"])
    assert st.frame_hex is not None
    f = frame.decode(bytes.fromhex(st.frame_hex), frame.derive_keys(root_key, bytes.fromhex(dev)))
    assert f.header.flags & frame.FLAG_TEST and f.header.kind == 1

    # label and audit
    assert (opts.labels_dir / f"{dev}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    audit = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").read_text().splitlines()]
    assert {a["technician"] for a in audit} == {"alice"}
    final = [a for a in audit if a["event"] == "device"][-1]
    assert final["result"] == "passed" and final["firmware_sha256"] == opts.firmware.sha256

    # the key is nowhere but in the records file and on the board
    out, err = capfd.readouterr()
    key_hex = rec["root_key"]
    assert key_hex not in out + err
    assert key_hex not in caplog.text
    assert _files_with(tmp_path / "run", key_hex) == [rec_path]
    assert key_hex.upper() not in (out + err + caplog.text)


def test_rerun_skips_a_finished_device(emulator: Esp32Emulator, make_options: Callable[..., Options],
                                       spec: DeviceSpec) -> None:
    opts = make_options(str(emulator.path))
    assert DeviceFlow(opts, spec).run().result == "passed"
    before = emulator.stats.commands["FLASH_DATA"] + emulator.stats.commands["FLASH_DEFL_DATA"]
    again = DeviceFlow(opts, spec).run()
    assert again.result == "skipped" and again.reason == "already_done"
    assert emulator.stats.commands["FLASH_DATA"] + emulator.stats.commands["FLASH_DEFL_DATA"] == before


def test_the_provisioned_node_boots_and_its_frames_verify(
    emulator: Esp32Emulator, make_options: Callable[..., Options], spec: DeviceSpec,
) -> None:
    """The node's own first wake under real MicroPython, from the installed files only."""
    opts = make_options(str(emulator.path))
    outcome = DeviceFlow(opts, spec).run()
    assert outcome.result == "passed", outcome.message
    files = emulator.files()
    (rec,) = list(records.read(opts.records_path))
    script = """
import os, json
from lifeline.firmware import bootsel, node, simnode
from lifeline.firmware.hal import sim, sim_chips
air = simnode.Air()
providers, i2c, uarts, pulses = simnode.quiet_providers('smoke')
uarts['lora'] = sim_chips.Rak3172(air, simnode.lora_airtime)
hal = sim.SimHal(flash=bootsel.OsFs(os), providers=providers, i2c_devices=i2c, uart_devices=uarts,
                 pulse_providers=pulses)
n = node.Node(hal)
n.wake()
print(json.dumps([f.hex() for f in air.frames]))
"""
    out = mpy_runtime.run(script, files=files, timeout=120).stdout
    frames_hex = json.loads(out.strip().splitlines()[-1])
    assert frames_hex, "the node sent nothing on its first wake"
    k = frame.derive_keys(bytes.fromhex(rec["root_key"]), bytes.fromhex(rec["device_id"]))
    decoded = [frame.decode(bytes.fromhex(h), k) for h in frames_hex]
    assert all(d.header.dev_id.hex() == rec["device_id"] for d in decoded)
    assert all(not d.header.flags & frame.FLAG_TEST for d in decoded)
    assert outcome.selftest is not None and outcome.selftest.fcnt is not None
    assert min(d.header.fcnt for d in decoded) > outcome.selftest.fcnt  # the test frame's counter is never reused


def test_records_file_with_loose_mode_is_refused(tmp_path: Path, tech_key: object) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text("")
    os.chmod(path, 0o644)
    with pytest.raises(Exception, match="readable by others"):
        list(records.read(path))


def test_signature_is_over_canonical_json(tech_key: object, spec: DeviceSpec) -> None:
    from lifeline.gateway.registry import signed_bytes as gateway_signed_bytes

    rec = records.build(spec, bytes.fromhex("246f28fffea1b2c3"), b"\x01" * 32, "alice")
    assert records.signed_bytes(rec) == gateway_signed_bytes(rec)
    assert hashlib.sha256(records.signed_bytes(rec)).hexdigest() == hashlib.sha256(
        json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_board_in_app_mode_is_put_into_the_bootloader(
    tmp_path: Path, make_options: Callable[..., Options], spec: DeviceSpec, image_bytes: bytes,
) -> None:
    """A board that already runs MicroPython (no config) is switched with machine.bootloader()."""
    with Esp32Emulator(workdir=tmp_path / "b2", boot_mode=APP) as emu:
        emu.flash[0x1000 : 0x1000 + len(image_bytes)] = image_bytes
        emu.reset(APP)
        assert emu.mode == APP
        outcome = DeviceFlow(make_options(str(emu.path)), spec).run()
        assert outcome.result == "passed", outcome.message
        assert outcome.steps[0] == ("detect", "pass", "MicroPython answers")


def test_provision_over_a_socket_url(tmp_path: Path, make_options: Callable[..., Options], spec: DeviceSpec) -> None:
    """pyserial's socket:// (a board behind a serial server): no reset lines, same flow; kind names map to
    the firmware's (manhole_tilt -> tilt)."""
    from dataclasses import replace

    tilt = replace(spec, kind="manhole_tilt", data_class="internal")
    with Esp32Emulator(workdir=tmp_path / "b", tcp=True) as emu:
        assert emu.url is not None
        outcome = DeviceFlow(make_options(emu.url), tilt).run()
        assert outcome.result == "passed", outcome.message
        assert json.loads(emu.files()["/config.json"])["kind"] == "tilt"
        assert "/lib/lifeline/firmware/sensors/tilt.mpy" in emu.files()
        assert emu.failures == []
