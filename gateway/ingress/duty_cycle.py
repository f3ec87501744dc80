"""Regional duty-cycle bookkeeping for one LoRa transmitter (gateway downlinks, simulated radios).

Rule (LoRaWAN / ETSI EN 300 220 style "time-off"): after a transmission of T_on milliseconds in a sub-band
whose limit is d, that sub-band stays closed for T_on * (1/d - 1) milliseconds after the transmission
ends (:func:`lifeline.protocols.lora_phy.duty_cycle_wait_ms`). Sub-bands and limits come from the
region table in :mod:`lifeline.protocols.lora_phy` (EU868: g1 1 %, g3 10 %; CN470: Lifeline's own,
configurable limit).
"""

from __future__ import annotations

from lifeline.protocols import lora_phy


class DutyCycleTracker:
    """``default_duty`` replaces the region's limit where no sub-band rules (the whole of CN470);
    ETSI sub-band limits (EU868) are law and cannot be overridden."""

    def __init__(self, region: lora_phy.Region, default_duty: float | None = None) -> None:
        self.region = region if default_duty is None else region.with_duty(default_duty)
        self._open_at: dict[str, float] = {}  # sub-band name -> earliest next start, ms

    def _band(self, freq_hz: int, bw_khz: int) -> tuple[str, float]:
        band = self.region.sub_band(freq_hz, bw_khz)
        if band is None:
            return "*", self.region.default_duty
        return band.name, band.duty

    def wait_ms(self, freq_hz: int, bw_khz: int, start_ms: float) -> float:
        """How long after ``start_ms`` a transmission on ``freq_hz`` must wait (0 = allowed now)."""
        name, _ = self._band(freq_hz, bw_khz)
        return max(0.0, self._open_at.get(name, float("-inf")) - start_ms)

    def record(self, freq_hz: int, bw_khz: int, start_ms: float, toa_ms: float) -> None:
        """Account a transmission of ``toa_ms`` that started at ``start_ms``."""
        name, duty = self._band(freq_hz, bw_khz)
        end = start_ms + toa_ms
        self._open_at[name] = max(self._open_at.get(name, float("-inf")),
                                  end + lora_phy.duty_cycle_wait_ms(toa_ms, duty))

    def duty(self, freq_hz: int, bw_khz: int) -> float:
        return self._band(freq_hz, bw_khz)[1]
