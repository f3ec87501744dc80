"""The RAK3172 emulator speaks the documented RUI3 P2P AT set over a real pty (plain pyserial client)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import serial

from lifeline.sim_devices.air import AirChannel, LoraParams, VirtualClock
from lifeline.sim_devices.lora_modem_emulator import Rak3172Emulator


async def exchange(port: serial.Serial, command: str, lines: int = 1) -> list[str]:
    port.write(command.encode() + b"\r\n")
    out: list[str] = []
    buf = b""
    for _ in range(2000):
        await asyncio.sleep(0.001)  # let the emulator (same event loop) answer
        buf += port.read(4096)
        out = [x for x in buf.decode().split("\r\n") if x]
        if len(out) >= lines and buf.endswith(b"\r\n"):
            break
    return out


async def test_at_command_set(tmp_path: Path) -> None:
    clock = VirtualClock()
    air = AirChannel(clock, seed=2)
    modem = Rak3172Emulator(air, "m", tmp_path / "ttyLORA")
    await modem.start()
    node = air.add_radio("node", 40.0, 0.0)
    port = serial.Serial(str(modem.path), 115200, timeout=0)
    try:
        assert await exchange(port, "AT") == ["OK"]
        assert await exchange(port, "AT+PRECV=65534") == ["AT_MODE_NO_SUPPORT"]  # still LoRaWAN
        boot = await exchange(port, "AT+NWM=0", lines=6)
        assert boot[0] == "OK" and boot[1].startswith("RAKwireless") and boot[-1] == "Current Work Mode: LoRa P2P."
        assert await exchange(port, "AT+P2P=868100000:9:125:0:8:14") == ["OK"]
        assert await exchange(port, "AT+P2P=868100000:9:0:0:8:14") == ["AT_PARAM_ERROR"]  # kHz form only
        assert await exchange(port, "AT+P2P=?", lines=2) == ["AT+P2P=868100000:9:125:0:8:14", "OK"]
        assert await exchange(port, "AT+VER=?", lines=2) == ["AT+VER=RUI_4.0.6_RAK3172-E", "OK"]
        assert await exchange(port, "AT+FOO=1") == ["AT_COMMAND_NOT_FOUND"]
        assert await exchange(port, "hello") == ["AT_ERROR"]
        assert await exchange(port, "AT+PRECV=65534") == ["OK"]
        assert await exchange(port, "AT+PSEND=0102") == ["AT_BUSY_ERROR"]  # receiving
        tx = node.transmit(b"\xca\xfe", LoraParams(868_100_000, 9, 125))
        clock.advance(tx.toa_ms)
        (line,) = await exchange(port, "", lines=1)
        assert line.startswith("+EVT:RXP2P:") and line.endswith(":CAFE")
        assert await exchange(port, "AT+PRECV=0") == ["OK"]
        assert await exchange(port, "AT+PSEND=ABC") == ["AT_PARAM_ERROR"]
        assert await exchange(port, "AT+PSEND=0102") == ["OK"]
        clock.advance(1000)
        assert await exchange(port, "") == ["+EVT:TXP2P DONE"]
        assert await exchange(port, "AT+PRECV=100") == ["OK"]
        clock.advance(100)
        assert await exchange(port, "") == ["+EVT:RXP2P RECEIVE TIMEOUT"]
    finally:
        port.close()
    modem.unplug()
    assert not modem.path.exists()
    modem.replug(banner=False)
    assert modem.path.is_symlink() and modem.path.exists()
    await modem.stop()
