"""Codec for the Semtech UDP packet-forwarder protocol (GWMP), protocol version 2.

Written from the packet forwarder's PROTOCOL.TXT (Lora-net/packet_forwarder v4.0.1, "Basic communication
protocol between Lora gateway and server", revision v1.4, protocol version byte 2). Section numbers
below refer to that document.

Server side of the protocol: :func:`decode_upstream` parses what a forwarder sends (PUSH_DATA 3.2,
PULL_DATA 5.2, TX_ACK 5.5); ``encode_*`` build what the server answers (PUSH_ACK 3.3, PULL_ACK 5.3,
PULL_RESP 5.4 with a ``txpk`` object, section 6). Every decode failure is a :class:`GwmpError` with a
reason code; no other exception escapes, whatever the datagram holds. Inside a PUSH_DATA, one bad
``rxpk`` object does not spoil its neighbours: it is left out and its reason listed in
:attr:`PushData.rejects`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

PROTOCOL_VERSION = 2
PUSH_DATA = 0x00
PUSH_ACK = 0x01
PULL_DATA = 0x02
PULL_RESP = 0x03
PULL_ACK = 0x04
TX_ACK = 0x05

MAX_DATAGRAM = 65507  # largest UDP payload over IPv4
MAX_PAYLOAD = 255  # LoRa PHY payload limit

# TX_ACK "error" values (section 6); an absent or empty JSON means NONE (no error).
TX_ACK_ERRORS = (
    "NONE",
    "TOO_LATE",
    "TOO_EARLY",
    "COLLISION_PACKET",
    "COLLISION_BEACON",
    "TX_FREQ",
    "TX_POWER",
    "GPS_UNLOCKED",
)

_HEADER = struct.Struct(">BHB")  # version, token, identifier
_DATR = re.compile(r"SF(\d{1,2})BW(\d{2,3})\Z")
_CODR = ("4/5", "4/6", "4/7", "4/8")
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}\Z")


class GwmpError(ValueError):
    """A datagram this server will not accept; ``reason`` is a short code for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class RxPk:
    """One received LoRa packet from a PUSH_DATA ``rxpk`` array (section 4)."""

    data: bytes
    freq_hz: int
    sf: int
    bw_khz: int
    codr: str
    rssi: int  # dBm
    lsnr_x10: int | None  # SNR in 0.1 dB
    stat: int  # CRC status: 1 ok, 0 no CRC (-1 is rejected before this record is made)
    tmst: int | None  # concentrator microsecond counter at "RX finished", uint32
    chan: int | None
    rfch: int
    time: str | None


@dataclass(frozen=True, slots=True)
class PushData:
    token: int
    gateway_eui: bytes
    rxpk: tuple[RxPk, ...]
    stat: Mapping[str, object] | None
    rejects: tuple[str, ...]  # reasons of rxpk objects left out, one per object


@dataclass(frozen=True, slots=True)
class PullData:
    token: int
    gateway_eui: bytes


@dataclass(frozen=True, slots=True)
class TxAck:
    token: int
    gateway_eui: bytes
    error: str  # one of TX_ACK_ERRORS, or "UNKNOWN:<value>" for a value PROTOCOL.TXT does not list


Upstream = PushData | PullData | TxAck


@dataclass(frozen=True, slots=True)
class TxPk:
    """A LoRa packet to emit (section 6). Exactly one of ``immediate`` or ``tmst`` is used."""

    data: bytes
    freq_hz: int
    sf: int
    bw_khz: int
    power_dbm: int
    tmst: int | None = None  # concentrator counter value to emit at
    immediate: bool = False
    rfch: int = 0
    codr: str = "4/5"
    ipol: bool = True  # LoRaWAN inverts downlink IQ; Lifeline passes lora_p2p.DOWNLINK_IQ_INVERTED
    preamble: int | None = None

    def to_json(self) -> dict[str, object]:
        txpk: dict[str, object] = {}
        if self.immediate:
            txpk["imme"] = True
        else:
            if self.tmst is None:
                raise ValueError("txpk needs tmst unless immediate")
            txpk["tmst"] = self.tmst & 0xFFFFFFFF
        txpk.update(
            {
                "freq": round(self.freq_hz / 1e6, 6),
                "rfch": self.rfch,
                "powe": self.power_dbm,
                "modu": "LORA",
                "datr": f"SF{self.sf}BW{self.bw_khz}",
                "codr": self.codr,
                "ipol": self.ipol,
                "size": len(self.data),
                "data": base64.b64encode(self.data).decode("ascii"),
            }
        )
        if self.preamble is not None:
            txpk["prea"] = self.preamble
        return {"txpk": txpk}


# --- server -> forwarder -------------------------------------------------------------------------


def encode_push_ack(token: int) -> bytes:
    return _HEADER.pack(PROTOCOL_VERSION, token, PUSH_ACK)


def encode_pull_ack(token: int) -> bytes:
    return _HEADER.pack(PROTOCOL_VERSION, token, PULL_ACK)


def encode_pull_resp(token: int, txpk: TxPk) -> bytes:
    body = json.dumps(txpk.to_json(), separators=(",", ":")).encode("ascii")
    return _HEADER.pack(PROTOCOL_VERSION, token, PULL_RESP) + body


# --- forwarder -> server -------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise GwmpError("bad_json", f"non-finite number {name}")


def _json_object(raw: bytes) -> dict[str, object]:
    if not raw.startswith(b"{") or not raw.rstrip(b"\x00 \r\n\t").endswith(b"}"):
        raise GwmpError("bad_json", "not a JSON object")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text.rstrip("\x00"), parse_constant=_reject_constant)
    except GwmpError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise GwmpError("bad_json", type(exc).__name__) from None
    if not isinstance(value, dict):
        raise GwmpError("bad_json", "not a JSON object")
    return value


def _int(obj: Mapping[str, object], key: str, lo: int, hi: int, *, required: bool = True) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise GwmpError("missing_field", key)
        return None
    if type(value) is float and math.isfinite(value) and value == int(value):
        value = int(value)
    if type(value) is not int:
        raise GwmpError("bad_type", key)
    if not lo <= value <= hi:
        raise GwmpError("out_of_range", key)
    return value


def _num(obj: Mapping[str, object], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):
        raise GwmpError("bad_type", key)
    assert isinstance(value, int | float)
    number = float(value)
    if not math.isfinite(number):
        raise GwmpError("out_of_range", key)
    return number


def _str(obj: Mapping[str, object], key: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise GwmpError("missing_field", key)
        return None
    if type(value) is not str:
        raise GwmpError("bad_type", key)
    return value


def decode_base64(text: str) -> bytes:
    """Standard base64; padding may be missing (section 6 says padding is optional downstream)."""
    if len(text) > 4 * ((MAX_PAYLOAD + 2) // 3) or not _B64.match(text):
        raise GwmpError("bad_data", "not base64")
    bare = text.rstrip("=")
    if (bare != text and len(text) % 4) or len(bare) % 4 == 1:
        raise GwmpError("bad_data", "bad base64 length or padding")
    padded = bare + "=" * (-len(bare) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise GwmpError("bad_data", "not base64") from None


def parse_datr(datr: str) -> tuple[int, int]:
    match = _DATR.match(datr)
    if match is None:
        raise GwmpError("bad_datr", datr[:16])
    sf, bw = int(match.group(1)), int(match.group(2))
    if not 5 <= sf <= 12 or bw not in (125, 250, 500):
        raise GwmpError("bad_datr", datr[:16])
    return sf, bw


def _decode_rxpk(obj: object) -> RxPk:
    if not isinstance(obj, dict):
        raise GwmpError("bad_type", "rxpk entry")
    stat = _int(obj, "stat", -1, 1)
    if stat == -1:
        raise GwmpError("crc_bad")
    modu = _str(obj, "modu")
    if modu != "LORA":
        raise GwmpError("not_lora", str(modu)[:8])
    datr = _str(obj, "datr")
    assert datr is not None
    sf, bw = parse_datr(datr)
    codr = _str(obj, "codr")
    if codr not in _CODR:
        raise GwmpError("bad_codr", str(codr)[:8])
    freq = _num(obj, "freq")
    if freq is None:
        raise GwmpError("missing_field", "freq")
    if not 100.0 <= freq <= 1000.0:
        raise GwmpError("out_of_range", "freq")
    rssi_f = _num(obj, "rssi")
    if rssi_f is None:
        raise GwmpError("missing_field", "rssi")
    if not -200.0 <= rssi_f <= 20.0:
        raise GwmpError("out_of_range", "rssi")
    lsnr = _num(obj, "lsnr")
    if lsnr is not None and not -64.0 <= lsnr <= 64.0:
        raise GwmpError("out_of_range", "lsnr")
    size = _int(obj, "size", 0, MAX_PAYLOAD)
    text = _str(obj, "data")
    assert text is not None and size is not None and stat is not None
    data = decode_base64(text)
    if len(data) != size:
        raise GwmpError("size_mismatch", f"size {size}, data {len(data)}")
    if not data:
        raise GwmpError("empty_payload")
    return RxPk(
        data=data,
        freq_hz=round(freq * 1e6),
        sf=sf,
        bw_khz=bw,
        codr=codr,
        rssi=round(rssi_f),
        lsnr_x10=None if lsnr is None else round(lsnr * 10),
        stat=stat,
        tmst=_int(obj, "tmst", 0, 0xFFFFFFFF, required=False),
        chan=_int(obj, "chan", 0, 255, required=False),
        rfch=_int(obj, "rfch", 0, 255, required=False) or 0,
        time=_str(obj, "time", required=False),
    )


def _header(datagram: bytes) -> tuple[int, int]:
    if len(datagram) < 4:
        raise GwmpError("truncated", f"{len(datagram)} bytes")
    if len(datagram) > MAX_DATAGRAM:
        raise GwmpError("too_long", f"{len(datagram)} bytes")
    version, token, ident = _HEADER.unpack_from(datagram)
    if version != PROTOCOL_VERSION:
        raise GwmpError("unsupported_version", str(version))
    return token, ident


def decode_upstream(datagram: bytes) -> Upstream:
    """Parse a datagram a packet forwarder sent to the server. Raises only :class:`GwmpError`."""
    token, ident = _header(datagram)
    if ident not in (PUSH_DATA, PULL_DATA, TX_ACK):
        raise GwmpError("unexpected_type", f"0x{ident:02x}")
    if len(datagram) < 12:
        raise GwmpError("truncated", f"{len(datagram)} bytes")
    eui = bytes(datagram[4:12])
    body = datagram[12:]
    if ident == PULL_DATA:
        if body:
            raise GwmpError("trailing_bytes", f"{len(body)} bytes")
        return PullData(token, eui)
    if ident == TX_ACK:
        return TxAck(token, eui, _decode_tx_ack(body))
    root = _json_object(body)
    packets: list[RxPk] = []
    rejects: list[str] = []
    rxpk = root.get("rxpk")
    if rxpk is not None:
        if not isinstance(rxpk, list):
            raise GwmpError("bad_type", "rxpk")
        for entry in rxpk:
            try:
                packets.append(_decode_rxpk(entry))
            except GwmpError as exc:
                rejects.append(exc.reason)
    stat = root.get("stat")
    if stat is not None and not isinstance(stat, dict):
        raise GwmpError("bad_type", "stat")
    if rxpk is None and stat is None:
        raise GwmpError("empty_push", "neither rxpk nor stat")
    return PushData(token, eui, tuple(packets), stat, tuple(rejects))


def _decode_tx_ack(body: bytes) -> str:
    if not body.strip(b"\x00 \r\n\t"):
        return "NONE"  # section 5.5: no JSON means no error
    root = _json_object(body)
    ack = root.get("txpk_ack")
    if not isinstance(ack, dict):
        raise GwmpError("bad_type", "txpk_ack")
    error = ack.get("error", "NONE")
    if type(error) is not str:
        raise GwmpError("bad_type", "error")
    if error in TX_ACK_ERRORS:
        return error
    return "UNKNOWN:" + "".join(ch for ch in error[:24] if ch.isalnum() or ch == "_")
