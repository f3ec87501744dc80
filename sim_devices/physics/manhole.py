"""A manhole cover with a LIS3DH under it: gravity, traffic vibration, and a cover that moves.

Output: acceleration (x, y, z) in mg as the LIS3DH reports it (firmware/hal/sim_chips.py ``Lis3dh``).

* Gravity: 1 g along the cover's normal, rotated by the cover's tilt; a closed cover sits at a small
  installation tilt (random, under 1.5 degrees), which the firmware records as its baseline.
* Traffic: heavy vehicles pass as a Poisson process whose hourly rate follows a daily profile
  (``heavy_per_hour`` at the daytime peak; a main road carries about 40 heavy vehicles an hour in the day,
  a residential street 2). A passage shakes the cover for 0.8-2.5 s at 12-18 Hz with 250-700 mg peak
  (ranges typical of road-induced vibration measured on manhole frames), which raises the LIS3DH
  motion interrupt when above its 256 mg threshold.
* Episodes: ``lift`` (the cover is lifted and leant against the frame: tilt to ``angle`` degrees, default
  85, over 5 s of strong handling vibration), ``displace`` (pushed aside by a vehicle or a surcharge: tilt
  ``angle``, default 8 degrees, over 2 s), ``flood`` (a surcharging sewer lifts and drops the cover: 1 s
  bursts of 400 mg every 3 s with the tilt swinging 3-12 degrees, for the episode's duration), ``close``
  (the cover is put back at ``start``).
* Read noise: 4 mg RMS per axis (LIS3DH at 50 Hz, HR mode, datasheet noise density 220 ug/sqrt(Hz)).
"""

from __future__ import annotations

import math

from lifeline.sim_devices.physics.base import DailyProfile, Model, rng_for

# Heavy-vehicle share of urban road traffic by hour (relative), peaking in the working day.
TRAFFIC_PROFILE = DailyProfile((0.10, 0.08, 0.07, 0.07, 0.10, 0.25, 0.55, 0.85, 1.00, 0.95, 0.90, 0.90,
                                0.90, 0.90, 0.90, 0.95, 1.00, 0.95, 0.75, 0.50, 0.35, 0.25, 0.18, 0.12))
NOISE_MG = 4.0
MOTION_MG = 256


class ManholeCover(Model):
    name = "manhole"
    EPISODES = ("lift", "displace", "flood", "close")

    def __init__(self, seed: int, device: str, origin_unix_s: float, *, heavy_per_hour: float = 2.0) -> None:
        super().__init__(seed, device, origin_unix_s)
        self.heavy_per_hour = heavy_per_hour
        self.seed = seed
        a = self.rng.uniform(0.0, 2 * math.pi)
        tilt = math.radians(self.rng.uniform(0.2, 1.5))
        self.base_axis = (math.cos(a), math.sin(a))  # direction the cover leans at installation
        self.base_tilt = tilt
        self._hours: dict[int, list[tuple[float, float, float, float]]] = {}
        self._last = (0, 0, 1000)

    # --- traffic -----------------------------------------------------------------------------------
    def vehicles(self, hour_index: int) -> list[tuple[float, float, float, float]]:
        """Passages in simulated hour ``hour_index``: (start s, duration s, peak mg, frequency Hz)."""
        got = self._hours.get(hour_index)
        if got is None:
            r = rng_for(self.seed, self.device, "traffic", hour_index)
            h = (self.origin_unix_s / 3600.0 + hour_index + 0.5) % 24.0
            rate = self.heavy_per_hour * TRAFFIC_PROFILE.at(h)
            t = hour_index * 3600.0
            got = []
            while True:
                t += r.expovariate(rate / 3600.0) if rate > 0 else 7200.0
                if t >= (hour_index + 1) * 3600.0:
                    break
                got.append((t, r.uniform(0.8, 2.5), r.uniform(250.0, 700.0), r.uniform(12.0, 18.0)))
            if len(self._hours) > 48:
                self._hours.clear()
            self._hours[hour_index] = got
        return got

    def _vibration(self, t_s: float) -> float:
        v = 0.0
        for start, dur, peak, freq in self.vehicles(int(t_s // 3600)):
            if start <= t_s < start + dur:
                envelope = math.sin(math.pi * (t_s - start) / dur)
                v += peak * envelope * math.sin(2 * math.pi * freq * (t_s - start))
        return v

    # --- the cover ---------------------------------------------------------------------------------
    def tilt_deg(self, t_s: float) -> tuple[float, float]:
        """(tilt in degrees relative to the installed position, extra vibration mg)."""
        tilt = 0.0
        shake = 0.0
        closes = [e.start_s for e in self.episodes if e.kind == "close" and e.start_s <= t_s]
        last_close = max(closes) if closes else -math.inf
        for e in self.episodes:
            if e.kind == "close" or not e.active(t_s) or e.start_s < last_close:
                continue
            age = e.age_s(t_s)
            if e.kind in ("lift", "displace"):
                ramp = 5.0 if e.kind == "lift" else 2.0
                angle = e.params.get("angle", 85.0 if e.kind == "lift" else 8.0)
                tilt = max(tilt, angle * min(1.0, age / ramp))
                if age < ramp:
                    shake += 500.0 * math.sin(2 * math.pi * 9.0 * age)
            elif e.kind == "flood":
                phase = age % 3.0
                if phase < 1.0:
                    shake += 400.0 * math.sin(2 * math.pi * 6.0 * age)
                tilt = max(tilt, 7.5 + 4.5 * math.sin(2 * math.pi * age / 3.0))
        return tilt, shake

    def accel(self, hal: object, t_ms: int) -> tuple[int, int, int]:
        """Provider for the LIS3DH: (x, y, z) in mg."""
        t_s = t_ms / 1000.0
        if self.stuck_from_s is not None and t_s >= self.stuck_from_s:
            return self._last
        tilt, shake = self.tilt_deg(t_s)
        th = self.base_tilt + math.radians(tilt)
        ax, ay = self.base_axis
        g = 1000.0
        x = g * math.sin(th) * ax
        y = g * math.sin(th) * ay
        z = g * math.cos(th) + shake + self._vibration(t_s)
        n = self.rng.gauss
        self._last = (int(x + n(0, NOISE_MG)), int(y + n(0, NOISE_MG)), int(z + n(0, NOISE_MG)))
        return self._last

    def interrupts(self, t0_ms: float, t1_ms: float) -> float | None:
        """The LIS3DH INT1 (motion above 256 mg): vehicles strong enough, and the start of every episode."""
        t0, t1 = t0_ms / 1000.0, t1_ms / 1000.0
        best: float | None = None
        for e in self.episodes:
            if e.kind != "close" and t0 < e.start_s <= t1:
                best = e.start_s if best is None else min(best, e.start_s)
            if e.kind == "flood" and e.active(t1) and e.start_s <= t0:
                nxt = e.start_s + 3.0 * math.ceil((t0 - e.start_s) / 3.0 + 1e-9)
                if nxt <= t1:
                    best = nxt if best is None else min(best, nxt)
        h = int(t0 // 3600)
        while h * 3600.0 <= t1:
            for start, _dur, peak, _f in self.vehicles(h):
                if t0 < start <= t1 and peak >= MOTION_MG:
                    best = start if best is None else min(best, start)
                    break
            if best is not None and best < (h + 1) * 3600.0:
                break
            h += 1
        return None if best is None else best * 1000.0
