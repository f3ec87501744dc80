"""Shared helpers for the firmware tests (CPython side)."""

from __future__ import annotations

import socket
from typing import Any

import pytest


class RealNet:
    """The sim HAL's network seam over real loopback sockets. Waiting for data advances the virtual clock
    by the time waited, so firmware deadlines (virtual) and the socket (real) agree."""

    def __init__(self, step_ms: int = 100) -> None:
        self.step_ms = step_ms
        self.attached = True
        self.opened: list[socket.socket] = []

    def up(self, hal: Any, cfg: Any, timeout_ms: int) -> bool:
        return self.attached

    def connect(self, hal: Any, host: str, port: int, timeout_ms: int) -> Any:
        s = socket.create_connection((host, port), timeout=timeout_ms / 1000)
        self.opened.append(s)
        return _Stream(hal, s, self.step_ms)

    def close_all(self) -> None:
        for s in self.opened:
            s.close()


class _Stream:
    def __init__(self, hal: Any, sock: socket.socket, step_ms: int) -> None:
        self.hal = hal
        self.sock = sock
        self.step_ms = step_ms

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int, timeout_ms: int) -> bytes:
        wait = max(1, min(timeout_ms, self.step_ms))
        self.sock.settimeout(wait / 1000)
        try:
            data = self.sock.recv(n)
        except TimeoutError:
            self.hal.clock.advance(wait)
            return b""
        if not data:
            raise OSError(104, "ECONNRESET")
        return data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def real_net() -> Any:
    net = RealNet()
    yield net
    net.close_all()
