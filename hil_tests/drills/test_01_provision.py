"""Drill 1: a bare board is provisioned, boots, sends its first report and is registered at the platform.

The whole field procedure (docs/technician.md): ``provisioning.flow.DeviceFlow`` flashes MicroPython,
installs the app, generates the key, writes the signed record, runs the self-test and installs boot.py /
main.py, against the ESP32 emulator (simulator) or the board on the bench port. The record then goes to the
gateway with the real ``lifeline gateway devices import`` (technician signature checked), the node boots
from the provisioned configuration, and its first report must be stored by the platform under the device id
the board's MAC gives, with a frame counter above the self-test's (a counter is never reused).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lifeline.gateway.testing_proc import LIFELINE
from lifeline.hil_tests.bench import BenchFactory, DutSpec, HilConfig, Provisioned
from lifeline.hil_tests.kpi import KpiRecorder
from lifeline.provisioning import records
from lifeline.provisioning.audit import AuditLog
from lifeline.provisioning.firmware_image import load as load_firmware
from lifeline.provisioning.flow import DeviceFlow, Options
from lifeline.provisioning.identity import eui64_from_mac
from lifeline.provisioning.nodeconfig import DeviceSpec, Location
from lifeline.provisioning.state import StateFile

SPEC = DeviceSpec(kind="smoke", radio="lora", region="EU868", interval_s=300,
                  location=Location("HIL bench, flat 1", 52_370_216, 4_895_168, "hil-bench"),
                  data_class="sensitive", install_date="2026-01-15", design_life_years=10, tags=("hil",))


@pytest.mark.fast
@pytest.mark.drill(1, "Provision, boot, first report, registered at the platform")
def test_provisioned_board_boots_reports_and_is_registered(
    bench: BenchFactory, kpi: KpiRecorder, hil_config: HilConfig, tmp_path: Path
) -> None:
    work = tmp_path / "provisioning"
    work.mkdir()
    emulator = None
    if hil_config.is_sim:
        from lifeline.sim_devices.esp32_emulator import Esp32Emulator, make_firmware_image

        fw_path = work / "ESP32_GENERIC-v1.27.0.bin"
        fw_path.write_bytes(make_firmware_image(300_000))
        emulator = Esp32Emulator(workdir=work / "board").start()
        port = str(emulator.path)
    else:
        assert hil_config.bench_firmware is not None, "drill 1 on a bench needs --bench-firmware BIN"
        fw_path = hil_config.bench_firmware
        port = hil_config.serial_url
    try:
        opts = Options(port=port, firmware=load_firmware(fw_path), records_path=work / "records.jsonl",
                       state=StateFile(work / "state.json"), audit=AuditLog(work / "audit.jsonl", "hil-technician"),
                       technician_key=hil_config.technician_key, labels_dir=work / "labels")
        outcome = DeviceFlow(opts, SPEC).run()
        assert outcome.result == "passed", f"provisioning {outcome.result}: {outcome.reason} {outcome.message}"
        assert [s[0] for s in outcome.steps] == ["detect", "flash", "install", "config", "register", "selftest",
                                                 "finalize", "label"]
        kpi.value("provisioning_s", round(outcome.seconds, 2), "s", basis="emulator" if emulator else "bench")
        if emulator is not None:
            kpi.value("provisioning_modelled_hw_s", round(emulator.modelled_s, 1), "s",
                      note="the same traffic on a real ESP32 at the negotiated baud")
            flash = emulator.files()
            config = json.loads(flash["/config.json"])
            assert outcome.device_id == eui64_from_mac(emulator.chip.mac).hex()
            assert emulator.failures == []
        else:
            from lifeline.hil_tests.dut import read_board_config

            config = read_board_config(port)
            flash = {}
        (record,) = list(records.read(opts.records_path))
        assert record["device_id"] == outcome.device_id == config["device_id"]
        assert (opts.labels_dir / f"{outcome.device_id}.png").is_file()
    finally:
        if emulator is not None:
            emulator.close()

    # the node now runs from what provisioning left in its flash: identity, key, config, counter reservation
    b = bench(provisioned=Provisioned(DutSpec(kind=config["kind"], interval_s=int(config["interval"])), config,
                                      record, flash))
    dut = b.dut
    assert dut.device_id.hex() == record["device_id"]

    # registered: the gateway's registry (real CLI) lists it as active, signature checked at import
    listed = subprocess.run([LIFELINE, "gateway", "devices", "list", "--json", "--config", str(b.gateway.config)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert record["device_id"] in listed.stdout and "active" in listed.stdout

    boot = dut.expect_boot(30)
    assert boot.reason == "POWERON_RESET"
    t0 = dut.now_s()
    took = dut.run_until(lambda: len(dut.reports()) >= 1, 2 * int(config["interval"]), step_s=10,
                         what="the first report at the platform")
    first = dut.reports()[0]
    assert first.kind == 1 and first.device.hex() == record["device_id"]
    assert outcome.selftest is not None and outcome.selftest.fcnt is not None
    assert first.fcnt > outcome.selftest.fcnt, "the first report reused the self-test's frame counter"
    assert "test" not in first.flags
    kpi.value("first_report_after_boot_s", round(took if not dut.monitors_air else dut.now_s() - t0, 1), "s")
    assert b.platform.chain_intact()
