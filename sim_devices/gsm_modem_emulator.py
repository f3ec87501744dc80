"""A GSM / NB-IoT modem's SMS side on a real pseudo-terminal: the subset of 3GPP TS 27.005 (text mode)
and V.250 that the gateway's SMS action speaks (``gateway/actions/sms.py``).

The gateway opens :attr:`GsmModemEmulator.path` with pyserial exactly as it would open /dev/ttyUSB2; the
path is a symlink to the pty slave. :meth:`unplug` removes it (a USB modem pulled out), :meth:`replug`
brings a fresh one.

Commands (responses in verbose form, ``\\r\\n<text>\\r\\n``; echo on after power-up, as modems ship):

    AT, ATE0/ATE1, ATI, AT+CMEE=<0|1|2>, AT+CMGF=<0|1>, AT+CMGF?, AT+CSCS="GSM"|"IRA", AT+CREG?, AT+CSQ
    AT+CMGS="<da>"[,<toda>]   text mode: "\\r\\n> " prompt; text; Ctrl-Z sends (+CMGS: <mr>, OK), ESC cancels
                              (OK); CR inside the text starts a new line with another prompt

Failures the real network produces: no registration (``registered = False``: +CMS ERROR: 331 no network
service), the next N sends refused (:meth:`fail_next`, +CMS ERROR: 500), a slow network (``send_delay_s``
before +CMGS), text over 160 characters (+CMS ERROR: 305), PDU mode (+CMS ERROR: 304 for a text-mode
CMGS), and a hung firmware (``hung = True``: reads, answers nothing). With ``AT+CMEE=0`` every +CMS ERROR
is a plain ERROR. Every message sent is kept in :attr:`sent` with its number, text, reference and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lifeline.sim_devices.pty_cable import PtyCable

CTRL_Z = 0x1A
ESC = 0x1B
MAX_TEXT = 160
_CMGS = re.compile(r'^AT\+CMGS="(\+?[0-9]{1,20})"(?:,(\d+))?$', re.I)


@dataclass(frozen=True, slots=True)
class SentSms:
    number: str
    text: str
    mr: int
    at: float  # time.monotonic() when the network accepted it


class GsmModemEmulator:
    def __init__(self, path: str | Path, *, send_delay_s: float = 0.05, registered: bool = True,
                 max_line: int = 512) -> None:
        self.path = Path(path)
        self.send_delay_s = send_delay_s
        self.registered = registered
        self.hung = False
        self.max_line = max_line
        self.echo = True
        self.cmee = 0
        self.text_mode = False  # modems power up in PDU mode (+CMGF=0)
        self.sent: list[SentSms] = []
        self.commands: list[str] = []
        self.counters: Counter[str] = Counter()
        self._mr = 0
        self._fail_next = 0
        self._cable = PtyCable(self.path, self._on_data)
        self._inbuf = bytearray()
        self._entry: tuple[str, bytearray] | None = None  # (number, text) while a message is being typed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self.sent_event = asyncio.Event()

    # ------------------------------------------------------------------ the cable

    @property
    def plugged(self) -> bool:
        return self._cable.plugged

    async def start(self) -> GsmModemEmulator:
        self._loop = asyncio.get_running_loop()
        self.replug()
        return self

    async def stop(self) -> None:
        self.unplug()

    async def __aenter__(self) -> GsmModemEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def replug(self) -> None:
        assert self._loop is not None, "call start() first"
        self._cable.plug(self._loop)
        self._power_on()

    def unplug(self) -> None:
        if not self._cable.plugged:
            return
        self._cable.unplug()
        self._inbuf.clear()
        for t in self._timers:
            t.cancel()
        self._timers.clear()

    def _power_on(self) -> None:
        self.echo = True
        self.cmee = 0
        self.text_mode = False
        self.hung = False
        self._entry = None

    def fail_next(self, n: int = 1) -> None:
        """The network refuses the next ``n`` messages (+CMS ERROR: 500)."""
        self._fail_next += n

    def inject(self, data: bytes) -> None:
        """Raw bytes to the gateway (unsolicited result codes, noise)."""
        self._write(data)

    # ------------------------------------------------------------------ pty I/O

    def _on_data(self, data: bytes) -> None:
        self.counters["bytes_in"] += len(data)
        if self.hung:
            return
        for b in data:
            if self._entry is not None:
                self._text_byte(b)
                continue
            if self.echo:
                self._write(bytes((b,)))
            if b in (0x0D, 0x0A):
                line = bytes(self._inbuf).decode("ascii", "replace").strip()
                self._inbuf.clear()
                if line:
                    self._command(line)
                continue
            self._inbuf.append(b)
            if len(self._inbuf) > self.max_line:
                self._inbuf.clear()
                self.counters["overlong"] += 1
                self._final("ERROR")

    def _text_byte(self, b: int) -> None:
        assert self._entry is not None
        number, text = self._entry
        if b == CTRL_Z:
            self._entry = None
            self._send(number, text.decode("ascii", "replace"))
        elif b == ESC:
            self._entry = None
            self.counters["cancelled"] += 1
            self._final("OK")
        elif b == 0x0D:
            text += b"\n"
            self._write(b"\r\n> ")
        else:
            if self.echo:
                self._write(bytes((b,)))
            text.append(b)

    def _write(self, data: bytes) -> None:
        self._cable.write(data)

    def _info(self, text: str) -> None:
        self._write(b"\r\n" + text.encode("ascii") + b"\r\n")

    def _final(self, text: str) -> None:
        self._info(text)

    def _cms_error(self, code: int) -> None:
        self.counters[f"cms_error_{code}"] += 1
        if self.cmee == 0:
            self._final("ERROR")
        else:
            self._final(f"+CMS ERROR: {code}")

    # ------------------------------------------------------------------ commands

    def _command(self, line: str) -> None:
        self.commands.append(line)
        up = line.upper()
        if not up.startswith("AT"):
            self._final("ERROR")
            return
        body = up[2:]
        if body == "":
            self._final("OK")
        elif body in ("E0", "E1", "E"):
            self.echo = body == "E1"
            self._final("OK")
        elif body == "I":
            self._info("Lifeline GSM modem emulator\r\nRevision: 1.0")
            self._final("OK")
        elif re.fullmatch(r"\+CMEE=[012]", body):
            self.cmee = int(body[-1])
            self._final("OK")
        elif re.fullmatch(r"\+CMGF=[01]", body):
            self.text_mode = body.endswith("1")
            self._final("OK")
        elif body == "+CMGF?":
            self._info(f"+CMGF: {int(self.text_mode)}")
            self._final("OK")
        elif re.fullmatch(r'\+CSCS="(GSM|IRA)"', body):
            self._final("OK")
        elif body == "+CREG?":
            self._info(f"+CREG: 0,{1 if self.registered else 0}")
            self._final("OK")
        elif body == "+CSQ":
            self._info("+CSQ: 21,99" if self.registered else "+CSQ: 99,99")
            self._final("OK")
        elif body.startswith("+CMGS"):
            self._cmgs(line)
        else:
            self.counters["unknown_command"] += 1
            self._final("ERROR")

    def _cmgs(self, line: str) -> None:
        if not self.text_mode:
            self._cms_error(304)
            return
        m = _CMGS.match(line)
        if m is None:
            self._cms_error(305)
            return
        self._entry = (m.group(1), bytearray())
        self._write(b"\r\n> ")

    def _send(self, number: str, text: str) -> None:
        if len(text) > MAX_TEXT:
            self._cms_error(305)
            return
        if not self.registered:
            self._cms_error(331)
            return
        if self._fail_next > 0:
            self._fail_next -= 1
            self._cms_error(500)
            return
        self._mr = (self._mr + 1) % 256
        mr = self._mr
        assert self._loop is not None

        def deliver() -> None:
            self._timers.discard(handle)
            if not self._cable.plugged:
                return
            self.sent.append(SentSms(number, text, mr, time.monotonic()))
            self.counters["sent"] += 1
            self.sent_event.set()
            self._info(f"+CMGS: {mr}")
            self._final("OK")

        handle = self._loop.call_later(self.send_delay_s, deliver)
        self._timers.add(handle)

    async def wait_sent(self, n: int, timeout_s: float) -> list[SentSms]:
        """Until ``n`` messages went out (bounded)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(self.sent) < n:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"{len(self.sent)} of {n} SMS sent after {timeout_s}s")
            self.sent_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sent_event.wait(), left)
        return list(self.sent)
