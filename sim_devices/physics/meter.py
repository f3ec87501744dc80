"""Utility meters: water/gas reed-pulse meters and an SDM120 electricity meter.

Pulse meters (firmware/sensors/pulse.py decodes them): 1 litre per pulse (firmware default), two reeds
in quadrature (A then B = forward; B leading A = reverse flow) and a hall sensor on channel 2 that sees a
magnet. Pulses accrued in each 60 s block are spread evenly over it (>= 100 ms apart, so the firmware's
20 ms debounce never merges them).

* Consumption: household use as Poisson draw-off events whose hourly rate follows a residential daily
  demand pattern (night minimum, morning peak 07-09 h, evening peak 19-21 h; the classic two-peak
  residential diurnal curve), ``daily_l`` litres a day (default 300 L: a household of 2-3 at 120 L per
  person), each event 4-40 L at 6-12 L/min.
* ``leak``: a continuous flow of ``lph`` L/h (default 30: a running toilet cistern) from ``start``.
* ``reverse``: back-flow of ``lph`` (default 60) L/h, counted by the quadrature reeds as reverse pulses.
* ``magnet``: a magnet on the register: the hall input reads 1 and the reed stays closed (no pulses).

Electricity (Eastron SDM120 over Modbus, firmware/sensors/electricity.py): voltage 230 V +- 1 %,
power following a residential load profile (mean ``mean_w``, default 450 W), energy integrated between
reads; ``reverse`` (PV export / a meter wired backwards) makes the export register rise at ``w`` W.
"""

from __future__ import annotations

import math
import struct

from lifeline.sim_devices.physics.base import DailyProfile, Model, hour_of_day, rng_for

WATER_PROFILE = DailyProfile((0.20, 0.12, 0.08, 0.08, 0.10, 0.35, 1.30, 2.20, 2.00, 1.40, 1.00, 0.95,
                              1.05, 0.90, 0.80, 0.80, 0.95, 1.25, 1.60, 1.80, 1.60, 1.20, 0.75, 0.40))
POWER_PROFILE = DailyProfile((0.45, 0.40, 0.38, 0.37, 0.38, 0.45, 0.80, 1.20, 1.10, 0.90, 0.85, 0.90,
                              0.95, 0.90, 0.85, 0.90, 1.05, 1.45, 1.85, 1.90, 1.70, 1.40, 0.95, 0.60))
BLOCK_S = 60.0
MIN_PULSE_GAP_MS = 100


class PulseMeter(Model):
    name = "meter"
    EPISODES = ("leak", "reverse", "magnet")

    def __init__(self, seed: int, device: str, origin_unix_s: float, *, daily_l: float = 300.0,
                 tz_min: int = 0) -> None:
        super().__init__(seed, device, origin_unix_s)
        self.seed = seed
        self.daily_l = daily_l
        self.tz_min = tz_min
        self._hours: dict[int, list[tuple[float, float, float]]] = {}
        self._fwd_acc = 0.0  # litres accrued but not yet pulsed
        self._rev_acc = 0.0
        self._magnet_level = 0
        self.litres_fwd = 0
        self.litres_rev = 0

    def draws(self, hour_index: int) -> list[tuple[float, float, float]]:
        """Draw-off events in simulated hour ``hour_index``: (start s, end s, litres per second)."""
        got = self._hours.get(hour_index)
        if got is None:
            r = rng_for(self.seed, self.device, "draws", hour_index)
            h = hour_of_day(self.origin_unix_s, (hour_index + 0.5) * 3600_000.0, self.tz_min)
            mean_event_l = 22.0
            rate = self.daily_l / mean_event_l / 24.0 * WATER_PROFILE.at(h) / WATER_PROFILE.mean
            t = hour_index * 3600.0
            got = []
            while True:
                t += r.expovariate(rate / 3600.0) if rate > 0 else 7200.0
                if t >= (hour_index + 1) * 3600.0:
                    break
                litres = r.uniform(4.0, 40.0)
                lps = r.uniform(6.0, 12.0) / 60.0
                got.append((t, t + litres / lps, lps))
            if len(self._hours) > 48:
                self._hours.clear()
            self._hours[hour_index] = got
        return got

    def _volume(self, a: float, b: float) -> tuple[float, float]:
        """(forward litres, reverse litres) that flowed through the meter in [a, b) seconds."""
        fwd = 0.0
        for h in range(int(a // 3600) - 1, int(b // 3600) + 1):
            if h < 0:
                continue
            for s, e, lps in self.draws(h):
                lo, hi = max(a, s), min(b, e)
                if hi > lo:
                    fwd += (hi - lo) * lps
        rev = 0.0
        for ep in self.episodes:
            lo = max(a, ep.start_s)
            hi = min(b, ep.start_s + ep.duration_s) if ep.duration_s is not None else b
            if hi <= lo:
                continue
            if ep.kind == "leak":
                fwd += (hi - lo) * ep.params.get("lph", 30.0) / 3600.0
            elif ep.kind == "reverse":
                rev += (hi - lo) * ep.params.get("lph", 60.0) / 3600.0
        return fwd, rev

    def _magnet(self, t_s: float) -> bool:
        return bool(self.active("magnet", t_s))

    def pulses(self, hal: object, t_from_ms: int, t_to_ms: int) -> list[tuple[int, int, int]]:
        """Provider for the ``meter`` pulse input: raw edges (t_ms, channel, level) in (t_from, t_to]."""
        edges: list[tuple[int, int, int]] = []
        if self.stuck_from_s is not None and t_to_ms / 1000.0 >= self.stuck_from_s:
            return edges  # a broken reed: no pulses at all
        t = t_from_ms / 1000.0
        end = t_to_ms / 1000.0
        while t < end:
            b = min(end, (math.floor(t / BLOCK_S) + 1) * BLOCK_S)
            magnet = self._magnet(t)
            level = 1 if magnet else 0
            if level != self._magnet_level:
                self._magnet_level = level
                edges.append((int(t * 1000) + 1, 2, level))
            if not magnet:
                fwd, rev = self._volume(t, b)
                self._fwd_acc += fwd
                self._rev_acc += rev
                n_f = int(self._fwd_acc)
                n_r = int(self._rev_acc)
                self._fwd_acc -= n_f
                self._rev_acc -= n_r
                self.litres_fwd += n_f
                self.litres_rev += n_r
                n = n_f + n_r
                if n:
                    span_ms = (b - t) * 1000.0
                    gap = max(MIN_PULSE_GAP_MS * 4, span_ms / n)
                    for i in range(n):
                        t0 = int(t * 1000 + i * gap) + 5
                        q = max(25, int(gap / 4))
                        if i < n_f:  # A rises with B open: forward
                            edges += [(t0, 0, 1), (t0 + q, 1, 1), (t0 + 2 * q, 0, 0), (t0 + 3 * q, 1, 0)]
                        else:  # B leads: A rises with B closed: reverse
                            edges += [(t0, 1, 1), (t0 + q, 0, 1), (t0 + 2 * q, 1, 0), (t0 + 3 * q, 0, 0)]
            t = b
        return [e for e in edges if e[0] <= t_to_ms]

    def tamper_pin(self, hal: object, t_ms: int) -> int:
        return 1 if self._magnet(t_ms / 1000.0) else 0

    def interrupts(self, t0_ms: float, t1_ms: float) -> float | None:
        for e in self.episodes:
            if e.kind == "magnet" and t0_ms < e.start_s * 1000.0 <= t1_ms:
                return e.start_s * 1000.0 + 1.0
        return None


def _f32_words(value: float) -> tuple[int, int]:
    u = int.from_bytes(struct.pack(">f", value), "big")
    return u >> 16, u & 0xFFFF


class ElectricityLoad(Model):
    name = "electricity"
    EPISODES = ("reverse",)

    def __init__(self, seed: int, device: str, origin_unix_s: float, *, mean_w: float = 450.0) -> None:
        super().__init__(seed, device, origin_unix_s)
        self.mean_w = mean_w
        self.import_wh = self.rng.uniform(1000.0, 50000.0)
        self.export_wh = 0.0
        self._t: float | None = None
        self._regs: dict[int, int] = {}

    def power_w(self, t_s: float) -> float:
        h = hour_of_day(self.origin_unix_s, t_s * 1000.0)
        return self.mean_w * POWER_PROFILE.at(h) / POWER_PROFILE.mean

    def registers(self, hal: object, t_ms: int) -> dict[int, int]:
        """Provider for the SDM120 model: input registers (float32 pairs) at ``t_ms``."""
        t_s = t_ms / 1000.0
        if self.stuck_from_s is not None and t_s >= self.stuck_from_s and self._regs:
            return self._regs
        p = self.power_w(t_s) * (1.0 + self.rng.gauss(0.0, 0.05))
        export_w = sum(e.params.get("w", 800.0) for e in self.active("reverse", t_s))
        if self._t is not None and t_s > self._t:
            dt_h = (t_s - self._t) / 3600.0
            self.import_wh += max(0.0, p) * dt_h
            self.export_wh += export_w * dt_h
        self._t = t_s
        volts = 230.0 * (1.0 + self.rng.gauss(0.0, 0.01))
        regs: dict[int, int] = {}
        for reg, value in ((0x0000, volts), (0x000C, p - export_w), (0x0048, self.import_wh / 1000.0),
                           (0x004A, self.export_wh / 1000.0)):
            hi, lo = _f32_words(value)
            regs[reg] = hi
            regs[reg + 1] = lo
        self._regs = regs
        return regs
