# BLE: frames broadcast in advertising packets, and a GATT service for the technician.
#
# Broadcast: MicroPython's gap_advertise sends legacy advertising (31 bytes of AD data plus 31 of scan
# response), so a frame (<= 51 bytes) is split over the two, each as a Manufacturer Specific Data AD
# structure (type 0xFF) with company id 0xFFFF (the Bluetooth SIG's value reserved for testing and
# development; a product uses its own assigned id) followed by one segment byte:
#   AD: len | 0xFF | 0xFF 0xFF | seg | up to 26 frame bytes
#   seg = tag (bits 7..4, low nibble of the frame counter) | index (bits 3..2) | count (bits 1..0)
# Non-connectable, scannable (ADV_SCAN_IND): a scanner doing active scanning gets both halves. On chips and
# stacks with BLE 5 extended advertising the whole frame fits one AUX_ADV_IND (same AD format, count 1).
#
# GATT maintenance service (UUIDs in docs/firmware.md). Writes to the command characteristic must carry
# an HMAC-SHA256 tag (8 bytes) over challenge || command, keyed by the root-key derivative for purpose
# "lifeline/1/maint", so only a technician holding the device's key can change it.

from lifeline.protocols import crypto

COMPANY_ID = 0xFFFF
AD_MANUFACTURER = 0xFF
SEG_DATA = 26
UUID_BASE = "4c4c%04x-1f0b-4a31-9e59-6c6966656c6e"
SERVICE_UUID = UUID_BASE % 0x0001
CHAR_INFO = UUID_BASE % 0x0002  # read: JSON {"id","fw","kind","fcnt","queue","fault"}
CHAR_CHALLENGE = UUID_BASE % 0x0003  # read: 8-byte nonce, new after every command
CHAR_COMMAND = UUID_BASE % 0x0004  # write: command || HMAC(K_maint, challenge || command)[:8]
CHAR_STATUS = UUID_BASE % 0x0005  # notify: result of the last command (text)
LABEL_MAINT = b"lifeline/1/maint"


def segments(frame):
    """Manufacturer-data AD structures carrying ``frame`` (one or two)."""
    parts = [frame[i:i + SEG_DATA] for i in range(0, len(frame), SEG_DATA)] or [b""]
    out = []
    count = len(parts)
    for i in range(count):
        tag = (frame[14] & 0x0F) if len(frame) > 14 else 0  # low byte of the frame counter
        seg = bytes(((tag << 4) | (i << 2) | count,))
        body = bytes((AD_MANUFACTURER,)) + COMPANY_ID.to_bytes(2, "little") + seg + parts[i]
        out.append(bytes((len(body),)) + body)
    return out


def reassemble(ads):
    """Inverse of segments() for a scanner (used by tests and documented for the gateway)."""
    parts = {}
    count = 0
    for ad in ads:
        if len(ad) < 5 or ad[1] != AD_MANUFACTURER or int.from_bytes(ad[2:4], "little") != COMPANY_ID:
            return None
        seg = ad[4]
        count = seg & 3
        parts[(seg >> 2) & 3] = ad[5:1 + ad[0]]
    if count == 0 or len(parts) != count:
        return None
    return b"".join(parts[i] for i in range(count))


class BleLink:
    def __init__(self, hal, cfg):
        self._hal = hal
        b = cfg.ble
        self.interval_ms = b.get("interval_ms", 100)
        self.adv_ms = b.get("adv_ms", 1000)
        self.rssi = None
        self.snr_x10 = None
        self.errors = 0
        self._ble = None

    def open(self):
        try:
            self._ble = self._hal.ble()
        except OSError:
            self.errors += 1
            return False
        return True

    def send(self, frame, listen):
        """Advertise the frame for adv_ms. Broadcast has no acknowledgement: downlinks only come over GATT."""
        if self._ble is None:
            return False, []
        ads = segments(frame)
        try:
            self._ble.advertise(ads[0], ads[1] if len(ads) > 1 else b"", self.interval_ms, False)
            self._hal.sleep_ms(self.adv_ms)
            self._ble.stop()
        except OSError:
            self.errors += 1
            return False, []
        return True, []

    def listen(self, window_ms):
        return []

    def close(self):
        if self._ble is not None:
            try:  # noqa: SIM105 - MicroPython has no contextlib
                self._ble.stop()
            except OSError:
                pass


class Maintenance:
    """GATT technician service: challenge-response authenticated commands."""

    def __init__(self, hal, dev_id, root_key, info, handler):
        self._hal = hal
        self._key = crypto.derive(root_key, LABEL_MAINT, dev_id)
        self._info = info  # callable -> bytes (JSON)
        self._handler = handler  # callable(command bytes) -> result text
        self.challenge = b""
        self.rejected = 0
        self._ble = None

    def _new_challenge(self):
        seed = crypto.hmac_sha256(self._key, self.challenge + self._hal.ticks_ms().to_bytes(4, "big")
                                  + self._hal.time().to_bytes(4, "big"))
        self.challenge = seed[:8]

    def start(self):
        self._ble = self._hal.ble()
        self._new_challenge()
        self._ble.serve(SERVICE_UUID, (CHAR_INFO, CHAR_CHALLENGE, CHAR_COMMAND, CHAR_STATUS), self.on_write)

    def read(self, char):
        if char == CHAR_INFO:
            return self._info()
        if char == CHAR_CHALLENGE:
            return self.challenge
        return b""

    def on_write(self, char, data):
        if char != CHAR_COMMAND or len(data) < 9:
            self.rejected += 1
            return "rejected: malformed"
        cmd = data[:-8]
        tag = crypto.hmac_sha256(self._key, self.challenge + cmd)[:8]
        if not crypto.ct_equal(tag, data[-8:]):
            self.rejected += 1
            self._new_challenge()
            return "rejected: bad tag"
        self._new_challenge()  # one command per challenge: no replay
        result = self._handler(cmd)
        if self._ble is not None:
            self._ble.notify(CHAR_STATUS, result.encode())
        return result
