"""SMS through a serial GSM / NB-IoT modem, text mode (3GPP TS 27.005 section 3.5.1, the subset below).

    AT            -> OK                      (probe; repeated to get past noise after a modem reset)
    ATE0          -> OK                      (no echo)
    AT+CMEE=1     -> OK | ERROR              (numeric +CMS ERROR codes; older modems refuse: ignored)
    AT+CMGF=1     -> OK                      (text mode)
    AT+CMGS="<number>"  -> "> "              (prompt, not a line)
    <text> Ctrl-Z       -> +CMGS: <mr>, OK   (message reference) | +CMS ERROR: <n> | ERROR

Every wait has a deadline (``prompt_timeout``, ``send_timeout``); a send that times out is cancelled with
ESC and the modem is set up again before the next message. The port is opened with pyserial and read
from the event loop (``add_reader``); a port that disappears (USB modem unplugged) fails the attempt and
is reopened next time. Message text is reduced to printable ASCII (a subset of the GSM 7-bit default
alphabet) and 160 characters, so a template can never smuggle a Ctrl-Z or ESC into the modem.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import serial

from lifeline.gateway.actions import ActionFailed
from lifeline.gateway.rules_engine.model import SmsOutput

CTRL_Z = b"\x1a"
ESC = b"\x1b"
MAX_TEXT = 160
PROMPT = "> "  # returned by SmsModem._line for the text prompt (never a line: lines are stripped)
_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")
_CMGS = re.compile(r"^\+CMGS:\s*(\d+)")
_CMS_ERROR = re.compile(r"^\+CM[ES] ERROR:\s*(.+)$")
CMS_ERRORS = {  # 3GPP TS 27.005 section 3.2.5, the ones a sender meets
    "300": "ME failure", "302": "operation not allowed", "304": "invalid PDU mode parameter",
    "305": "invalid text mode parameter", "310": "SIM not inserted", "311": "SIM PIN required",
    "320": "memory failure", "330": "SMSC address unknown", "331": "no network service",
    "332": "network timeout", "500": "unknown error",
}


def sms_text(text: str) -> str:
    """Printable ASCII only (control characters become spaces, others '?'), at most 160 characters."""
    out = []
    for c in text:
        if c in "\r\n\t":
            out.append(" ")
        elif " " <= c <= "~":
            out.append(c)
        else:
            out.append("?" if ord(c) >= 0x80 else " ")
    return "".join(out)[:MAX_TEXT]


def mask_number(number: str) -> str:
    """For logs and audit records: keep the last 4 digits."""
    return "*" * max(0, len(number) - 4) + number[-4:]


class SmsModem:
    def __init__(self, name: str, spec: SmsOutput) -> None:
        self.name = name
        self.spec = spec
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = bytearray()
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._prompt = asyncio.Event()
        self._gone = asyncio.Event()
        self._ready = False
        self._lock = asyncio.Lock()
        self.sent = 0
        self.opens = 0

    async def start(self) -> None:
        return None  # opened on first use

    # ------------------------------------------------------------------ port

    def _open(self) -> None:
        if self._serial is not None:
            return
        try:
            port = serial.Serial(self.spec.port, self.spec.baudrate, timeout=0, write_timeout=0, exclusive=True)
        except (OSError, serial.SerialException) as e:
            raise ActionFailed(f"modem {self.spec.port}: cannot open ({type(e).__name__})") from None
        self._serial = port
        self._fd = port.fileno()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._buf.clear()
        self._lines = asyncio.Queue()
        self._prompt.clear()
        self._gone.clear()
        self._ready = False
        self.opens += 1

    def _close(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        if self._loop is not None and self._fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        with contextlib.suppress(Exception):
            port.close()
        self._fd = -1
        self._ready = False

    def _on_readable(self) -> None:
        port = self._serial
        if port is None:
            return
        try:
            data = port.read(4096)
        except (OSError, serial.SerialException):
            data = None
        if not data:
            if data is None or not port.is_open:
                self._gone.set()
                self._close()
            return
        self._buf += data
        while True:
            if self._buf.startswith(b"> ") or self._buf.startswith(b"\r\n> "):
                self._prompt.set()
                del self._buf[: self._buf.index(b"> ") + 2]
                continue
            cut = self._buf.find(b"\n")
            if cut < 0:
                if len(self._buf) > 4096:
                    self._buf.clear()
                return
            line = bytes(self._buf[:cut]).decode("ascii", "replace").strip()
            del self._buf[: cut + 1]
            if line:
                self._lines.put_nowait(line)

    def _write(self, data: bytes) -> None:
        port = self._serial
        if port is None:
            raise ActionFailed(f"modem {self.spec.port}: port closed")
        try:
            view = memoryview(data)
            while view:
                n = port.write(view)
                view = view[n or 0:]
        except (OSError, serial.SerialException) as e:
            self._close()
            raise ActionFailed(f"modem {self.spec.port}: write failed ({type(e).__name__})") from None

    async def _line(self, deadline: float, prompt: bool = False) -> str:
        """The next line from the modem, or PROMPT once "> " was seen (when ``prompt``)."""
        if prompt and self._prompt.is_set() and self._lines.empty():
            return PROMPT
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError
        get: asyncio.Future[str] = asyncio.ensure_future(self._lines.get())
        gone: asyncio.Future[Any] = asyncio.ensure_future(self._gone.wait())
        waiters: set[asyncio.Future[Any]] = {get, gone}
        pw: asyncio.Future[Any] | None = None
        if prompt:
            pw = asyncio.ensure_future(self._prompt.wait())
            waiters.add(pw)
        try:
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                if w is not get and not w.done():
                    w.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            return get.result()
        if pw is not None and pw.done() and not pw.cancelled():
            return PROMPT
        if gone.done() and not gone.cancelled():
            raise ActionFailed(f"modem {self.spec.port}: port gone")
        raise TimeoutError

    async def _command(self, command: str, timeout_s: float) -> tuple[str, list[str]]:
        """Send one command; returns (final result, information lines)."""
        self._drain()
        self._write(command.encode("ascii") + b"\r")
        deadline = asyncio.get_running_loop().time() + timeout_s
        info: list[str] = []
        while True:
            line = await self._line(deadline)
            if line == command:  # echo (before ATE0 took effect)
                continue
            if line in ("OK", "ERROR") or _CMS_ERROR.match(line):
                return line, info
            info.append(line)

    def _drain(self) -> None:
        while not self._lines.empty():
            self._lines.get_nowait()

    async def _setup(self) -> None:
        for attempt in range(3):
            try:
                result, _ = await self._command("AT", 1.0)
            except TimeoutError:
                if attempt == 2:
                    raise ActionFailed(f"modem {self.spec.port}: no answer to AT") from None
                continue
            if result == "OK":
                break
        for cmd, required in (("ATE0", True), ("AT+CMEE=1", False), ("AT+CMGF=1", True)):
            try:
                result, _ = await self._command(cmd, 2.0)
            except TimeoutError:
                raise ActionFailed(f"modem {self.spec.port}: no answer to {cmd}") from None
            if required and result != "OK":
                raise ActionFailed(f"modem {self.spec.port}: {cmd} -> {result}")
        self._ready = True

    # ------------------------------------------------------------------ sending

    async def send(self, number: str, text: str) -> int:
        """Send one SMS; returns the message reference. Raises ActionFailed or TimeoutError."""
        if not _NUMBER.match(number):
            raise ActionFailed(f"invalid number {mask_number(number)}")
        async with self._lock:
            self._open()
            try:
                if not self._ready:
                    await self._setup()
                return await self._send(number, sms_text(text))
            except TimeoutError:
                self._ready = False
                with contextlib.suppress(ActionFailed):
                    self._write(ESC)  # abandon a half-entered message
                raise ActionFailed(f"modem {self.spec.port}: no answer (timeout)") from None
            except asyncio.CancelledError:
                self._ready = False
                with contextlib.suppress(ActionFailed):
                    self._write(ESC)
                raise

    async def _send(self, number: str, text: str) -> int:
        loop = asyncio.get_running_loop()
        self._drain()
        self._prompt.clear()
        self._write(f'AT+CMGS="{number}"\r'.encode("ascii"))
        deadline = loop.time() + self.spec.prompt_timeout_ms / 1000
        while True:
            line = await self._line(deadline, prompt=True)
            if line == PROMPT:
                break
            if line == "ERROR" or _CMS_ERROR.match(line):
                raise ActionFailed(_error_text(line))
        self._write(text.encode("ascii") + CTRL_Z)
        deadline = loop.time() + self.spec.send_timeout_ms / 1000
        mr: int | None = None
        while True:
            line = await self._line(deadline)
            found = _CMGS.match(line)
            if found:
                mr = int(found.group(1))
            elif line == "OK" and mr is not None:
                self.sent += 1
                return mr
            elif line == "ERROR" or _CMS_ERROR.match(line):
                raise ActionFailed(_error_text(line))

    async def close(self) -> None:
        async with self._lock:
            self._close()


def _error_text(line: str) -> str:
    found = _CMS_ERROR.match(line)
    if found is None:
        return "modem: ERROR"
    code = found.group(1).strip()
    return f"modem: +CMS ERROR {code} ({CMS_ERRORS.get(code, 'see 3GPP TS 27.005')})"
