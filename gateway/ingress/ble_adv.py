"""Lifeline frames in BLE advertisements: the AD codec and the gateway's extraction state (docs/ble.md).

One Manufacturer Specific Data AD structure (Core Specification Supplement, part A, 1.4) carries a frame:

    length | 0xFF | company id (2, little-endian) | Lifeline BLE header (1) | frame, or one segment of it

Lifeline BLE header: high nibble = mapping version (1); bits 3..2 = segment (0 whole frame, 1 first of
two, 2 second of two, 3 reserved); bits 1..0 = sequence (0..3, pairs the two segments of one frame;
0 for whole frames). BLE 5 extended advertising carries a whole frame (up to 51 bytes). A node limited
to legacy advertising (31-byte AD) sends two segments: the first 26 bytes, then the rest (2..25 bytes).

:func:`parse_ad` splits raw AD bytes. :class:`AdvExtractor` turns advertisements into frames and never
raises: every advertisement that yields no frame is counted under one reason, repeats of a frame are
counted as duplicates, and legacy segments are paired per advertiser address.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lifeline.protocols import frame

AD_TYPE_FLAGS = 0x01
AD_TYPE_MANUFACTURER = 0xFF
COMPANY_ID_TEST = 0xFFFF  # "reserved for testing" in the SIG company identifiers; a product uses its own
FLAGS_LE_GENERAL_NO_BREDR = 0x06  # LE General Discoverable | BR/EDR Not Supported

HEADER_VERSION = 1
SEG_WHOLE = 0
SEG_FIRST = 1
SEG_SECOND = 2

LEGACY_AD_MAX = 31  # legacy advertising PDU AdvData
EXT_AD_MAX = 1650  # Core 5.x Vol 4 Part E 7.8.57: LE maximum advertising data length
MSD_OVERHEAD = 5  # length, type, company id (2), Lifeline BLE header
SEGMENT_FIRST_LEN = LEGACY_AD_MAX - MSD_OVERHEAD  # 26
SEGMENT_SECOND_MIN = frame.MIN_FRAME - SEGMENT_FIRST_LEN  # 2
SEGMENT_SECOND_MAX = frame.MAX_FRAME - SEGMENT_FIRST_LEN  # 25

# GATT service every Lifeline BLE node exposes (docs/ble.md section 4). 128-bit UUIDs from one random base.
UUID_SERVICE = "91e90001-7b97-439d-8e31-2a87ab35f415"
UUID_DOWNLINK = "91e90002-7b97-439d-8e31-2a87ab35f415"  # write with response: one protected downlink frame
UUID_STATUS = "91e90003-7b97-439d-8e31-2a87ab35f415"  # read / notify: STATUS_LEN bytes, layout below
UUID_MAINTENANCE = "91e90004-7b97-439d-8e31-2a87ab35f415"  # write with response: maintenance-session frames
STATUS_VERSION = 1
STATUS_LEN = 20  # version (1) | device id (8) | uplink fcnt (4) | downlink fcnt (4) | battery mV (2) | flags (1)
STATUS_FLAG_MAINTENANCE = 0x01
STATUS_FLAG_CLOCK_SET = 0x02
# ATT application error codes a node answers a write with (Core Vol 3 Part F 3.4.1.1: 0x80..0x9F)
ATT_ERR_REJECTED = 0x80  # not a valid frame for this node (format, MIC)
ATT_ERR_REPLAY = 0x81  # counter not above the last accepted downlink counter
ATT_ERR_NOT_IN_MAINTENANCE = 0x82  # maintenance characteristic written outside a maintenance session


def encode_status(dev_id: bytes, uplink_fcnt: int, downlink_fcnt: int, battery_mv: int, flags: int) -> bytes:
    return (
        bytes((STATUS_VERSION,)) + bytes(dev_id) + uplink_fcnt.to_bytes(4, "big") + downlink_fcnt.to_bytes(4, "big")
        + battery_mv.to_bytes(2, "big") + bytes((flags,))
    )


def status_device_id(status: bytes) -> bytes | None:
    """The device id in a status value, or None when it is not a version-1 status."""
    if len(status) < STATUS_LEN or status[0] != STATUS_VERSION:
        return None
    return bytes(status[1:9])


REASONS = (
    "bad_ad",  # raw AD bytes are not a well-formed sequence of AD structures
    "no_manufacturer_data",  # no Manufacturer Specific Data at all (some other BLE device)
    "wrong_company",  # Manufacturer Specific Data, but not under our company id
    "bad_header",  # Lifeline BLE header: unknown version, reserved segment value, or sequence on a whole frame
    "bad_length",  # frame or segment length outside what the header allows
)


def header_byte(segment: int, seq: int = 0) -> int:
    if segment not in (SEG_WHOLE, SEG_FIRST, SEG_SECOND) or not 0 <= seq <= 3:
        raise ValueError("segment must be 0..2 and seq 0..3")
    if segment == SEG_WHOLE and seq:
        raise ValueError("a whole frame has sequence 0")
    return HEADER_VERSION << 4 | segment << 2 | seq


def manufacturer_ad(payload: bytes, company_id: int = COMPANY_ID_TEST) -> bytes:
    """One Manufacturer Specific Data AD structure around ``payload`` (header + frame or segment)."""
    body = bytes((AD_TYPE_MANUFACTURER,)) + company_id.to_bytes(2, "little") + payload
    if len(body) > 255:
        raise ValueError("AD structure longer than 255 bytes")
    return bytes((len(body),)) + body


def encode_adv(
    frame_bytes: bytes, *, legacy: bool = False, seq: int = 0, company_id: int = COMPANY_ID_TEST,
    flags: int | None = None,
) -> tuple[bytes, ...]:
    """The advertising data a node sends for one frame: one AD payload (extended advertising) or two
    (legacy, sent alternately). ``flags`` adds a Flags AD structure (extended advertising only; a
    legacy segment has no room for it, and a connectable advertiser may omit Flags when all are 0)."""
    n = len(frame_bytes)
    if not frame.MIN_FRAME <= n <= frame.MAX_FRAME:
        raise ValueError(f"frame length {n} is not {frame.MIN_FRAME}..{frame.MAX_FRAME}")
    if not legacy:
        prefix = b"" if flags is None else bytes((2, AD_TYPE_FLAGS, flags))
        return (prefix + manufacturer_ad(bytes((header_byte(SEG_WHOLE),)) + frame_bytes, company_id),)
    if flags is not None:
        raise ValueError("legacy segments carry no Flags AD structure")
    first = manufacturer_ad(bytes((header_byte(SEG_FIRST, seq),)) + frame_bytes[:SEGMENT_FIRST_LEN], company_id)
    second = manufacturer_ad(bytes((header_byte(SEG_SECOND, seq),)) + frame_bytes[SEGMENT_FIRST_LEN:], company_id)
    return first, second


@dataclass(frozen=True, slots=True)
class AdParse:
    """Raw AD bytes split into structures: every Manufacturer Specific Data entry, in order."""

    manufacturer: tuple[tuple[int, bytes], ...]  # (company id, data after the company id)
    reason: str | None = None  # "bad_ad" when the bytes are not well-formed AD structures


def parse_ad(data: bytes) -> AdParse:
    """Split advertising data into AD structures. Never raises.

    A zero length byte ends the significant part (the rest is padding). A structure running past the
    end, Manufacturer Specific Data shorter than its company id, or more than :data:`EXT_AD_MAX` bytes
    make the whole advertisement ``bad_ad``.
    """
    if len(data) > EXT_AD_MAX:
        return AdParse((), "bad_ad")
    found: list[tuple[int, bytes]] = []
    i = 0
    n = len(data)
    while i < n:
        length = data[i]
        if length == 0:
            break
        end = i + 1 + length
        if end > n:
            return AdParse((), "bad_ad")
        ad_type = data[i + 1]
        if ad_type == AD_TYPE_MANUFACTURER:
            if length < 3:
                return AdParse((), "bad_ad")
            found.append((data[i + 2] | data[i + 3] << 8, bytes(data[i + 4 : end])))
        i = end
    return AdParse(tuple(found))


@dataclass(slots=True)
class _Pending:
    seq: int
    first: bytes | None
    second: bytes | None
    touched_ms: int


class AdvExtractor:
    """Frames out of advertisements, for one scan. Never raises on any input.

    ``feed`` takes what a scanner reports for one advertisement (the manufacturer data as bleak gives
    it, ``{company id: data}``, or (company, data) pairs) and returns the frames it completes, usually
    none or one. Counters: ``adv.seen``, ``frames``, ``duplicate`` (a frame already delivered within
    ``dedupe_window_ms``; advertisers repeat every advertising event), ``reject.<reason>`` per
    :data:`REASONS`, ``segment.stored`` and ``segment.dropped`` (half of a legacy frame whose other half
    did not arrive within ``segment_timeout_ms`` or before the next sequence).
    """

    def __init__(
        self,
        *,
        company_id: int = COMPANY_ID_TEST,
        dedupe_window_ms: int = 10_000,
        dedupe_capacity: int = 4096,
        segment_timeout_ms: int = 5_000,
        pending_capacity: int = 1024,
    ) -> None:
        self.company_id = company_id
        self.dedupe_window_ms = dedupe_window_ms
        self.dedupe_capacity = dedupe_capacity
        self.segment_timeout_ms = segment_timeout_ms
        self.pending_capacity = pending_capacity
        self.counters: Counter[str] = Counter()
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # frame bytes -> last heard (ms)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # advertiser address -> half frame

    def feed_raw(self, address: str, ad: bytes, now_ms: int) -> tuple[bytes, ...]:
        """Like :meth:`feed`, from raw AD bytes (HCI reports, captures)."""
        parsed = parse_ad(ad)
        if parsed.reason is not None:
            self.counters["adv.seen"] += 1
            self.counters["reject." + parsed.reason] += 1
            return ()
        return self.feed(address, parsed.manufacturer, now_ms)

    def feed(
        self, address: str, manufacturer: Mapping[int, bytes] | Iterable[tuple[int, bytes]], now_ms: int
    ) -> tuple[bytes, ...]:
        self.counters["adv.seen"] += 1
        self._expire(now_ms)
        entries = list(manufacturer.items()) if isinstance(manufacturer, Mapping) else list(manufacturer)
        ours = [bytes(data) for company, data in entries if company == self.company_id]
        if not ours:
            self.counters["reject.no_manufacturer_data" if not entries else "reject.wrong_company"] += 1
            return ()
        out: list[bytes] = []
        for payload in ours:
            got = self._one(address, payload, now_ms)
            if got is not None:
                out.append(got)
        return tuple(out)

    def reset(self) -> None:
        """Start a new scan: forget delivered frames and half frames (counters stay monotonic)."""
        self._seen.clear()
        self._pending.clear()

    def forget(self, frame_bytes: bytes) -> None:
        """Undo the duplicate suppression of one frame (it could not be delivered; let a repeat in)."""
        self._seen.pop(frame_bytes, None)

    # --- internals --------------------------------------------------------------------------------

    def _one(self, address: str, payload: bytes, now_ms: int) -> bytes | None:
        if not payload:
            self.counters["reject.bad_length"] += 1
            return None
        hdr = payload[0]
        version, segment, seq = hdr >> 4, hdr >> 2 & 3, hdr & 3
        body = payload[1:]
        if version != HEADER_VERSION or segment == 3 or (segment == SEG_WHOLE and seq):
            self.counters["reject.bad_header"] += 1
            return None
        if segment == SEG_WHOLE:
            if not frame.MIN_FRAME <= len(body) <= frame.MAX_FRAME:
                self.counters["reject.bad_length"] += 1
                return None
            return self._deliver(body, now_ms)
        if (segment == SEG_FIRST and len(body) != SEGMENT_FIRST_LEN) or (
            segment == SEG_SECOND and not SEGMENT_SECOND_MIN <= len(body) <= SEGMENT_SECOND_MAX
        ):
            self.counters["reject.bad_length"] += 1
            return None
        return self._segment(address, segment, seq, body, now_ms)

    def _segment(self, address: str, segment: int, seq: int, body: bytes, now_ms: int) -> bytes | None:
        pending = self._pending.get(address)
        if pending is not None and pending.seq != seq:
            if pending.first is None or pending.second is None:
                self.counters["segment.dropped"] += 1
            del self._pending[address]
            pending = None
        if pending is None:
            pending = _Pending(seq, None, None, now_ms)
            self._pending[address] = pending
            while len(self._pending) > self.pending_capacity:
                _, old = self._pending.popitem(last=False)
                if old.first is None or old.second is None:
                    self.counters["segment.dropped"] += 1
        self._pending.move_to_end(address)
        pending.touched_ms = now_ms
        if segment == SEG_FIRST:
            if pending.first is not None and pending.first != body:
                pending.second = None  # same sequence number, different frame: the counter wrapped
            pending.first = body
        else:
            if pending.second is not None and pending.second != body:
                pending.first = None
            pending.second = body
        self.counters["segment.stored"] += 1
        if pending.first is None or pending.second is None:
            return None
        return self._deliver(pending.first + pending.second, now_ms)

    def _deliver(self, frame_bytes: bytes, now_ms: int) -> bytes | None:
        if frame_bytes in self._seen:
            self._seen[frame_bytes] = now_ms
            self._seen.move_to_end(frame_bytes)
            self.counters["duplicate"] += 1
            return None
        self._seen[frame_bytes] = now_ms
        while len(self._seen) > self.dedupe_capacity:
            self._seen.popitem(last=False)
        self.counters["frames"] += 1
        return frame_bytes

    def _expire(self, now_ms: int) -> None:
        while self._seen:
            key, heard = next(iter(self._seen.items()))
            if now_ms - heard < self.dedupe_window_ms:
                break
            del self._seen[key]
        while self._pending:
            address, pending = next(iter(self._pending.items()))
            if now_ms - pending.touched_ms < self.segment_timeout_ms:
                break
            del self._pending[address]
            if pending.first is None or pending.second is None:
                self.counters["segment.dropped"] += 1
