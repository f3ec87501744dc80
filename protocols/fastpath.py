"""Gateway fast path for frame decoding (CPython only).

Same contract and result as :func:`lifeline.protocols.frame.decode`, with C implementations underneath:
``hashlib``/``hmac`` SHA-256 (suite intl) or ``cryptography``'s HMAC-SM3 (suite sm) for the MIC,
``cryptography`` AES-CTR or SM4-CTR for the body and ``cbor2`` for the map. The device-side
decoder stays the reference: cbor2 accepts more than the Lifeline subset (tags, floats, indefinite lengths,
duplicate keys), so a body is taken from cbor2 only when re-encoding it deterministically gives back the
same bytes; anything else goes through the reference decoder, which produces the canonical rejection.
The test suite cross-checks both paths on random and mutated frames.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import crypto, crypto_sm, frame, schema, sm4

_HL = frame.HEADER_LEN
_ML = frame.MIC_LEN


_ECB_CACHE: dict[tuple[int, bytes], Any] = {}
_ECB_CACHE_MAX = 256  # ~1.2 KiB per OpenSSL context: only hot devices keep one


def _ecb(enc_key: bytes, suite: int = frame.SUITE_INTL) -> Any:
    ctx = _ECB_CACHE.get((suite, enc_key))
    if ctx is None:
        if len(_ECB_CACHE) >= _ECB_CACHE_MAX:
            _ECB_CACHE.pop(next(iter(_ECB_CACHE)))
        algorithm = algorithms.SM4(enc_key) if suite == frame.SUITE_SM else algorithms.AES(enc_key)
        ctx = _ECB_CACHE[(suite, enc_key)] = Cipher(algorithm, modes.ECB()).encryptor()
    return ctx


def ctr_xor(enc_key: bytes, downlink: bool, dev_id: bytes, fcnt: int, data: bytes,
            suite: int = frame.SUITE_INTL) -> bytes:
    """AES-128-CTR (suite intl) or SM4-CTR (suite sm) as in the device code, from a cached ECB context
    (one per device key)."""
    n = len(data)
    prefix = bytes((1, 1 if downlink else 0)) + dev_id + fcnt.to_bytes(4, "big") + b"\x00"
    blocks = b"".join(prefix + bytes((i,)) for i in range((n + 15) // 16))
    stream = _ecb(enc_key, suite).update(blocks)
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")).to_bytes(n, "big")


def hmac_sm3(key: bytes, msg: bytes) -> bytes:
    """HMAC-SM3 from OpenSSL (through `cryptography`)."""
    h = chmac.HMAC(key, hashes.SM3())
    h.update(msg)
    return h.finalize()


def derive_keys(root: bytes, dev_id: bytes, suite: int = frame.SUITE_INTL) -> frame.Keys:
    """Same keys as frame.derive_keys, with C HMACs (the gateway derives one set per device it has not seen
    recently; the pure-Python HMAC of the device code costs ~10x more, HMAC-SM3 far more)."""
    if len(dev_id) != 8:
        raise ValueError("device id must be 8 bytes")
    keys = frame.Keys.__new__(frame.Keys)
    keys.dev_id = bytes(dev_id)
    keys.suite = suite
    keys.cipher = None
    if suite == frame.SUITE_INTL:
        keys.mic_up = hmac.digest(root, crypto.LABEL_MIC_UP + dev_id, "sha256")
        keys.mic_down = hmac.digest(root, crypto.LABEL_MIC_DOWN + dev_id, "sha256")
        keys.enc = hmac.digest(root, crypto.LABEL_ENC + dev_id, "sha256")[:16]
    elif suite == frame.SUITE_SM:
        keys.mic_up = hmac_sm3(root, crypto_sm.LABEL_MIC_UP + dev_id)
        keys.mic_down = hmac_sm3(root, crypto_sm.LABEL_MIC_DOWN + dev_id)
        keys.enc = hmac_sm3(root, crypto_sm.LABEL_ENC + dev_id)[:16]
        keys.cipher = sm4.Sm4Ecb(keys.enc)  # for the reference decoder; the fast path uses OpenSSL's SM4
    else:
        raise ValueError(f"unknown crypto suite {suite!r}")
    return keys


class UplinkKeys:
    """The keys that check a device's uplinks (MIC and body), for the gateway's key cache: ``frame.Keys``
    also holds the downlink MIC key and, for suite sm, the reference decoder's SM4 key schedule, which
    no uplink needs; with ``__slots__`` and without those a cached device costs about half the memory
    (the gateway keeps 10,000s). ``epoch``: the device's key epoch these were derived for. Never printed."""

    __slots__ = ("dev_id", "enc", "epoch", "mic_up", "sm_up", "suite")

    def __init__(self, dev_id: bytes, suite: int, epoch: int, mic_up: bytes, enc: bytes) -> None:
        self.dev_id = dev_id
        self.suite = suite
        self.epoch = epoch
        self.mic_up = mic_up
        self.enc = enc
        self.sm_up: Any = None  # suite sm: the keyed HMAC-SM3 context, made on first use (_sm3_ctx)

    def __repr__(self) -> str:
        return "UplinkKeys(<redacted>)"


def derive_uplink_keys(root: bytes, dev_id: bytes, suite: int = frame.SUITE_INTL, epoch: int = 0) -> UplinkKeys:
    """The uplink half of :func:`derive_keys` (same KDF, two HMACs instead of three)."""
    if len(dev_id) != 8:
        raise ValueError("device id must be 8 bytes")
    if suite == frame.SUITE_INTL:
        mic_up = hmac.digest(root, crypto.LABEL_MIC_UP + dev_id, "sha256")
        enc = hmac.digest(root, crypto.LABEL_ENC + dev_id, "sha256")[:16]
    elif suite == frame.SUITE_SM:
        mic_up = hmac_sm3(root, crypto_sm.LABEL_MIC_UP + dev_id)
        enc = hmac_sm3(root, crypto_sm.LABEL_ENC + dev_id)[:16]
    else:
        raise ValueError(f"unknown crypto suite {suite!r}")
    return UplinkKeys(bytes(dev_id), suite, epoch, mic_up, enc)


AnyKeys = frame.Keys | UplinkKeys  # what the decoder takes; UplinkKeys only for uplinks (downlink=False)


_IPAD = bytes(b ^ 0x36 for b in range(256))  # translate tables: key bytes XOR the HMAC pads
_OPAD = bytes(b ^ 0x5C for b in range(256))
_ZERO32 = bytes(32)
_sha256 = hashlib.sha256


def mic(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256(key, msg)[:8], built from two SHA-256 calls with the pads made by ``bytes.translate``.
    Faster than ``hmac.digest`` (no OpenSSL algorithm fetch per call) and than copying per-device
    precomputed pad states, and it keeps nothing per device (the gateway holds 10,000s of keys)."""
    k = key + _ZERO32 if len(key) == 32 else (key if len(key) <= 64 else _sha256(key).digest()).ljust(64, b"\x00")
    inner = _sha256(k.translate(_IPAD) + msg).digest()
    digest: bytes = _sha256(k.translate(_OPAD) + inner).digest()
    return digest[:_ML]


def _sm3_ctx(keys: AnyKeys, downlink: bool) -> Any:
    """A keyed HMAC-SM3 context kept on the Keys object; each frame works on a copy of it."""
    if isinstance(keys, UplinkKeys):
        key = _mic_key(keys, downlink)  # (raises for a downlink)
        ctx = keys.sm_up
        if ctx is None:
            ctx = keys.sm_up = chmac.HMAC(key, hashes.SM3())
        return ctx
    attr = "_fp_sm_down" if downlink else "_fp_sm_up"
    ctx = getattr(keys, attr, None)
    if ctx is None:
        ctx = chmac.HMAC(keys.mic_down if downlink else keys.mic_up, hashes.SM3())
        setattr(keys, attr, ctx)
    return ctx


def _mic_key(keys: AnyKeys, downlink: bool) -> bytes:
    if not downlink:
        return keys.mic_up
    if isinstance(keys, UplinkKeys):
        raise ValueError("UplinkKeys have no downlink MIC key")
    return keys.mic_down


def mic_for(keys: AnyKeys, downlink: bool, msg: bytes) -> bytes:
    """The 8-byte MIC of ``msg`` under the keys' suite, from C code."""
    if keys.suite == frame.SUITE_SM:
        h = _sm3_ctx(keys, downlink).copy()
        h.update(msg)
        digest: bytes = h.finalize()
        return digest[:_ML]
    return mic(keys.mic_up if not downlink else _mic_key(keys, downlink), msg)


def _rules() -> dict[int, tuple[dict[int, tuple[int, int, bool]], frozenset[int]]]:
    out = {}
    for kind_id, (_n, _c, _p, fields) in schema.KINDS.items():
        specs = {f[0]: (f[4], f[5], f[6] == schema.T_BYTES) for f in fields}
        out[kind_id] = (specs, frozenset(f[0] for f in fields if f[7]))
    return out


_RULES = _rules()


def _canonical_len(kind: int, fields: dict[Any, Any], ascending: bool = True) -> int:
    """The length of the deterministic CBOR encoding of ``fields`` when frame.validate_fields would accept
    them (same table, dict lookups) and, with ``ascending``, their keys come in ascending order; else -1."""
    rules = _RULES.get(kind)
    if rules is None:
        return -1
    specs, required = rules
    last = -1
    size = 1 if len(fields) < 24 else 2  # map head (a kind has far fewer than 256 fields)
    for k, v in fields.items():
        spec = specs.get(k) if type(k) is int else None
        if spec is None or (ascending and k <= last):
            return -1
        last = k
        size += 1 if k < 24 else 2 if k < 256 else 3
        t = type(v)
        if t is int:
            if spec[2] or not spec[0] <= v <= spec[1]:
                return -1
            a = v if v >= 0 else -1 - v
            size += 1 if a < 24 else 2 if a < 0x100 else 3 if a < 0x10000 else 5 if a < 0x100000000 else 9
        elif t is bytes:
            n = len(v)
            if not spec[2] or not spec[0] <= n <= spec[1]:
                return -1
            size += n + (1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else 5)
        else:
            return -1
    return size if required.issubset(fields) else -1


def _plainly_valid(kind: int, fields: dict[Any, Any], ascending: bool = False) -> bool:
    """True only when frame.validate_fields would accept ``fields`` (and, with ``ascending``, its keys
    come in ascending order)."""
    return _canonical_len(kind, fields, ascending) >= 0


_TAG_HEAD = re.compile(b"[\xc0-\xdb]").search  # a byte that could be the head of a CBOR tag (major type 6)


class WireMap(dict[int, Any]):
    """A decoded body map that keeps the bytes it was decoded from, when those are exactly its deterministic
    CBOR encoding (checked by :func:`decode_parsed`). Whoever re-encodes the map (the gateway's batch record
    encoder) takes ``cbor`` instead of encoding it again. Read-only by contract, as every decoded map:
    a changed map must be a new plain dict, which carries no bytes."""

    __slots__ = ("cbor",)
    cbor: bytes


def decode(data: bytes, keys: AnyKeys, downlink: bool = False,
           allowed: frozenset[int] | None = None) -> frame.Frame:
    """Verify, decrypt and decode; raises frame.FrameError only."""
    return decode_parsed(frame.parse_header(data), data, keys, downlink, allowed)


def decode_parsed(header: frame.Header, data: bytes, keys: AnyKeys, downlink: bool = False,
                  allowed: frozenset[int] | None = None) -> frame.Frame:
    """:func:`decode` for a caller that already has ``header = frame.parse_header(data)``. ``allowed``: the
    suite ids the gateway config accepts (None: every known suite)."""
    frame.check_direction(header, downlink)
    if header.dev_id != keys.dev_id:
        raise frame.FrameError("bad_mic", "frame is for another device")
    frame.check_suite(header, keys, allowed)  # type: ignore[arg-type]  # reads keys.suite only
    if not hmac.compare_digest(mic_for(keys, downlink, data[:-_ML]), data[-_ML:]):
        raise frame.FrameError("bad_mic")
    frame.check_policy(header, downlink)
    body = data[_HL:-_ML]
    if header.encrypted:
        body = ctr_xor(keys.enc, downlink, header.dev_id, header.fcnt, body, keys.suite)
    try:
        fields = cbor2.loads(body)
        # Is the body the deterministic encoding of this map? Every data item (map head, key, value) has
        # exactly one shortest definite encoding, and any other encoding of it is longer (a longer head, an
        # indefinite length, duplicate keys) - except a tagged one (a bignum can be as short as a plain
        # integer). So with keys ascending and no byte in the body that could be a tag head, equal lengths
        # prove equal bytes. A body with such a byte (mostly a value byte in 0xc0..0xdb) is compared
        # byte for byte with cbor2's re-encoding (in wire order: the keys ascend, so that is the
        # deterministic order).
        fast = type(fields) is dict and _canonical_len(header.kind, fields) == len(body) and (
            _TAG_HEAD(body) is None or cbor2.dumps(fields) == body)
    except Exception:
        fast = False
    if not fast:
        return frame.decode_body(header, body)  # the reference decoder gives the canonical verdict
    wire = WireMap(fields)
    wire.cbor = body
    return frame.Frame(header, wire)
