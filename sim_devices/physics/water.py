"""Water level in a channel or storm drain under a downward-looking ultrasonic ranger (A02YYUW).

Output: the distance in mm from the ranger (mounted ``mount_mm`` above the channel bottom, firmware
default 3000) to the water surface, one value per 100 ms frame; None = no echo.

* Dry weather: base flow of ``base_mm`` (default 120 mm) with the daily wastewater pattern (a morning and
  an evening peak, +-40 %), echo jitter of 2 mm RMS (the firmware's frozen-sensor check relies on it).
* ``rain`` episode: ``depth_mm`` of rain (default 40) falling evenly over the episode's duration (default
  30 min). Runoff by the NRCS curve number method, Q = (P - 0.2 S)² / (P + 0.8 S), S = 25400/CN - 254
  (urban catchment CN = ``cn``, default 90), routed with the NRCS dimensionless unit hydrograph (NEH Part
  630, Chapter 16, Table 16-1) with time to peak ``tp_min`` (default 30 min). Stage from flow by the
  wide-channel Manning relation, h ∝ q^0.6: ``stage_mm`` (default 330 mm) per (mm of runoff)^0.6.
* ``blocked`` episode: debris, a spider web or ice in front of the transducer: echoes at ``distance``
  mm (default 120, inside the 250 mm blind zone the firmware checks).
* ``no_echo`` episode: nothing comes back (a detached transducer, foam on the water).
* The stuck-sensor fault repeats the last distance exactly (no jitter).
"""

from __future__ import annotations

import bisect

from lifeline.sim_devices.physics.base import DailyProfile, Model, hour_of_day

# NRCS dimensionless unit hydrograph (t/tp, q/qp), NEH 630.16 Table 16-1.
SCS_UH: tuple[tuple[float, float], ...] = (
    (0.0, 0.000), (0.1, 0.030), (0.2, 0.100), (0.3, 0.190), (0.4, 0.310), (0.5, 0.470), (0.6, 0.660),
    (0.7, 0.820), (0.8, 0.930), (0.9, 0.990), (1.0, 1.000), (1.1, 0.990), (1.2, 0.930), (1.3, 0.860),
    (1.4, 0.780), (1.5, 0.680), (1.6, 0.560), (1.7, 0.460), (1.8, 0.390), (1.9, 0.330), (2.0, 0.280),
    (2.2, 0.207), (2.4, 0.147), (2.6, 0.107), (2.8, 0.077), (3.0, 0.055), (3.2, 0.040), (3.4, 0.029),
    (3.6, 0.021), (3.8, 0.015), (4.0, 0.011), (4.5, 0.005), (5.0, 0.000))
_UH_X = [p[0] for p in SCS_UH]
WASTEWATER = DailyProfile((0.70, 0.62, 0.58, 0.56, 0.58, 0.70, 1.00, 1.35, 1.40, 1.25, 1.10, 1.05,
                           1.05, 1.00, 0.95, 0.95, 1.00, 1.10, 1.25, 1.35, 1.30, 1.15, 0.95, 0.80))
JITTER_MM = 2.0


def unit_hydrograph(t_over_tp: float) -> float:
    """q/qp of the NRCS dimensionless unit hydrograph, linearly interpolated (0 outside 0..5)."""
    if t_over_tp <= 0.0 or t_over_tp >= 5.0:
        return 0.0
    i = bisect.bisect_right(_UH_X, t_over_tp)
    (x0, y0), (x1, y1) = SCS_UH[i - 1], SCS_UH[i]
    return y0 + (y1 - y0) * (t_over_tp - x0) / (x1 - x0)


def runoff_mm(rain_mm: float, cn: float) -> float:
    """NRCS curve number runoff depth for ``rain_mm`` of rain (initial abstraction 0.2 S)."""
    s = 25400.0 / cn - 254.0
    ia = 0.2 * s
    return (rain_mm - ia) ** 2 / (rain_mm + 0.8 * s) if rain_mm > ia else 0.0


class WaterChannel(Model):
    name = "water"
    EPISODES = ("rain", "blocked", "no_echo")
    STEP_S = 300.0  # rain is applied in 5-minute blocks

    def __init__(self, seed: int, device: str, origin_unix_s: float, *, mount_mm: int = 3000,
                 base_mm: float = 120.0) -> None:
        super().__init__(seed, device, origin_unix_s)
        self.mount_mm = mount_mm
        self.base_mm = base_mm
        self._last: int | None = mount_mm - int(base_mm)

    def _storm_flow(self, t_s: float) -> float:
        """Routed runoff (mm of runoff at unit-hydrograph peak scale) at ``t_s``."""
        flow = 0.0
        for e in self.episodes:
            if e.kind != "rain" or t_s < e.start_s:
                continue
            p = e.params
            dur = e.duration_s or 1800.0
            depth = p.get("depth_mm", 40.0)
            cn = p.get("cn", 90.0)
            tp = p.get("tp_min", 30.0) * 60.0
            steps = max(1, round(dur / self.STEP_S))
            prev_q = 0.0
            for k in range(steps):
                t_k = e.start_s + k * dur / steps
                if t_k > t_s:
                    break
                cum_q = runoff_mm(depth * (k + 1) / steps, cn)
                dq = cum_q - prev_q
                prev_q = cum_q
                flow += dq * unit_hydrograph((t_s - t_k - dur / steps / 2) / tp)
        return flow

    def level_mm(self, t_s: float) -> float:
        h = hour_of_day(self.origin_unix_s, t_s * 1000.0)
        level = self.base_mm * WASTEWATER.at(h)
        storm = self._storm_flow(t_s)
        if storm > 0:
            stage = max((e.params.get("stage_mm", 330.0) for e in self.episodes if e.kind == "rain"), default=330.0)
            level += stage * storm ** 0.6
        return min(level, self.mount_mm - 50.0)

    def distance(self, hal: object, t_ms: int) -> int | None:
        """Provider for the A02YYUW model: distance to the surface in mm, or None (no echo)."""
        t_s = t_ms / 1000.0
        if self.stuck_from_s is not None and t_s >= self.stuck_from_s:
            return self._last
        for e in self.episodes:
            if e.active(t_s):
                if e.kind == "no_echo":
                    return None
                if e.kind == "blocked":
                    self._last = int(e.params.get("distance", 120) + self.rng.gauss(0.0, JITTER_MM))
                    return self._last
        self._last = round(self.mount_mm - self.level_mm(t_s) + self.rng.gauss(0.0, JITTER_MM))
        return self._last
