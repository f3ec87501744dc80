"""A DUT's serial console: everything the board prints, kept in a buffer and a log file, read with
expect-style waits.

A background thread reads the port (pyserial: a /dev path, a pty, or any pyserial URL such as
``socket://``) so the board never blocks on a full UART and the log holds every byte, including what no
test waited for. :meth:`Console.expect` searches from the end of the previous match; on time-out it
raises :class:`ExpectTimeout`, whose message carries the pattern, the buffer's tail and the log path
(pytest-embedded's habit: a failure explains itself).

:meth:`Console.borrow` lends the open port to someone who speaks a protocol on it (the raw REPL): the
reader pauses, the borrower reads and writes directly, and the reader resumes afterwards.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import serial

DEFAULT_TIMEOUT_S = 10.0
TAIL_BYTES = 800


class ConsoleError(RuntimeError):
    """The console port could not be opened or was lost."""


class ExpectTimeout(AssertionError):
    """A console expectation was not met in time. An AssertionError, so pytest reports it as a failed check."""

    def __init__(self, name: str, pattern: str, timeout_s: float, tail: bytes, log_path: Path) -> None:
        self.pattern = pattern
        self.timeout_s = timeout_s
        self.tail = tail
        self.log_path = log_path
        text = tail.decode("utf-8", "replace").replace("\r\n", "\n")
        super().__init__(
            f"{name}: no match for {pattern!r} within {timeout_s:g} s\n"
            f"--- last {len(tail)} bytes of the console ---\n{text}\n--- full log: {log_path}"
        )


class Console:
    """The reading side of one DUT console."""

    def __init__(self, url: str, log_path: Path, *, name: str = "dut", baud: int = 115200) -> None:
        self.url = url
        self.name = name
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        try:
            self.port: Any = serial.serial_for_url(url, baudrate=baud, timeout=0.05)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._log.close()
            raise ConsoleError(f"{name}: cannot open console {url}: {exc}") from None
        self._buf = bytearray()
        self._pos = 0  # expect searches from here (end of the last match)
        self._cond = threading.Condition()
        self._paused = threading.Event()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self.lost: str | None = None
        self._thread = threading.Thread(target=self._read_loop, name=f"console-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ reading
    def _read_loop(self) -> None:
        while not self._stop.is_set():
            if self._paused.is_set():
                self._idle.set()
                time.sleep(0.01)
                continue
            self._idle.clear()
            try:
                data = self.port.read(4096)
            except (serial.SerialException, OSError, TypeError) as exc:
                if self._stop.is_set():
                    return
                self.lost = str(exc)
                self._feed(f"\n[console lost: {exc}]\n".encode())
                return
            if data:
                self._feed(data)

    def _feed(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            self._log.write(data)
            self._log.flush()
            self._cond.notify_all()

    def write_note(self, text: str) -> None:
        """A line in the log that did not come from the board (what the harness did), marked as such."""
        with self._cond:
            self._log.write(f"\n[hil {time.strftime('%H:%M:%S')}] {text}\n".encode())
            self._log.flush()

    # ------------------------------------------------------------------------------------------ waiting
    def expect(self, pattern: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> re.Match[bytes]:
        """Wait for ``pattern`` (a regular expression) after the previous match; return the match."""
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                m = regex.search(self._buf, self._pos)
                if m is not None:
                    self._pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ExpectTimeout(self.name, pattern, timeout_s, bytes(self._buf[-TAIL_BYTES:]), self.log_path)
                self._cond.wait(min(left, 0.2))

    def skip(self) -> None:
        """Forget what was printed so far: the next expect only sees new output."""
        with self._cond:
            self._pos = len(self._buf)

    def text(self) -> str:
        with self._cond:
            return self._buf.decode("utf-8", "replace")

    def count(self, pattern: str) -> int:
        with self._cond:
            return len(re.findall(pattern.encode(), self._buf))

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        """The open port for a protocol exchange (the reader pauses meanwhile)."""
        self._paused.set()
        self._idle.wait(2.0)
        try:
            yield self.port
        finally:
            self._paused.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(Exception):
            self.port.close()
        with self._cond:
            self._log.close()
