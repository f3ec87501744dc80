"""Gateway fast path for frame decoding (CPython only).

Same contract and result as :func:`lifeline.protocols.frame.decode`, with C implementations underneath:
``hmac.digest`` for the MIC, ``cryptography`` AES-CTR for the body and ``cbor2`` for the map. The device-side
decoder stays the reference: cbor2 accepts more than the Lifeline subset (tags, floats, indefinite lengths,
duplicate keys), so a body is taken from cbor2 only when re-encoding it deterministically gives back the
same bytes; anything else goes through the reference decoder, which produces the canonical rejection.
The test suite cross-checks both paths on random and mutated frames.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import cbor2
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import frame

_WIRE_TYPES = (int, bytes)
_HL = frame.HEADER_LEN
_ML = frame.MIC_LEN


_ECB_CACHE: dict[bytes, Any] = {}
_ECB_CACHE_MAX = 4096


def _ecb(enc_key: bytes) -> Any:
    ctx = _ECB_CACHE.get(enc_key)
    if ctx is None:
        if len(_ECB_CACHE) >= _ECB_CACHE_MAX:
            _ECB_CACHE.pop(next(iter(_ECB_CACHE)))
        ctx = _ECB_CACHE[enc_key] = Cipher(algorithms.AES(enc_key), modes.ECB()).encryptor()
    return ctx


def ctr_xor(enc_key: bytes, downlink: bool, dev_id: bytes, fcnt: int, data: bytes) -> bytes:
    """AES-128-CTR as in crypto.ctr_xor, from a cached ECB context (one per device key)."""
    n = len(data)
    prefix = bytes((1, 1 if downlink else 0)) + dev_id + fcnt.to_bytes(4, "big") + b"\x00"
    blocks = b"".join(prefix + bytes((i,)) for i in range((n + 15) // 16))
    stream = _ecb(enc_key).update(blocks)
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")).to_bytes(n, "big")


_HMAC_CACHE: dict[bytes, tuple[Any, Any]] = {}


def mic(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256(key, msg)[:8] from cached inner/outer hash states (one copy each instead of a full
    HMAC key setup and an OpenSSL algorithm fetch per frame)."""
    states = _HMAC_CACHE.get(key)
    if states is None:
        if len(_HMAC_CACHE) >= _ECB_CACHE_MAX:
            _HMAC_CACHE.pop(next(iter(_HMAC_CACHE)))
        padded = key.ljust(64, b"\x00") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\x00")
        states = _HMAC_CACHE[key] = (hashlib.sha256(bytes(b ^ 0x36 for b in padded)),
                                     hashlib.sha256(bytes(b ^ 0x5C for b in padded)))
    inner = states[0].copy()
    inner.update(msg)
    outer = states[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest[:_ML]


def decode(data: bytes, keys: frame.Keys, downlink: bool = False) -> frame.Frame:
    """Verify, decrypt and decode; raises frame.FrameError only."""
    header = frame.parse_header(data)
    frame.check_direction(header, downlink)
    if header.dev_id != keys.dev_id:
        raise frame.FrameError("bad_mic", "frame is for another device")
    if not hmac.compare_digest(mic(keys.mic_down if downlink else keys.mic_up, data[:-_ML]), data[-_ML:]):
        raise frame.FrameError("bad_mic")
    frame.check_policy(header, downlink)
    body = data[_HL:-_ML]
    if header.encrypted:
        body = ctr_xor(keys.enc, downlink, header.dev_id, header.fcnt, body)
    try:
        fields = cbor2.loads(body)
        fast = (
            type(fields) is dict
            and all(type(v) in _WIRE_TYPES and type(k) is int for k, v in fields.items())
            and cbor2.dumps(fields, canonical=True) == body
        )
    except Exception:
        fast = False
    if not fast:
        return frame.decode_body(header, body)
    return frame.Frame(header, frame.validate_fields(header.kind, fields))
