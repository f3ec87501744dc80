"""Stage heartbeats for the systemd watchdog.

Every long-running stage loop calls ``beat()`` at least once per ``HEARTBEAT_S`` (also while idle: its
waits have that timeout). The watchdog pings systemd only while every registered stage is fresh, so a
stage stuck in a hung call stops the pings and systemd restarts the daemon.
"""

from __future__ import annotations

from lifeline.gateway.clock import Clock

HEARTBEAT_S = 1.0


class Heartbeat:
    __slots__ = ("_clock", "last", "name")

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self._clock = clock
        self.last = clock.monotonic()

    def beat(self) -> None:
        self.last = self._clock.monotonic()


class Heartbeats:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._beats: dict[str, Heartbeat] = {}

    def register(self, name: str) -> Heartbeat:
        hb = Heartbeat(name, self._clock)
        self._beats[name] = hb
        return hb

    def unregister(self, name: str) -> None:
        self._beats.pop(name, None)

    def stale(self, max_age_s: float) -> list[str]:
        now = self._clock.monotonic()
        return sorted(n for n, hb in self._beats.items() if now - hb.last > max_age_s)

    def ages(self) -> dict[str, float]:
        now = self._clock.monotonic()
        return {n: now - hb.last for n, hb in self._beats.items()}
