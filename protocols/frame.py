# Lifeline node frame v1: encoder and decoder shared by the firmware and the gateway.
# MicroPython subset. The byte layout is docs/protocol.md section 1; the crypto is section 2.

from . import cbor, crypto, schema

VERSION = 1
SUITE = crypto.SUITE_1  # the default suite (intl); a node's suite is keys.suite
SUITE_INTL = crypto.SUITE_1
SUITE_SM = crypto.SUITE_2
SUITES = (SUITE_INTL, SUITE_SM)  # the suite ids this codec knows; any other is bad_suite
HEADER_LEN = 19
MIC_LEN = 8
MAX_FRAME = 51  # LoRa application payload at SF10..SF12 in CN470 and EU868
MAX_INPUT = 255  # anything longer is rejected before it is looked at
MIN_FRAME = HEADER_LEN + 1 + MIC_LEN  # an empty CBOR map is one byte
EPOCH_UNIX = 1577836800  # 2020-01-01T00:00:00Z

FLAG_ENC = 0x01
FLAG_ACK_REQ = 0x02
FLAG_QUEUED = 0x04
FLAG_TEST = 0x08
FLAG_DOWN = 0x80
_FLAGS_RESERVED = 0x70

REASONS = (
    "truncated", "too_long", "bad_version", "bad_suite", "bad_flags", "bad_direction", "bad_mic",
    "bad_cbor", "too_deep", "trailing_bytes", "unknown_kind", "unknown_field", "bad_type",
    "out_of_range", "missing_field", "not_encrypted", "wrong_suite", "suite_not_allowed",
)


class FrameError(ValueError):
    """The one rejection type of the frame codec. ``reason`` is a code from REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail


class Keys:
    """Per-device keys of one suite (a node has exactly one), derived from the 32-byte root key with that
    suite's KDF. Never printed."""

    def __init__(self, root: bytes, dev_id: bytes, suite: int = SUITE_INTL) -> None:
        if len(dev_id) != 8:
            raise ValueError("device id must be 8 bytes")
        self.dev_id = bytes(dev_id)
        self.suite = suite
        self.cipher = None  # type: object  # suite 2: SM4 of K_enc (suite 1: crypto's AES)
        if suite == SUITE_SM:
            from . import crypto_sm  # loaded by sm nodes only: an intl node's RAM stays as it was

            crypto_sm.derive_keys(self, root)
        elif suite == SUITE_INTL:
            self.mic_up = crypto.derive(root, crypto.LABEL_MIC_UP, dev_id)
            self.mic_down = crypto.derive(root, crypto.LABEL_MIC_DOWN, dev_id)
            self.enc = crypto.derive(root, crypto.LABEL_ENC, dev_id, 16)
        else:
            raise ValueError("unknown crypto suite")

    def __repr__(self) -> str:
        return "Keys(<redacted>)"


def derive_keys(root: bytes, dev_id: bytes, suite: int = SUITE_INTL) -> Keys:
    return Keys(root, dev_id, suite)


def compute_mic(keys: Keys, downlink: bool, msg: bytes) -> bytes:
    """The 8-byte MIC of ``msg`` under the keys' suite (HMAC-SHA256/64 or HMAC-SM3/64)."""
    if keys.suite == SUITE_SM:
        from . import crypto_sm

        return crypto_sm.mic(keys, downlink, msg)[:MIC_LEN]
    return crypto.hmac_sha256(keys.mic_down if downlink else keys.mic_up, msg)[:MIC_LEN]


class Header:
    def __init__(self, version: int, suite: int, kind: int, flags: int, dev_id: bytes, fcnt: int,
                 time: int) -> None:
        self.version = version
        self.suite = suite
        self.kind = kind
        self.flags = flags
        self.dev_id = dev_id
        self.fcnt = fcnt
        self.time = time

    @property
    def downlink(self) -> bool:
        return bool(self.flags & FLAG_DOWN)

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENC)

    def __repr__(self) -> str:
        return "Header(kind=%d flags=0x%02x dev=%s fcnt=%d time=%d)" % (
            self.kind, self.flags, self.dev_id.hex(), self.fcnt, self.time)


class Frame:
    def __init__(self, header: Header, fields: dict) -> None:  # type: ignore[type-arg]
        self.header = header
        self.fields = fields

    def __repr__(self) -> str:
        return "Frame(%r, %r)" % (self.header, self.fields)


def validate_fields(kind: int, fields: object) -> dict:  # type: ignore[type-arg]
    """Check a body against the registry; return it as a dict or raise FrameError."""
    k = schema.info(kind)
    if k is None:
        raise FrameError("unknown_kind", str(kind))
    if not isinstance(fields, dict):
        raise FrameError("bad_type", "body is not a map")
    packed = k[2]
    for key, value in fields.items():
        off = schema.spec(packed, key) if isinstance(key, int) else -1
        if off < 0:
            raise FrameError("unknown_field", "kind %d has no field %r" % (kind, key))
        if packed[off + 1] & 1:
            if not isinstance(value, bytes):
                raise FrameError("bad_type", "field %d" % key)
            n = len(value)
        else:
            if not isinstance(value, int) or isinstance(value, bool):
                raise FrameError("bad_type", "field %d" % key)
            n = value
        lo, hi = schema.lo_hi(packed, off)
        if n < lo or n > hi:
            raise FrameError("out_of_range", "field %d" % key)
    for off in range(0, len(packed), 12):
        if packed[off + 1] & 2 and packed[off] not in fields:
            raise FrameError("missing_field", "field %d" % packed[off])
    return fields


def _check_u32(name: str, v: int) -> None:
    if not isinstance(v, int) or v < 0 or v > 0xFFFFFFFF:
        raise FrameError("out_of_range", name)


def encode(keys: Keys, dev_id: bytes, fcnt: int, time: int, kind: int, fields: dict,  # type: ignore[type-arg]
           flags: int = 0) -> bytes:
    """Build a protected frame. Sets FLAG_ENC for sensitive/core kinds. Raises FrameError."""
    k = schema.info(kind)
    if k is None:
        raise FrameError("unknown_kind", str(kind))
    if flags & _FLAGS_RESERVED or flags > 0xFF or flags < 0:
        raise FrameError("bad_flags")
    down = bool(flags & FLAG_DOWN)
    if down != schema.is_downlink_kind(kind):
        raise FrameError("bad_direction", "kind %d with flags 0x%02x" % (kind, flags))
    if len(dev_id) != 8:
        raise FrameError("out_of_range", "device id")
    _check_u32("fcnt", fcnt)
    _check_u32("time", time)
    validate_fields(kind, fields)
    if k[0] >= schema.SENSITIVE:
        flags |= FLAG_ENC
    body = cbor.dumps(fields)
    if flags & FLAG_ENC:
        body = crypto.ctr_xor(keys.enc, down, dev_id, fcnt, body, keys.cipher)
    msg = (bytes(((VERSION << 4) | keys.suite, kind, flags)) + dev_id + fcnt.to_bytes(4, "big")
           + time.to_bytes(4, "big") + body)
    if len(msg) + MIC_LEN > MAX_FRAME:
        raise FrameError("too_long", "%d bytes > %d" % (len(msg) + MIC_LEN, MAX_FRAME))
    return msg + compute_mic(keys, down, msg)


def parse_header(data: bytes) -> Header:
    """Parse the clear header without any key (to look the device up). Raises FrameError."""
    n = len(data)
    if n > MAX_INPUT:
        raise FrameError("too_long", "%d bytes" % n)
    if n < MIN_FRAME:
        raise FrameError("truncated", "%d bytes" % n)
    b0 = data[0]
    if b0 >> 4 != VERSION:
        raise FrameError("bad_version", str(b0 >> 4))
    suite = b0 & 0x0F
    if suite not in SUITES:
        raise FrameError("bad_suite", str(suite))
    flags = data[2]
    if flags & _FLAGS_RESERVED:
        raise FrameError("bad_flags", "0x%02x" % flags)
    return Header(VERSION, suite, data[1], flags, bytes(data[3:11]), int.from_bytes(data[11:15], "big"),
                  int.from_bytes(data[15:19], "big"))


def verify_mic(data: bytes, keys: Keys, downlink: bool) -> None:
    if not crypto.ct_equal(compute_mic(keys, downlink, data[:-MIC_LEN]), data[-MIC_LEN:]):
        raise FrameError("bad_mic")


def check_direction(header: Header, downlink: bool) -> None:
    """Cheap check before any key work: the DOWN flag must match what the receiver expects."""
    if header.downlink != downlink:
        raise FrameError("bad_direction")


def check_suite(header: Header, keys: Keys, allowed: object = None) -> None:
    """Before any key work: the header's suite must be one the receiver's config allows (``allowed``: suite
    ids, None = every known suite), then the device's own suite (a node has exactly one, so the verifier
    never tries a second algorithm)."""
    if allowed is not None and header.suite not in allowed:  # type: ignore[operator]
        raise FrameError("suite_not_allowed", str(header.suite))
    if header.suite != keys.suite:
        raise FrameError("wrong_suite", "%d, device has %d" % (header.suite, keys.suite))


def check_policy(header: Header, downlink: bool) -> None:
    """Kind and confidentiality checks after the MIC verified (so forgers learn nothing from them)."""
    k = schema.info(header.kind)
    if k is None or schema.is_downlink_kind(header.kind) != downlink:
        raise FrameError("unknown_kind", str(header.kind))
    if k[0] >= schema.SENSITIVE and not header.encrypted:
        raise FrameError("not_encrypted", "kind %d" % header.kind)


def decode_body(header: Header, body: bytes) -> Frame:
    try:
        fields = cbor.loads(body, 1, 32)
    except cbor.CBORError as e:
        raise FrameError(e.reason, e.detail) from None
    return Frame(header, validate_fields(header.kind, fields))


def decode(data: bytes, keys: Keys, downlink: bool = False, allowed: object = None) -> Frame:
    """Verify, decrypt and decode a frame. Raises FrameError (and nothing else) on any input.

    ``allowed``: the suite ids the receiver accepts (gateway config); None accepts every known suite."""
    try:
        header = parse_header(data)
        check_direction(header, downlink)
        if header.dev_id != keys.dev_id:
            raise FrameError("bad_mic", "frame is for another device")
        check_suite(header, keys, allowed)
        verify_mic(data, keys, downlink)
        check_policy(header, downlink)
        body = data[HEADER_LEN:-MIC_LEN]
        if header.encrypted:
            body = crypto.ctr_xor(keys.enc, downlink, header.dev_id, header.fcnt, body, keys.cipher)
        return decode_body(header, body)
    except FrameError:
        raise
    except Exception as e:  # defensive: the contract is one exception type
        raise FrameError("bad_cbor", "unexpected " + type(e).__name__) from None
