# Reed-switch pulse counting for water and gas meters, from raw edges the HAL captured (pin IRQ while
# awake; on the node in deep sleep the ULP co-processor or an ext1 wake per edge, see docs/firmware.md).
# Channels: 0 = reed A, 1 = reed B (quadrature, 90 degrees behind A), 2 = hall tamper input.
# Debounce: a level counts only after it stayed unchanged for `debounce_ms` (reed contacts bounce for a
# few ms). Quadrature: on A closing, B open means forward flow and B closed means reverse flow.

CH_A = 0
CH_B = 1
CH_TAMPER = 2


class PulseDecoder:
    def __init__(self, st, debounce_ms=20, quadrature=True):
        self._st = st
        self.debounce_ms = debounce_ms
        self.quadrature = quadrature
        if "lv" not in st:
            st["lv"] = [0, 0, 0]  # stable level per channel
            st["pd"] = [None, None, None]  # pending raw edge per channel: [t, level]
            st["fwd"] = 0
            st["rev"] = 0
            st["tmp"] = 0  # tamper activations

    def _commit(self, ch, level):
        st = self._st
        if st["lv"][ch] == level:
            return
        st["lv"][ch] = level
        if ch == CH_A and level == 1:
            if self.quadrature and st["lv"][CH_B] == 1:
                st["rev"] += 1
            else:
                st["fwd"] += 1
        elif ch == CH_TAMPER and level == 1:
            st["tmp"] += 1

    def feed(self, edges, now_ms):
        st = self._st
        pd = st["pd"]
        for t, ch, level in sorted(edges):
            if ch < 0 or ch > 2:
                continue
            # commit any pending edge (every channel) that has been stable long enough by time t
            for c in range(3):
                p = pd[c]
                if p is not None and t - p[0] >= self.debounce_ms:
                    self._commit(c, p[1])
                    pd[c] = None
            pd[ch] = [t, 1 if level else 0]
        for c in range(3):
            p = pd[c]
            if p is not None and now_ms - p[0] >= self.debounce_ms:
                self._commit(c, p[1])
                pd[c] = None

    def net(self):
        return self._st["fwd"] - self._st["rev"]

    def tamper_level(self):
        return self._st["lv"][CH_TAMPER]
