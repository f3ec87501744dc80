"""Photoelectric smoke chamber (scattered IR light on a photodiode), as the firmware's ADC sees it.

Signal chain (firmware/sensors/smoke.py reads dark and lit pairs): dark = amplifier offset + ambient leak;
lit = dark + wall scatter (the clean-air baseline) + dust on the chamber walls + smoke scatter. Smoke
scatter is proportional to obscuration: ``uv_per_pct`` microvolts per %/m (the firmware's factory
calibration default, 60 mV per %/m).

Episodes (simulated seconds):

* ``fire``: a flaming fire, obscuration growing with the square of time like the heat release of a t²
  design fire (NFPA 72 Annex B): O(t) = scale * O_ref * (t / t_ref)², capped at 20 %/m. Defaults O_ref =
  10 %/m at t_ref = 240 s: the UL 217 (8th ed.) flaming polyurethane test expects an alarm within about
  four minutes, before the smoke at the detector reaches 5 %/ft (15.5 %/m). ``scale`` < 1 gives the smoke
  that reaches a neighbouring flat (later via ``start``, thinner via ``scale``).
* ``cooking``: a nuisance source: a peak of ``peak`` %/m (default 1.8, below the 3 %/m alarm threshold)
  reached after ``rise_s`` (60 s) and decaying exponentially with ``tau_s`` (300 s).
* ``dust``: chamber contamination: the wall scatter grows ``uv_per_day`` (default 8000 uV/day), which the
  firmware's baseline tracking follows (at most 1 mV/h) and reports as drift/dirty.
* ``test_press``: the resident presses the test button for ``hold_s`` (1 s).

Clean air: 0.02 %/m background (aerosol), Gaussian read noise of 400 uV RMS per ADC read (ESP32 ADC with
multisampling, ~0.5 LSB at 11 dB attenuation).
"""

from __future__ import annotations

import math

from lifeline.sim_devices.physics.base import Model

DARK_UV = 50_000
CLEAN_UV = 200_000  # firmware default sensor.clean_uv
UV_PER_PCT = 60_000  # firmware default sensor.uv_per_pct
READ_NOISE_UV = 400.0
BACKGROUND_PCT = 0.02
MAX_PCT = 20.0
FIRE_REF_PCT = 10.0
FIRE_REF_S = 240.0


class SmokeChamber(Model):
    name = "smoke"
    EPISODES = ("fire", "cooking", "dust", "test_press")

    def __init__(self, seed: int, device: str, origin_unix_s: float, *, clean_uv: int = CLEAN_UV,
                 uv_per_pct: int = UV_PER_PCT) -> None:
        super().__init__(seed, device, origin_unix_s)
        self.clean_uv = clean_uv
        self.uv_per_pct = uv_per_pct
        self._last = DARK_UV

    def obscuration_pct(self, t_s: float) -> float:
        o = BACKGROUND_PCT
        for e in self.episodes:
            if not e.active(t_s):
                continue
            age = e.age_s(t_s)
            p = e.params
            if e.kind == "fire":
                ref = p.get("ref_pct", FIRE_REF_PCT)
                o += p.get("scale", 1.0) * ref * (age / p.get("ref_s", FIRE_REF_S)) ** 2
            elif e.kind == "cooking":
                rise = p.get("rise_s", 60.0)
                peak = p.get("peak", 1.8)
                o += peak * age / rise if age < rise else peak * math.exp(-(age - rise) / p.get("tau_s", 300.0))
        return min(o, MAX_PCT)

    def dust_uv(self, t_s: float) -> float:
        return sum(e.params.get("uv_per_day", 8000.0) * e.age_s(t_s) / 86400.0
                   for e in self.episodes if e.kind == "dust" and e.active(t_s))

    def adc(self, hal: object, t_ms: int) -> int:
        """Provider for ``smoke_adc``: photodiode amplifier output in microvolts."""
        t_s = t_ms / 1000.0
        if self.stuck_from_s is not None and t_s >= self.stuck_from_s:
            return self._last
        v = DARK_UV + self.rng.gauss(0.0, READ_NOISE_UV)
        if hal.pin("smoke_led", True).v:  # type: ignore[attr-defined]
            v += self.clean_uv + self.dust_uv(t_s) + self.obscuration_pct(t_s) * self.uv_per_pct
        self._last = int(v)
        return self._last

    def button(self, hal: object, t_ms: int) -> int:
        """Provider for ``test_button`` (1 while pressed)."""
        return 1 if self.active("test_press", t_ms / 1000.0) else 0

    def interrupts(self, t0_ms: float, t1_ms: float) -> float | None:
        for e in self.episodes:
            if e.kind == "test_press" and t0_ms < e.start_s * 1000.0 <= t1_ms:
                return e.start_s * 1000.0
        return None

    def add(self, kind: str, start_s: float, duration_s: float | None = None, **params: float):  # type: ignore[no-untyped-def]
        if kind == "test_press" and duration_s is None:
            duration_s = params.pop("hold_s", 1.0)
        return super().add(kind, start_s, duration_s, **params)
