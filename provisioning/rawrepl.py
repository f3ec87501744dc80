"""MicroPython raw REPL client over a pyserial port (a /dev path or any pyserial URL such as socket://).

Protocol (MicroPython docs, "raw mode and raw-paste mode"): Ctrl-C interrupts a running program, Ctrl-A
enters raw mode (the board answers "raw REPL; CTRL-B to exit" and a ">" prompt), code is sent and ended
with Ctrl-D, the board answers "OK", then the program's output, 0x04, the exception traceback if any,
0x04 and the next ">" prompt. Ctrl-B leaves raw mode. Every wait has a deadline.

Code is sent in plain raw mode in chunks; ``chunk_delay`` (seconds between 256-byte chunks) gives a
real board's UART input buffer time to drain, as mpremote does without raw-paste. The emulated board
buffers everything, so tests use 0.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from lifeline.provisioning.errors import ProvisionError, scrub

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
DEFAULT_TIMEOUT_S = 10.0
CHUNK = 256
# "OSError: [Errno 2] ENOENT" for codes in MicroPython's errno name table, "OSError: 28" for the others
# (ENOSPC is not in the table on the ESP32 port: a full LittleFS raises "OSError: 28").
_ERRNO = re.compile(r"OSError: (?:\[Errno )?(\d+)")


class ReplError(ProvisionError):
    """The board did not speak the raw REPL protocol as expected (no prompt, no OK, time-out, port gone)."""


class DeviceException(ProvisionError):
    """Code sent to the board raised. ``traceback`` is the board's text (scrubbed), ``errno`` its OSError code."""

    def __init__(self, traceback: str) -> None:
        last = traceback.strip().splitlines()[-1] if traceback.strip() else "exception"
        super().__init__("device_exception", f"the board raised {last}")
        self.traceback = scrub(traceback)
        match = _ERRNO.search(traceback)
        self.errno: int | None = int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class ExecResult:
    stdout: str


class RawRepl:
    """An open serial port in MicroPython raw mode. Use as a context manager (leaves raw mode on exit)."""

    def __init__(
        self,
        port: Any,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        chunk_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port: Any = port  # serial.Serial or a pyserial URL handler (socket://)
        self.timeout = timeout
        self.chunk_delay = chunk_delay
        self._clock = clock
        self.in_raw = False
        self._pending = bytearray()

    @classmethod
    def open(cls, url: str, *, baud: int = 115200, timeout: float = DEFAULT_TIMEOUT_S,
             chunk_delay: float = 0.0) -> RawRepl:
        try:
            port = serial.serial_for_url(url, baudrate=baud, timeout=0.05, write_timeout=timeout)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ReplError("port_unavailable", f"cannot open {url}: {exc}") from None
        return cls(port, timeout=timeout, chunk_delay=chunk_delay)

    # ---- low level ---------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise ReplError("port_lost", f"serial port lost while writing: {exc}") from None

    def _read_until(self, marker: bytes, timeout: float | None = None) -> bytes:
        """Bytes up to and including ``marker`` (what follows stays buffered for the next read);
        ReplError after the deadline or when the port goes away."""
        deadline = self._clock() + (self.timeout if timeout is None else timeout)
        buf = self._pending
        while True:
            i = buf.find(marker)
            if i >= 0:
                out = bytes(buf[: i + len(marker)])
                del buf[: i + len(marker)]
                return out
            try:
                chunk = self.port.read(max(1, min(4096, self.port.in_waiting or 1)))
            except (serial.SerialException, OSError) as exc:
                raise ReplError("port_lost", f"serial port lost while reading: {exc}") from None
            if chunk:
                buf += chunk
            elif self._clock() > deadline:
                tail = bytes(buf[-80:])
                raise ReplError("timeout", f"no {marker!r} from the board within the deadline (last bytes {tail!r})")

    # ---- raw mode ----------------------------------------------------------------------------------
    def enter(self) -> None:
        """Interrupt whatever runs and enter raw mode."""
        self.port.reset_input_buffer()
        self._pending.clear()
        self._write(b"\r\x03\x03\x01")
        self._read_until(RAW_BANNER + b">")
        self.in_raw = True

    def exit(self) -> None:
        if self.in_raw:
            self._write(b"\x02")
            self.in_raw = False

    def close(self) -> None:
        with contextlib.suppress(ProvisionError):
            self.exit()
        self.port.close()

    def __enter__(self) -> RawRepl:
        if not self.in_raw:
            self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec(self, code: str, *, timeout: float | None = None) -> ExecResult:
        """Run ``code`` on the board; returns its stdout. DeviceException if it raised."""
        if not self.in_raw:
            self.enter()
        data = code.encode() + b"\x04"
        if not self.chunk_delay:
            self._write(data)  # one write: no small trailing segment for Nagle to hold back on a TCP link
        else:
            for i in range(0, len(data), CHUNK):
                self._write(data[i : i + CHUNK])
                time.sleep(self.chunk_delay)
        self._read_until(b"OK", timeout)
        out = self._read_until(b"\x04", timeout)[:-1]
        err = self._read_until(b"\x04", timeout)[:-1]
        self._read_until(b">", timeout)
        stdout = out.decode("utf-8", "replace").replace("\r\n", "\n")
        if err:
            raise DeviceException(err.decode("utf-8", "replace").replace("\r\n", "\n"))
        return ExecResult(stdout)

    def eval(self, expr: str, *, timeout: float | None = None) -> str:
        """``print(expr)`` on the board; the printed text without the trailing newline."""
        return self.exec(f"print({expr})", timeout=timeout).stdout.rstrip("\n")

    def send_only(self, code: str) -> None:
        """Send code that ends the session (machine.bootloader(), machine.reset()): no reply is awaited
        beyond the board's OK."""
        if not self.in_raw:
            self.enter()
        self._write(code.encode() + b"\x04")
        self._read_until(b"OK")
        self.in_raw = False
