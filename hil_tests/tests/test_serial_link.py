"""The bench link (``--dut serial:PORT``) against the ESP32 emulator on a real pty: the console reader, the
boot-line expectation, the raw REPL reads a drill makes (configuration without its key, queue depth, app
slot) and the reset that returns the board to its cycle afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeline.hil_tests.console import Console, ExpectTimeout
from lifeline.hil_tests.dut import BOOT_PATTERN, Operator, SerialLink
from lifeline.provisioning.rawrepl import RawRepl
from lifeline.sim_devices.esp32_emulator import APP, Esp32Emulator, make_firmware_image

pytestmark = pytest.mark.micropython

CONFIG = {"device_id": "246f28fffea1b2c3", "root_key": "ab" * 32, "kind": "tilt", "radio": "lora", "interval": 900}


@pytest.fixture
def board(tmp_path: Path) -> Iterator[Esp32Emulator]:
    image = make_firmware_image(200_000)
    with Esp32Emulator(workdir=tmp_path / "board", boot_mode=APP) as emu:
        emu.flash[0x1000:0x1000 + len(image)] = image
        emu.reset(APP)
        with RawRepl.open(str(emu.path)) as repl:
            repl.exec(f"f = open('/config.json', 'w')\nf.write({json.dumps(json.dumps(CONFIG))})\nf.close()")
            repl.exec("f = open('/queue', 'w')\nf.write('{\"q\": [[2, 0, 2, {}, 1], [0, 0, 9, {}, 1]]}')\nf.close()")
        yield emu
        assert emu.failures == []


def test_serial_link_reads_the_board_and_resets_it(board: Esp32Emulator, tmp_path: Path) -> None:
    console = Console(str(board.path), tmp_path / "board.console.log", name="board")
    try:
        link = SerialLink(str(board.path), operator=Operator(1.0), console=lambda: console)
        cfg = link.node_config()
        assert cfg["device_id"] == CONFIG["device_id"] and cfg["kind"] == "tilt"
        assert "root_key" not in cfg  # the key never leaves the board through the harness
        m = console.expect(BOOT_PATTERN, 15)  # the link resets the board back into its cycle afterwards
        assert m.group(1) in (b"SW_CPU_RESET", b"POWERON_RESET")
        assert link.queue_depth() == 2
        assert "ab" * 32 not in console.text()
    finally:
        console.close()
    assert "ab" * 32 not in (tmp_path / "board.console.log").read_text(errors="replace")


def test_expect_timeout_names_the_pattern_the_tail_and_the_log(board: Esp32Emulator, tmp_path: Path) -> None:
    console = Console(str(board.path), tmp_path / "c.log", name="board")
    try:
        board.reset(APP)
        console.expect(r"MicroPython", 15)
        with pytest.raises(ExpectTimeout) as info:
            console.expect(r"lifeline: wake=\d+", 0.5)
        text = str(info.value)
        assert "lifeline: wake=" in text and str(tmp_path / "c.log") in text
        assert ">>>" in text  # the buffer's tail: what the board printed last
    finally:
        console.close()
