"""Line parser for a RAK3172 (RUI3 firmware) in LoRa P2P mode, as the gateway's serial modem.

Bytes from the serial port go in, typed events come out. Nothing here raises on input: every line is
either an event the adapter understands or a :class:`Reject` with a reason code, and the parser counts
both. The exact command set and response grammar are documented in docs/radios.md (section 1), after
the RAKwireless "RUI3 AT Command Manual", P2P section, for RUI3 v4.0.x and later.

Grammar (one line = bytes up to CR, LF or CRLF):

    OK                                  command accepted
    AT_ERROR | AT_PARAM_ERROR | AT_BUSY_ERROR | AT_COMMAND_NOT_FOUND | ...   command refused
    +EVT:RXP2P:<rssi>:<snr>:<hex>       one packet received (RSSI dBm, SNR dB, integers)
    +EVT:RXP2P RECEIVE TIMEOUT          a timed receive window ended without a packet
    +EVT:TXP2P DONE                     the transmission requested by AT+PSEND has ended
    RAKwireless ...                     first banner line after a (re)boot
    Current Work Mode: LoRa P2P.        last banner line after a (re)boot or AT+NWM
    AT...                               a query answer (AT+VER=...) or an echoed command
    anything else printable             a value line (answer to a query such as AT+VER=?)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

MAX_LINE = 600  # bytes without terminator; a 255-byte RXP2P line is 20 + 510 = 530 bytes
MAX_PAYLOAD = 255  # SX126x FIFO / LoRa PHY payload limit
RSSI_RANGE = (-200, 20)  # dBm; anything outside is not a measurement
SNR_RANGE = (-64, 64)  # dB

AT_ERRORS = frozenset(
    {
        "AT_ERROR",
        "AT_PARAM_ERROR",
        "AT_BUSY_ERROR",
        "AT_TEST_PARAM_OVERFLOW",
        "AT_NO_CLASSB_ENABLE",
        "AT_NO_NETWORK_JOINED",
        "AT_RX_ERROR",
        "AT_MODE_NO_SUPPORT",
        "AT_COMMAND_NOT_FOUND",
    }
)

_RXP2P = b"+EVT:RXP2P:"
_HEX = frozenset(b"0123456789abcdefABCDEF")
_PRINTABLE = bytes(range(0x20, 0x7F))
_TERMINATOR = re.compile(rb"[\r\n]")


@dataclass(frozen=True, slots=True)
class Ok:
    """``OK``: the pending command succeeded."""


@dataclass(frozen=True, slots=True)
class AtError:
    """The pending command failed with a RUI3 status code."""

    code: str


@dataclass(frozen=True, slots=True)
class RxPacket:
    """``+EVT:RXP2P:<rssi>:<snr>:<hex>``."""

    rssi: int
    snr: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class RxTimeout:
    """``+EVT:RXP2P RECEIVE TIMEOUT``."""


@dataclass(frozen=True, slots=True)
class TxDone:
    """``+EVT:TXP2P DONE``."""


@dataclass(frozen=True, slots=True)
class Banner:
    """A boot banner line: the module has (re)started, or switched work mode."""

    text: str
    final: bool  # True for "Current Work Mode: ..." (the module is ready for commands)


@dataclass(frozen=True, slots=True)
class AtReply:
    """A line starting with ``AT``: the answer to a query (RUI3 prints ``AT+VER=RUI_4.0.6_RAK3172-E``
    for ``AT+VER=?``), or an echoed command if echo was turned on."""

    text: str


@dataclass(frozen=True, slots=True)
class Value:
    """Any other printable line: the answer to a query, or noise the adapter did not ask for."""

    text: str


@dataclass(frozen=True, slots=True)
class Reject:
    """A line that is not valid modem output."""

    reason: str
    detail: str


AtEvent = Ok | AtError | RxPacket | RxTimeout | TxDone | Banner | AtReply | Value | Reject

REJECT_REASONS = (
    "overlong",  # no terminator within MAX_LINE bytes; the rest up to the next terminator is dropped
    "not_ascii",  # a byte outside printable ASCII (includes NUL and other control bytes)
    "bad_rxp2p",  # +EVT:RXP2P with the wrong number of fields
    "bad_rssi",
    "bad_snr",
    "bad_hex",
    "odd_hex",
    "empty_payload",
    "payload_too_long",
    "unknown_event",  # a +EVT: line this adapter does not know
)


def _parse_int(text: bytes, lo: int, hi: int) -> int | None:
    if not 1 <= len(text) <= 5:
        return None
    body = text[1:] if text[:1] in (b"-", b"+") else text
    if not body or not body.isdigit():
        return None
    value = int(text)
    return value if lo <= value <= hi else None


def _parse_rxp2p(line: bytes) -> AtEvent:
    fields = line[len(_RXP2P) :].split(b":")
    if len(fields) != 3:
        return Reject("bad_rxp2p", f"{len(fields)} fields")
    rssi = _parse_int(fields[0], *RSSI_RANGE)
    if rssi is None:
        return Reject("bad_rssi", fields[0][:8].decode("ascii", "replace"))
    snr = _parse_int(fields[1], *SNR_RANGE)
    if snr is None:
        return Reject("bad_snr", fields[1][:8].decode("ascii", "replace"))
    hexdata = fields[2]
    if not hexdata:
        return Reject("empty_payload", "")
    if not _HEX.issuperset(hexdata):
        return Reject("bad_hex", "non-hex character in payload")
    if len(hexdata) % 2:
        return Reject("odd_hex", f"{len(hexdata)} hex digits")
    if len(hexdata) // 2 > MAX_PAYLOAD:
        return Reject("payload_too_long", f"{len(hexdata) // 2} bytes")
    return RxPacket(rssi, snr, bytes.fromhex(hexdata.decode("ascii")))


def parse_line(line: bytes) -> AtEvent:
    """Classify one line (without its terminator). Never raises."""
    if len(line) > MAX_LINE:
        return Reject("overlong", f"{len(line)} bytes")
    bad = line.translate(None, _PRINTABLE)
    if bad:
        return Reject("not_ascii", f"byte 0x{bad[0]:02x}")
    text = line.decode("ascii").strip()
    if text == "OK":
        return Ok()
    if text in AT_ERRORS:
        return AtError(text)
    if line.startswith(_RXP2P):
        return _parse_rxp2p(line.rstrip(b" "))
    if text == "+EVT:RXP2P RECEIVE TIMEOUT":
        return RxTimeout()
    if text == "+EVT:TXP2P DONE":
        return TxDone()
    if text.startswith("+EVT:"):
        return Reject("unknown_event", text[:40])
    if text.startswith("RAKwireless"):
        return Banner(text, final=False)
    if text.startswith("Current Work Mode:"):
        return Banner(text, final=True)
    if text[:2].upper() == "AT":
        return AtReply(text)
    return Value(text)


class AtLineParser:
    """Splits a byte stream into lines and parses them; keeps counters of what it saw.

    CR, LF and CRLF all end a line; blank lines are skipped. A line longer than ``max_line`` is
    rejected once (``overlong``) and its remainder is discarded up to the next terminator, so memory
    stays bounded whatever the port sends.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.counters: Counter[str] = Counter()
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[AtEvent]:
        events: list[AtEvent] = []
        start = 0
        n = len(data)
        while start < n:
            match = _TERMINATOR.search(data, start)
            end = n if match is None else match.start()
            chunk = data[start:end]
            if self._discarding:
                pass
            elif len(self._buf) + len(chunk) > self.max_line:
                self._buf.clear()
                self._discarding = True
                events.append(self._count(Reject("overlong", f"more than {self.max_line} bytes")))
            else:
                self._buf += chunk
            if end == n:
                break  # no terminator yet: keep the partial line
            if self._discarding:
                self._discarding = False
            elif self._buf:
                events.append(self._count(parse_line(bytes(self._buf))))
                self._buf.clear()
            start = end + 1
        return events

    def reset(self) -> None:
        """Forget a partial line (the port closed or the modem rebooted mid-line)."""
        if self._buf or self._discarding:
            self.counters["reject.partial_line"] += 1
        self._buf.clear()
        self._discarding = False

    def _count(self, event: AtEvent) -> AtEvent:
        if isinstance(event, Reject):
            self.counters["reject." + event.reason] += 1
        else:
            self.counters["line." + type(event).__name__.lower()] += 1
        return event
