"""Temperature and battery: what every node has.

Temperature: T(t) = mean + amplitude * cos(2 pi (hour - 15) / 24) (daily maximum at 15:00), with
defaults for outdoor street furniture (12 +- 6 degC) and for a flat (21 +- 1.5 degC).

Battery: a lithium-thionyl chloride primary cell (ER18505 class: 3.6 V, 4000 mAh), the usual choice for a
10-year node. Open-circuit voltage stays flat at 3.65 V for most of the life, sagging slowly (50 mV over
85 % of the capacity) and then falling steeply to 3.2 V in the last 15 %; it reads 2 mV/degC lower below
20 degC (cold raises the internal resistance). The simulator charges it with what the node did: awake time
at ``active_ma`` (ESP32 running, sensor powered: 45 mA), LoRa time on air at ``tx_ma`` (RAK3172 at
14 dBm: 120 mA, datasheet), deep sleep at ``sleep_ua`` (15 uA). A ``sag`` episode subtracts ``mv`` (default
500) from the reading while active (a cold snap or a failing cell), which can push a node into its
low-battery path or a brown-out.
"""

from __future__ import annotations

import math

from lifeline.sim_devices.physics.base import Model, hour_of_day


class Temperature:
    def __init__(self, origin_unix_s: float, mean_c: float = 12.0, amplitude_c: float = 6.0) -> None:
        self.origin_unix_s = origin_unix_s
        self.mean_c = mean_c
        self.amplitude_c = amplitude_c

    def at(self, t_ms: float) -> float:
        h = hour_of_day(self.origin_unix_s, t_ms)
        return self.mean_c + self.amplitude_c * math.cos(2 * math.pi * (h - 15.0) / 24.0)


class Battery(Model):
    name = "battery"
    EPISODES = ("sag",)

    def __init__(self, seed: int, device: str, origin_unix_s: float, *, capacity_mah: float = 4000.0,
                 used_fraction: float = 0.0, temperature: Temperature | None = None, active_ma: float = 45.0,
                 tx_ma: float = 120.0, sleep_ua: float = 15.0) -> None:
        super().__init__(seed, device, origin_unix_s)
        self.capacity_mas = capacity_mah * 3600.0
        self.used_mas = used_fraction * self.capacity_mas
        self.temperature = temperature or Temperature(origin_unix_s)
        self.active_ma = active_ma
        self.tx_ma = tx_ma
        self.sleep_ua = sleep_ua

    def charge(self, awake_ms: float, tx_ms: float, sleep_ms: float) -> None:
        self.used_mas += (awake_ms * self.active_ma + tx_ms * (self.tx_ma - self.active_ma)
                          + sleep_ms * self.sleep_ua / 1000.0) / 1000.0

    @property
    def used(self) -> float:
        return min(1.0, self.used_mas / self.capacity_mas)

    def millivolts(self, hal: object, t_ms: int) -> int:
        """Provider for ``hal.battery``: the cell voltage the node's ADC divider reads, in mV."""
        u = self.used
        v = 3650.0 - 50.0 * min(u, 0.85) / 0.85
        if u > 0.85:
            v -= 400.0 * (u - 0.85) / 0.15
        temp = self.temperature.at(t_ms)
        if temp < 20.0:
            v -= 2.0 * (20.0 - temp)
        v -= sum(e.params.get("mv", 500.0) for e in self.active("sag", t_ms / 1000.0))
        return int(v)
