# BLE: frames broadcast in advertisements, and the node's GATT service -- the format and service of
# docs/ble.md (gateway side: gateway/ingress/ble_adv.py), plus two technician characteristics.
#
# Advertising (docs/ble.md section 2): one Manufacturer Specific Data AD structure, company id 0xFFFF (the
# Bluetooth SIG's value for testing and development; a product uses its own assigned id), then a 1-byte
# Lifeline BLE header (version 1 in bits 7..4, segment in bits 3..2: 0 whole, 1 first, 2 second; sequence
# in bits 1..0), then the frame or a segment of it. MicroPython's gap_advertise() sends legacy PDUs only
# (31 bytes of AdvData), so a frame (28..51 bytes) goes as two segments, frame[0:26] and frame[26:], and
# the node alternates them over a burst of advertising events; with BLE 5 extended advertising the whole
# frame fits one AUX_ADV_IND (segment 0).
#
# GATT (docs/ble.md section 4; UUIDs 91e9xxxx-7b97-439d-8e31-2a87ab35f415): downlink (write one protected
# downlink frame), status (read/notify, 20 bytes), maintenance (write a protected frame of a maintenance
# session). Technician additions (docs/firmware.md): challenge (read, 8 bytes) and technician (write:
# command || HMAC-SHA256(K_maint, challenge || command)[:8], K_maint derived from the root key for
# "lifeline/1/maint"), for what the protected downlink kinds cannot carry (a whole new configuration,
# leaving safe mode). Stock MicroPython cannot refuse a GATT write with an ATT error, so the result codes
# below are returned to the simulator and reflected in the status characteristic (last accepted downlink
# counter) for the gateway to read back.

from lifeline.protocols import crypto

COMPANY_ID = 0xFFFF
AD_MANUFACTURER = 0xFF
SEG_DATA = 26
BURST_EVENTS = 20  # legacy: 10 events per segment (docs/ble.md 2.3)
WINDOW_MS = 3000  # connectable after the burst when the node expects an answer
UUID_BASE = "91e9%04x-7b97-439d-8e31-2a87ab35f415"
SERVICE_UUID = UUID_BASE % 0x0001
CHAR_DOWNLINK = UUID_BASE % 0x0002
CHAR_STATUS = UUID_BASE % 0x0003
CHAR_MAINTENANCE = UUID_BASE % 0x0004
CHAR_CHALLENGE = UUID_BASE % 0x0005  # Lifeline firmware addition: technician challenge
CHAR_COMMAND = UUID_BASE % 0x0006  # Lifeline firmware addition: technician command
CHARS = (CHAR_DOWNLINK, CHAR_STATUS, CHAR_MAINTENANCE, CHAR_CHALLENGE, CHAR_COMMAND)
LABEL_MAINT = b"lifeline/1/maint"

OK = 0
ERR_LENGTH = 0x0D
ERR_REJECTED = 0x80
ERR_REPLAY = 0x81
ERR_NOT_IN_MAINTENANCE = 0x82


def segments(frame, seq=0, extended=False):
    """The Manufacturer Specific Data AD structures that carry ``frame``."""
    cid = COMPANY_ID.to_bytes(2, "little")
    if extended or len(frame) <= SEG_DATA:
        parts = ((0x10, frame),)
    else:
        parts = ((0x14 | (seq & 3), frame[:SEG_DATA]), (0x18 | (seq & 3), frame[SEG_DATA:]))
    out = []
    for hdr, data in parts:
        body = bytes((AD_MANUFACTURER,)) + cid + bytes((hdr,)) + data
        out.append(bytes((len(body),)) + body)
    return out


def reassemble(ads):
    """Frame bytes from the AD structures of one frame (whole, or both segments), else None."""
    parts = {}
    for ad in ads:
        if len(ad) < 5 or ad[1] != AD_MANUFACTURER or int.from_bytes(ad[2:4], "little") != COMPANY_ID:
            return None
        hdr = ad[4]
        if hdr >> 4 != 1:
            return None
        parts[(hdr >> 2) & 3] = ad[5:1 + ad[0]]
    if 0 in parts:
        return parts[0]
    if 1 in parts and 2 in parts:
        return parts[1] + parts[2]
    return None


class BleLink:
    def __init__(self, hal, cfg):
        self._hal = hal
        b = cfg.ble
        self.interval_ms = b.get("interval_ms", 100)
        self.extended = b.get("extended", False)
        self.rssi = None
        self.snr_x10 = None
        self.errors = 0
        self.seq = 0
        self.inbox = []  # downlink frames written to the GATT downlink characteristic
        self._ble = None

    def open(self):
        try:
            self._ble = self._hal.ble()
            self._ble.serve(SERVICE_UUID, CHARS, self._on_write)
        except OSError:
            self.errors += 1
            return False
        return True

    def _on_write(self, char, data):
        if char != CHAR_DOWNLINK:
            return ERR_REJECTED
        if not 28 <= len(data) <= 51:
            return ERR_LENGTH
        self.inbox.append(bytes(data))
        return OK

    def send(self, frame, listen):
        """Advertise a burst; when an answer is expected, stay connectable for WINDOW_MS."""
        if self._ble is None:
            return False, []
        ads = segments(frame, self.seq, self.extended)
        self.seq = (self.seq + 1) & 3
        try:
            for i in range(BURST_EVENTS if len(ads) > 1 else BURST_EVENTS // 2):
                self._ble.advertise(ads[i % len(ads)], b"", self.interval_ms, True)
                self._hal.sleep_ms(self.interval_ms)
            self._ble.stop()
        except OSError:
            self.errors += 1
            return False, []
        downs = self.listen(WINDOW_MS) if listen else []
        return True, downs

    def listen(self, window_ms):
        if self._ble is None:
            return []
        end = self._hal.ticks_ms() + window_ms
        while not self.inbox and self._hal.ticks_diff(end, self._hal.ticks_ms()) > 0:
            self._hal.sleep_ms(50)
        out = self.inbox
        self.inbox = []
        return out

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
        self._ble.serve(SERVICE_UUID, CHARS, self.on_write)

    def read(self, char):
        if char == CHAR_STATUS:
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
