"""Shared pieces of the physical models: seeds, daily profiles, scheduled episodes.

Every model is a plain object whose methods are HAL sample providers (``provider(hal, t_ms)``), where
``t_ms`` is simulated milliseconds since the simulation origin. A model owns one ``random.Random``
seeded from (scenario seed, device, model name); a node's provider calls happen in a fixed order (its
own wakes), so the same seed gives the same readings whatever else the fleet does.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field


def derive_seed(*parts: object) -> int:
    text = ":".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def rng_for(*parts: object) -> random.Random:
    return random.Random(derive_seed(*parts))


def hour_of_day(origin_unix_s: float, t_ms: float, tz_min: int = 0) -> float:
    """Local hour (0..24, fractional) at simulated time ``t_ms``."""
    return ((origin_unix_s + t_ms / 1000.0 + tz_min * 60) / 3600.0) % 24.0


@dataclass(frozen=True, slots=True)
class DailyProfile:
    """24 hourly weights, linearly interpolated between hour centres (wraps at midnight)."""

    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.weights) != 24:
            raise ValueError("a daily profile has 24 hourly weights")

    def at(self, hour: float) -> float:
        x = hour - 0.5
        i = math.floor(x)
        f = x - i
        a = self.weights[i % 24]
        b = self.weights[(i + 1) % 24]
        return a + (b - a) * f

    @property
    def mean(self) -> float:
        return sum(self.weights) / 24.0


@dataclass(slots=True)
class Episode:
    """Something that happens to one device from ``start_s`` (simulated seconds) on, for ``duration_s``
    (None: until the end), with model-specific parameters."""

    kind: str
    start_s: float
    duration_s: float | None = None
    params: dict[str, float] = field(default_factory=dict)

    def active(self, t_s: float) -> bool:
        return t_s >= self.start_s and (self.duration_s is None or t_s < self.start_s + self.duration_s)

    def age_s(self, t_s: float) -> float:
        return t_s - self.start_s


class Model:
    """Base of the sensor models: a seeded RNG, scheduled episodes and the 'stuck sensor' fault."""

    name = "model"
    EPISODES: Sequence[str] = ()

    def __init__(self, seed: int, device: str, origin_unix_s: float) -> None:
        self.rng = rng_for(seed, device, self.name)
        self.device = device
        self.origin_unix_s = origin_unix_s
        self.episodes: list[Episode] = []
        self.stuck_from_s: float | None = None

    def add(self, kind: str, start_s: float, duration_s: float | None = None, **params: float) -> Episode:
        if kind not in self.EPISODES:
            raise ValueError(f"{self.name}: unknown episode {kind!r} (known: {', '.join(self.EPISODES)})")
        ep = Episode(kind, start_s, duration_s, dict(params))
        self.episodes.append(ep)
        return ep

    def active(self, kind: str, t_s: float) -> list[Episode]:
        return [e for e in self.episodes if e.kind == kind and e.active(t_s)]

    def stick(self, start_s: float) -> None:
        """From ``start_s`` on the sensor repeats its last output (a frozen reading)."""
        self.stuck_from_s = start_s

    def interrupts(self, t0_ms: float, t1_ms: float) -> float | None:
        """The first time in (t0, t1] at which the device would raise a wake interrupt, or None."""
        return None
