"""The console reader on a real pty: expectations in order, time-outs that explain themselves, the log."""

from __future__ import annotations

import os
import threading
import time
import tty
from pathlib import Path

import pytest

from lifeline.hil_tests.console import Console, ConsoleError, ExpectTimeout


def _pty() -> tuple[int, str]:
    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    return master, name


def test_expect_matches_in_order_and_logs_everything(tmp_path: Path) -> None:
    master, name = _pty()
    con = Console(name, tmp_path / "dut.log", name="dut")
    try:
        os.write(master, b"ets Jul 29 2019\r\nrst:0x5 (DEEPSLEEP_RESET),boot:0x13\r\nlifeline: wake=1\r\n")
        m = con.expect(r"rst:0x[0-9a-f]+ \((\w+)\)", 5)
        assert m.group(1) == b"DEEPSLEEP_RESET"
        con.expect(r"wake=1", 5)
        with pytest.raises(ExpectTimeout):
            con.expect(r"rst:0x", 0.3)  # already consumed: expectations move forward

        def later() -> None:
            time.sleep(0.2)
            os.write(master, b"rst:0x1 (POWERON_RESET)\r\n")

        threading.Thread(target=later).start()
        assert con.expect(r"POWERON_RESET", 5)
        con.write_note("power cycle")
    finally:
        con.close()
        os.close(master)
    log = (tmp_path / "dut.log").read_text()
    assert "DEEPSLEEP_RESET" in log and "POWERON_RESET" in log and "[hil " in log and "power cycle" in log


def test_timeout_message_has_pattern_tail_and_log_path(tmp_path: Path) -> None:
    master, name = _pty()
    con = Console(name, tmp_path / "x.log", name="board")
    try:
        os.write(master, b"Traceback (most recent call last):\r\nRuntimeError: app v3 crashes at import\r\n")
        con.expect(r"RuntimeError", 5)
        t0 = time.monotonic()
        with pytest.raises(ExpectTimeout) as info:
            con.expect(r"lifeline: wake=\d+", 0.4)
        assert 0.35 < time.monotonic() - t0 < 3.0
        msg = str(info.value)
        assert "board: no match for 'lifeline: wake=\\\\d+' within 0.4 s" in msg
        assert "app v3 crashes at import" in msg and str(tmp_path / "x.log") in msg
        assert isinstance(info.value, AssertionError)  # pytest shows it as a failed check
    finally:
        con.close()
        os.close(master)


def test_a_missing_port_is_an_error_that_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConsoleError, match="ttyNOPE"):
        Console(str(tmp_path / "ttyNOPE"), tmp_path / "y.log")
