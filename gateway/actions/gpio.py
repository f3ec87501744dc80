"""GPIO relays (pumps, valves, sirens wired to the gateway) through the Linux GPIO character device.

On the Pi, ``chip = "/dev/gpiochip0"`` drives lines with libgpiod's Python binding (``gpiod`` 2.x:
``request_lines`` + ``LineRequest.set_value``), imported only when such an output is configured. Each line
is requested once, as an output, and held for the daemon's lifetime so the relay keeps its level.

Where no chip exists (tests, the simulator) ``chip = "sim:<name>"`` selects a :class:`SimChip`: a model
of a gpiochip with the kernel's rules that matter here - a line has one owner (a second request is
``EBUSY``), only the owner may drive it (``EPERM``), offsets beyond the chip are ``EINVAL`` - and a
history of every level change with its time, for assertions.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lifeline.gateway.actions import ActionFailed
from lifeline.gateway.clock import Clock
from lifeline.gateway.rules_engine.model import GpioOutput


@dataclass
class SimLine:
    offset: int
    value: int = 0  # physical level
    direction: str = "input"
    consumer: str | None = None
    history: list[tuple[int, int]] = field(default_factory=list)  # (time ms, level)


class SimChip:
    """A simulated gpiochip (process-wide by name, like /dev/gpiochipN is system-wide)."""

    _chips: ClassVar[dict[str, SimChip]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str, lines: int = 54) -> None:  # 54: the BCM2835 header's GPIO count
        self.name = name
        self.lines = [SimLine(i) for i in range(lines)]

    @classmethod
    def get(cls, name: str, lines: int = 54) -> SimChip:
        with cls._guard:
            chip = cls._chips.get(name)
            if chip is None:
                chip = cls._chips[name] = SimChip(name, lines)
            return chip

    @classmethod
    def remove(cls, name: str) -> None:
        with cls._guard:
            cls._chips.pop(name, None)

    def _line(self, offset: int) -> SimLine:
        if not 0 <= offset < len(self.lines):
            raise OSError(errno.EINVAL, f"{self.name}: no line {offset} (chip has {len(self.lines)})")
        return self.lines[offset]

    def request_output(self, offset: int, consumer: str, value: int, now_ms: int) -> None:
        line = self._line(offset)
        if line.consumer is not None and line.consumer != consumer:
            raise OSError(errno.EBUSY, f"{self.name} line {offset} is used by {line.consumer!r}")
        line.consumer = consumer
        line.direction = "output"
        self._level(line, value, now_ms)

    def set_value(self, offset: int, consumer: str, value: int, now_ms: int) -> None:
        line = self._line(offset)
        if line.consumer != consumer or line.direction != "output":
            raise OSError(errno.EPERM, f"{self.name} line {offset} is not requested as an output by {consumer!r}")
        self._level(line, value, now_ms)

    def release(self, offset: int, consumer: str) -> None:
        line = self._line(offset)
        if line.consumer == consumer:
            line.consumer = None
            line.direction = "input"

    @staticmethod
    def _level(line: SimLine, value: int, now_ms: int) -> None:
        value = 1 if value else 0
        if not line.history or line.value != value:
            line.history.append((now_ms, value))
        line.value = value

    def value(self, offset: int) -> int:
        return self._line(offset).value

    def history(self, offset: int) -> list[tuple[int, int]]:
        return list(self._line(offset).history)


class _SimBackend:
    def __init__(self, chip: SimChip, consumer: str, now_ms: Callable[[], int]) -> None:
        self.chip = chip
        self.consumer = consumer
        self.now_ms = now_ms

    def request(self, offset: int, level: int) -> None:
        self.chip.request_output(offset, self.consumer, level, self.now_ms())

    def set(self, offset: int, level: int) -> None:
        self.chip.set_value(offset, self.consumer, level, self.now_ms())

    def release(self, offset: int) -> None:
        self.chip.release(offset, self.consumer)


class _GpiodBackend:
    """libgpiod 2.x: one LineRequest per line, held until close."""

    def __init__(self, path: str, consumer: str) -> None:
        try:
            import gpiod  # type: ignore[import-not-found, unused-ignore]
            from gpiod.line import Direction, Value  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise ActionFailed("the gpiod Python binding (libgpiod 2.x) is not installed") from None
        self._gpiod: Any = gpiod
        self._dir: Any = Direction
        self._val: Any = Value
        self.path = path if path.startswith("/") else f"/dev/{path}"
        self.consumer = consumer
        self._requests: dict[int, Any] = {}

    def _value(self, level: int) -> Any:
        return self._val.ACTIVE if level else self._val.INACTIVE

    def request(self, offset: int, level: int) -> None:
        settings = self._gpiod.LineSettings(direction=self._dir.OUTPUT, output_value=self._value(level))
        self._requests[offset] = self._gpiod.request_lines(self.path, consumer=self.consumer,
                                                           config={offset: settings})

    def set(self, offset: int, level: int) -> None:
        self._requests[offset].set_value(offset, self._value(level))

    def release(self, offset: int) -> None:
        req = self._requests.pop(offset, None)
        if req is not None:
            req.release()


class GpioRelays:
    """One chip's lines, driven by rules. ``value`` 1 = on (energised; inverted with ``active_low``)."""

    def __init__(self, name: str, spec: GpioOutput, clock: Clock) -> None:
        self.name = name
        self.spec = spec
        self.clock = clock
        self._backend: _SimBackend | _GpiodBackend | None = None
        self._requested: set[int] = set()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        return None

    def _open(self) -> _SimBackend | _GpiodBackend:
        if self._backend is None:
            chip = self.spec.chip
            if chip.startswith("sim:"):
                self._backend = _SimBackend(SimChip.get(chip[4:]), self.spec.consumer, self.clock.now_ms)
            else:
                self._backend = _GpiodBackend(chip, self.spec.consumer)
        return self._backend

    async def set(self, line: int, value: int) -> str:
        level = (1 - value) if self.spec.active_low else value
        async with self._lock:
            try:
                backend = self._open()
                if line in self._requested:
                    backend.set(line, level)
                else:
                    backend.request(line, level)
                    self._requested.add(line)
            except OSError as e:
                raise ActionFailed(f"{self.spec.chip} line {line}: {e.strerror or e}") from None
        return f"line {line} {'on' if value else 'off'}"

    async def close(self) -> None:
        async with self._lock:
            backend = self._backend
            if backend is None:
                return
            for line in sorted(self._requested):
                try:
                    backend.release(line)
                except OSError:
                    continue
            self._requested.clear()
