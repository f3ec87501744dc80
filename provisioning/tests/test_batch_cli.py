"""CSV checking, the CLI (technician key, batch, detect, decommission), labels."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifeline.gateway.registry import Registry
from lifeline.protocols import keys
from lifeline.provisioning import batch, labels, records
from lifeline.provisioning.cli import provision
from lifeline.sim_devices.esp32_emulator import APP, ChipIdentity, Esp32Emulator

HEADER = ("kind,radio,region,interval,address,lat,lon,spatial_unit,data_class,install_date,design_life_years,tags,"
          "port,mac")


def test_csv_rows_are_checked_with_line_and_column() -> None:
    text = "\n".join([
        HEADER,
        "smoke,lora,EU868,900,1 Elm Rd,52.370216,4.895168,d7,sensitive,2026-11-20,10,pilot;home,,24:6f:28:a1:b2:c3",
        "smok,lora,EU868,900,2 Elm Rd,52.1,4.8,d7,sensitive,2026-11-20,10,,,",
        "smoke,lora,EU868,ten,3 Elm Rd,91.5,4.8,d7,sensitive,2026-13-01,10,,,",
        "water_level,lora,EU868,600,Canal,52.1,4.8,,public,2026-11-20,20,,,24:6f:28:a1:b2:c3",
        "manhole_tilt,lora,EU868,900,Main St,52.1,4.8,d7,internal,2026-11-20,15,,,zz",
        "smoke,lora,EU868,900",
    ])
    res = batch.parse(text)
    assert [r.line for r in res.rows] == [2]
    assert res.rows[0].spec.location.lat_udeg == 52_370_216
    assert res.rows[0].spec.tags == ("pilot", "home")
    got = {(e.line, e.column, e.reason) for e in res.errors}
    assert (3, "kind", "invalid_value") in got
    assert (4, "interval", "not_integer") in got
    assert (4, "lat", "invalid_value") not in got and (4, "install_date", "invalid_value") not in got  # row stops
    assert (5, "mac", "duplicate_device") in got
    assert (6, "mac", "bad_mac") in got
    assert (7, "-", "field_count") in got
    assert res.counts["duplicate_device"] == 1
    assert all(str(e).startswith(f"line {e.line}, column ") for e in res.errors)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("kind,radio\nsmoke,lora\n", "missing_column"),
    (HEADER + ",colour\n", "unknown_column"),
    ('kind,radio\n"smoke,lora\n', "missing_column"),
    ("a\0b", "binary"),
])
def test_csv_garbage_is_rejected_with_a_reason(text: str, reason: str) -> None:
    res = batch.parse(text)
    assert res.rows == ()
    assert reason in res.counts


def test_csv_values_are_range_checked() -> None:
    res = batch.parse(HEADER + "\nsmoke,lora,XX999,5,,200,4.8,,secret,2026-02-30,0,,,\n")
    cols = {e.column for e in res.errors}
    assert {"address"} <= cols  # missing value stops the row first
    res = batch.parse(HEADER + "\nsmoke,lora,XX999,5,A,89,4.8,,secret,2026-02-30,0,,,\n")
    cols = {e.column for e in res.errors}
    assert {"region", "interval", "data_class", "install_date", "design_life_years"} <= cols


def test_technician_key_file_is_0600_and_prints_only_the_public_key(tmp_path: Path) -> None:
    out = tmp_path / "alice.pem"
    result = CliRunner().invoke(provision, ["technician-key", "--out", str(out), "--name", "alice", "--json"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    d = json.loads(result.output)
    key = keys.load_private_key(out)
    assert d["public_key"] == keys.public_key_hex(key)
    assert "PRIVATE" not in result.output
    again = CliRunner().invoke(provision, ["technician-key", "--out", str(out)])
    assert again.exit_code == 3


@pytest.mark.micropython
def test_batch_cli_bad_rows_flash_nothing_then_good_rows_provision(
    tmp_path: Path, image_bytes: bytes, capfd: pytest.CaptureFixture[str],
) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(image_bytes)
    keyfile = tmp_path / "alice.pem"
    keys.save_private_key(keys.generate(), keyfile)
    work = tmp_path / "run"
    common = ["--firmware", str(fw), "--technician", "alice", "--technician-key", str(keyfile),
              "--workdir", str(work), "--json"]
    with Esp32Emulator(workdir=tmp_path / "b1") as b1, Esp32Emulator(
            workdir=tmp_path / "b2", chip=ChipIdentity(mac=bytes.fromhex("246f28000002"))) as b2:
        bad = tmp_path / "bad.csv"
        bad.write_text(HEADER + f"\nsmoke,lora,EU868,900,A,52.1,4.8,d7,sensitive,2026-11-20,10,,{b1.path},\n"
                       f"smoke,lora,EU868,abc,B,52.1,4.8,d7,sensitive,2026-11-20,10,,{b2.path},\n")
        result = CliRunner().invoke(provision, ["batch", str(bad), *common])
        assert result.exit_code == 2
        report = json.loads(result.output)
        assert report["rows"] == [{"line": 3, "column": "interval", "reason": "not_integer",
                                   "message": "'abc' is not an integer"}]
        assert b1.stats.commands["SYNC"] == 0 and b2.stats.commands["SYNC"] == 0  # nothing touched

        good = tmp_path / "good.csv"
        good.write_text(HEADER + f"\nsmoke,lora,EU868,900,A,52.1,4.8,d7,sensitive,2026-11-20,10,,{b1.path},\n"
                        f"water_level,lora,EU868,600,Canal,52.2,4.9,c1,public,2026-11-20,20,,{b2.path},\n")
        result = CliRunner().invoke(provision, ["batch", str(good), *common])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert [d["result"] for d in report["devices"]] == ["passed", "passed"]
        assert Path(report["labels_pdf"]).read_bytes()[:5] == b"%PDF-"
        # resumable / idempotent: a rerun skips both
        result = CliRunner().invoke(provision, ["batch", str(good), *common])
        assert [d["result"] for d in json.loads(result.output)["devices"]] == ["skipped", "skipped"]
    recs = list(records.read(work / "records.jsonl"))
    assert {r["kind"] for r in recs} == {"smoke", "water_level"}
    out, err = capfd.readouterr()
    for r in recs:
        assert r["root_key"] not in result.output + out + err
        assert r["root_key"] not in (work / "audit.jsonl").read_text()
        assert r["root_key"] not in (work / "state.json").read_text()
        assert r["root_key"] not in (work / "labels" / "claims.jsonl").read_text()


def test_labels_carry_no_secret_and_render() -> None:
    lab = labels.Label("246f28fffea1b2c3", "smoke", "7KQ2-M9XD-4TRA", "district-7")
    assert lab.payload == "LL1;id=246f28fffea1b2c3;k=smoke;c=7KQ2-M9XD-4TRA"
    png = labels.qr_png(lab)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = labels.pdf_sheet([lab] * 25)
    assert pdf[:5] == b"%PDF-" and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page>>") >= 1


@pytest.mark.micropython
def test_decommission_wipes_keys_erases_filesystem_and_revokes(tmp_path: Path, image_bytes: bytes) -> None:
    fw = tmp_path / "fw.bin"
    fw.write_bytes(image_bytes)
    keyfile = tmp_path / "alice.pem"
    tech = keys.generate()
    keys.save_private_key(tech, keyfile)
    work = tmp_path / "run"
    with Esp32Emulator(workdir=tmp_path / "b") as emu:
        result = CliRunner().invoke(provision, [
            "device", "--port", str(emu.path), "--kind", "smoke", "--address", "1 Elm Rd", "--lat", "52.1",
            "--lon", "4.8", "--data-class", "sensitive", "--install-date", "2026-11-20", "--firmware", str(fw),
            "--technician", "alice", "--technician-key", str(keyfile), "--workdir", str(work), "--json"])
        assert result.exit_code == 0, result.output
        dev = json.loads(result.output)["device_id"]
        reg_path = tmp_path / "registry.db"
        with Registry(reg_path) as reg:
            reg.import_lines((work / "records.jsonl").read_text().splitlines(), now_ms=1,
                             trusted={"alice": keys.public_key(tech)})
        vfs = emu.vfs_partition()
        assert b"root_key" in bytes(emu.flash[vfs.offset : vfs.offset + vfs.size])
        result = CliRunner().invoke(provision, [
            "decommission", "--port", str(emu.path), "--technician", "alice", "--technician-key", str(keyfile),
            "--workdir", str(work), "--registry", str(reg_path), "--reason", "moved out", "--json"])
        assert result.exit_code == 0, result.output
        d = json.loads(result.output)
        assert d == {"device_id": dev, "erased": ["nvs", "vfs"], "registry_revoked": True}
        assert emu.mode == APP, emu.failures
        assert set(emu.files()) == {"/boot.py"}  # a fresh filesystem
        assert b"root_key" not in bytes(emu.flash[vfs.offset : vfs.offset + vfs.size])
    with Registry(reg_path) as reg:
        rec = reg.get(bytes.fromhex(dev))
        assert rec is not None and rec.status == "revoked"
    (rev,) = [json.loads(line) for line in (work / "revocations.jsonl").read_text().splitlines()]
    assert rev["device_id"] == dev and rev["revoked"] is True
    keys.public_key(tech).verify(bytes.fromhex(rev["signature"]), records.signed_bytes(rev))


def test_detect_reads_chip_and_mac(tmp_path: Path) -> None:
    with Esp32Emulator(workdir=tmp_path / "b") as emu:
        result = CliRunner().invoke(provision, ["detect", "--port", str(emu.path), "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert d["chip"] == "ESP32" and d["mac"] == "24:6f:28:a1:b2:c3" and d["device_id"] == "246f28fffea1b2c3"


def test_port_autodetect_picks_the_one_esp32_bridge() -> None:
    from types import SimpleNamespace

    from lifeline.provisioning.errors import EnvironmentProblem
    from lifeline.provisioning.ports import find_board_port

    mouse = SimpleNamespace(device="/dev/ttyACM9", vid=0x046D, pid=0xC52B)
    cp2102 = SimpleNamespace(device="/dev/ttyUSB0", vid=0x10C4, pid=0xEA60)
    ch340 = SimpleNamespace(device="/dev/ttyUSB1", vid=0x1A86, pid=0x7523)
    assert find_board_port(lambda: [mouse, cp2102]) == "/dev/ttyUSB0"
    with pytest.raises(EnvironmentProblem, match="several boards") as info:
        find_board_port(lambda: [cp2102, ch340])
    assert info.value.exit_code == 3
    with pytest.raises(EnvironmentProblem, match="no ESP32 USB-serial bridge"):
        find_board_port(lambda: [mouse])


@pytest.mark.micropython
def test_bench_measures_a_device_and_models_real_time() -> None:
    from lifeline.provisioning.bench import expected_real_seconds, measure

    res = measure(300_000)
    assert res.result == "passed" and res.baud == 921600
    assert set(res.modelled_by) == {"serial_rom", "serial_repl", "flash_erase", "flash_program", "rom_md5"}
    assert res.modelled_s == pytest.approx(sum(res.modelled_by.values()))
    assert 25 < expected_real_seconds(1_500_000) < 45
    assert expected_real_seconds(1_500_000, 115200) > expected_real_seconds(1_500_000, 921600)
