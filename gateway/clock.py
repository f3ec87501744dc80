"""Time for the gateway, injected everywhere so tests control it.

``now_ms`` is wall-clock Unix milliseconds (record timestamps, TTLs, batch ``created``);
``monotonic`` is seconds for intervals and heartbeats (never jumps with NTP).
"""

from __future__ import annotations

import time
from typing import Protocol

EPOCH_UNIX = 1577836800  # Lifeline epoch 2020-01-01T00:00:00Z (docs/protocol.md)


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = now_ms
        self._mono = 1000.0

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._mono

    def advance(self, ms: int) -> None:
        self._now_ms += ms
        self._mono += ms / 1000.0


def lifeline_time(now_ms: int) -> int:
    """Unix ms -> Lifeline-epoch seconds as sent on the wire (uint32)."""
    return max(0, now_ms // 1000 - EPOCH_UNIX) & 0xFFFFFFFF
