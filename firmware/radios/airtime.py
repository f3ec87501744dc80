# LoRa time on air with integers (the firmware's own small copy of the SX127x/SX126x datasheet formula;
# lifeline.protocols.lora_phy is the CPython reference and a test cross-checks the two) and a per-hour
# duty-cycle ledger kept in RTC memory.


def time_on_air_ms(payload_len, sf, bw_khz, cr=1, preamble=8):
    """Milliseconds on air (rounded up). cr = coding-rate index 1..4 (4/5..4/8), explicit header, CRC on,
    low-data-rate optimisation when a symbol lasts >= 16 ms."""
    t_sym_us = (1 << sf) * 1000 // bw_khz
    de = 1 if (1 << sf) >= 16 * bw_khz else 0
    num = 8 * payload_len - 4 * sf + 28 + 16
    den = 4 * (sf - 2 * de)
    n = (num + den - 1) // den if num > 0 else 0
    n_payload = 8 + n * (cr + 4)
    # (preamble + 4.25) symbols: (4 * preamble + 17) / 4
    t_us = ((4 * preamble + 17) * (1 << sf) * 1000) // (4 * bw_khz) + n_payload * t_sym_us
    return (t_us + 999) // 1000


class DutyCycle:
    """Transmit time used in the last hour, against the regional limit (per mille; 0 = no limit)."""

    WINDOW_S = 3600

    def __init__(self, st, permille):
        self._st = st  # RTC memory section: {"l": [[t, ms], ...]}
        self.permille = permille
        if not isinstance(st.get("l"), list):
            st["l"] = []

    def _prune(self, now):
        lst = self._st["l"]
        keep = [e for e in lst if now - e[0] < self.WINDOW_S and e[0] <= now]
        self._st["l"] = keep[-48:]
        return self._st["l"]

    def used_ms(self, now):
        return sum(e[1] for e in self._prune(now))

    def allowed(self, now, toa_ms):
        if not self.permille:
            return True
        return self.used_ms(now) + toa_ms <= self.WINDOW_S * self.permille

    def record(self, now, toa_ms):
        self._prune(now).append([now, toa_ms])
