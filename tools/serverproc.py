"""The life cycle every local server the tests and benches start shares (Mosquitto, NATS nodes).

A subclass owns how its process is configured and started; this mixin owns its log and how it ends: SIGTERM with a
bounded wait then SIGKILL (``stop``), SIGKILL at once (``kill``), SIGSTOP/SIGCONT (``pause``/``resume``),
and the wait until none of its ports accepts connections any more, so a restart on the same ports cannot
race the old process.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path


def port_accepts(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class ServerProcess:
    host: str
    _proc: subprocess.Popen[bytes] | None
    _log_file: Path  # where the subclass sends the server's stdout and stderr
    stop_timeout_s: float = 5.0
    error_type: type[Exception] = RuntimeError

    def _ports(self) -> list[int]:
        raise NotImplementedError

    def _label(self) -> str:
        return type(self).__name__

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float | None = None) -> None:
        """SIGTERM, wait (bounded), then SIGKILL. Idempotent."""
        timeout_s = self.stop_timeout_s if timeout_s is None else timeout_s
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
                proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        self._proc = None
        self._wait_ports_closed(timeout_s)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word (no DISCONNECT, no goodbye to its peers)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=self.stop_timeout_s)
        self._proc = None
        self._wait_ports_closed(self.stop_timeout_s)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a hung server or a stalled path)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        try:
            return self._log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _wait_ports_closed(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(port_accepts(self.host, p, 0.05) for p in self._ports()):
            if time.monotonic() > deadline:
                raise self.error_type(f"{self._label()}: ports {self._ports()} still accept after it stopped")
            time.sleep(0.01)  # polling a port, bounded by the deadline
