"""Duplicate receptions: the same (device, fcnt) heard on several radios, or repeatedly.

Design (docs/architecture.md, "Dedupe"): the first copy of a frame is verified, accepted and committed at
once (an alarm never waits for its duplicates). A later copy heard within ``window_ms`` of the first
reception is a *duplicate*, not a replay: its reception (radio, adapter, rssi, snr, time) is attached to
the reading, either in the buffer row while the reading is still unbatched (non-alarm readings are held
``collect_ms`` before batching for exactly this), or as a "receptions" gateway event record when the
reading already left in a signed batch. After the window, the same counter is a replay.

A copy is a duplicate only if its bytes equal the first copy's (so it needs no second MIC check, and a
forger cannot attach anything to a real reading). Same counter with other bytes goes through full
verification and, if genuine, is rejected as ``counter_reuse``.

Memory is bounded: per device only the last ``per_device`` accepted frames are remembered.
"""

from __future__ import annotations


class Recent:
    """One remembered accepted frame. A device's entries form a chain, newest first (``older``): one object
    per frame and no list per device (the gateway remembers 10,000s of devices)."""

    __slots__ = ("count", "fcnt", "older", "payload", "priority", "reading_id", "rx_ms")

    def __init__(self, fcnt: int, rx_ms: int, payload: bytes, reading_id: int, priority: int,
                 older: Recent | None = None) -> None:
        self.fcnt = fcnt
        self.rx_ms = rx_ms
        self.payload = payload
        self.reading_id = reading_id
        self.priority = priority
        self.count = 1  # receptions attached so far
        self.older = older  # the device's previous remembered frame


class Deduper:
    def __init__(self, window_ms: int, per_device: int = 2, max_receptions: int = 16) -> None:
        self.window_ms = window_ms
        self.per_device = per_device
        self.max_receptions = max_receptions
        self._by_device: dict[bytes, Recent] = {}  # the newest entry of each device

    def match(self, device: bytes, fcnt: int, rx_ms: int) -> Recent | None:
        """The remembered first copy of (device, fcnt) if this reception is within the window."""
        e = self._by_device.get(device)
        found = None
        while e is not None:  # the oldest entry of that counter (a re-sent re-key confirm is remembered twice)
            if e.fcnt == fcnt:
                found = e
            e = e.older
        if found is None:
            return None
        return found if 0 <= rx_ms - found.rx_ms <= self.window_ms or rx_ms < found.rx_ms else None

    def remember(self, device: bytes, fcnt: int, rx_ms: int, payload: bytes, reading_id: int,
                 priority: int = 2) -> None:
        e = self._by_device[device] = Recent(fcnt, rx_ms, payload, reading_id, priority, self._by_device.get(device))
        for _ in range(self.per_device - 1):
            if e.older is None:
                return
            e = e.older
        e.older = None  # only the last per_device frames are remembered

    def forget(self, device: bytes) -> None:
        self._by_device.pop(device, None)

    def __len__(self) -> int:
        return len(self._by_device)
