"""SM2 signatures with SM3 (GB/T 32918.2, user id per GB/T 35276) through the system's OpenSSL 3 libcrypto.

Why OpenSSL, through this thin ctypes binding (docs/protocol.md section 5.1 has the measured comparison):
``cryptography`` has no SM2; OpenSSL 3 has it (Debian builds it in), verifies faster than every other
candidate measured, is kept up to date by the OS's security updates, and needs no new compiled dependency
on the gateway. Only a handful of stable EVP calls are used.

Keys: a private key is the 32-byte scalar ``d`` (1 <= d <= n-2), on disk as PKCS#8 PEM (id-ecPublicKey with
the SM2 curve OID 1.2.156.10197.1.301, the form ``openssl genpkey -algorithm SM2`` writes); a public key is
the uncompressed point ``04||x||y`` (65 bytes) or a SubjectPublicKeyInfo. Signatures: :meth:`sign` returns
``r||s`` (32 + 32 bytes, big-endian, as COSE ECDSA); :meth:`sign_der` the DER ``SEQUENCE {r, s}`` that X.509
and CSRs use. Every signature hashes ``Z_A || M`` with SM3, ``Z_A`` from the user id (default
``1234567812345678``).

CPython only.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import re
import secrets
import threading
from typing import Any, Final

from cryptography.exceptions import InvalidSignature

DEFAULT_UID: Final = b"1234567812345678"  # GB/T 35276-2017 section 5.3 (signature user id)
CURVE_OID: Final = "1.2.156.10197.1.301"
SIG_OID: Final = "1.2.156.10197.1.501"  # SM2 signature with SM3
N: Final = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123  # group order

# DER pieces (fixed for the SM2 curve)
_ALGID: Final = bytes.fromhex("301306072a8648ce3d020106082a811ccf5501822d")  # ecPublicKey + SM2 curve
_SPKI_PREFIX: Final = bytes.fromhex("3059") + _ALGID + bytes.fromhex("034200")
SIG_ALGID_DER: Final = bytes.fromhex("300a06082a811ccf55018375")  # AlgorithmIdentifier sm2sign-with-sm3


class Sm2Error(ValueError):
    """An SM2 key or signature that cannot be used (never carries key material)."""


class _Lib:
    def __init__(self) -> None:
        name = ctypes.util.find_library("crypto")
        if name is None:
            raise Sm2Error("OpenSSL libcrypto not found (Debian package libssl3); SM2 needs it")
        lib = ctypes.CDLL(name)
        c_p, c_int, c_size, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p
        size_p = ctypes.POINTER(ctypes.c_size_t)
        for fname, res, args in (
            ("OpenSSL_version_num", ctypes.c_ulong, []),
            ("EVP_PKEY_free", None, [c_p]),
            ("EVP_MD_CTX_new", c_p, []),
            ("EVP_MD_CTX_free", None, [c_p]),
            ("EVP_PKEY_CTX_new_from_pkey", c_p, [c_p, c_p, c_p]),
            ("EVP_PKEY_CTX_free", None, [c_p]),
            ("EVP_PKEY_CTX_set1_id", c_int, [c_p, c_p, c_int]),
            ("EVP_MD_CTX_set_pkey_ctx", None, [c_p, c_p]),
            ("EVP_sm3", c_p, []),
            ("EVP_DigestSignInit", c_int, [c_p, c_p, c_p, c_p, c_p]),
            ("EVP_DigestSign", c_int, [c_p, c_p, size_p, c_char_p, c_size]),
            ("EVP_DigestVerifyInit", c_int, [c_p, c_p, c_p, c_p, c_p]),
            ("EVP_DigestVerify", c_int, [c_p, c_char_p, c_size, c_char_p, c_size]),
            ("d2i_AutoPrivateKey", c_p, [c_p, ctypes.POINTER(c_char_p), ctypes.c_long]),
            ("d2i_PUBKEY", c_p, [c_p, ctypes.POINTER(c_char_p), ctypes.c_long]),
            ("EVP_PKEY_get_octet_string_param", c_int, [c_p, c_char_p, c_p, c_size, size_p]),
            ("EVP_PKEY_is_a", c_int, [c_p, c_char_p]),
            ("ERR_clear_error", None, []),
            ("EVP_PKEY_get_bn_param", c_int, [c_p, c_char_p, ctypes.POINTER(c_p)]),
            ("BN_bn2binpad", c_int, [c_p, c_p, c_int]),
            ("BN_clear_free", None, [c_p]),
        ):
            f = getattr(lib, fname)
            f.restype = res
            f.argtypes = args
        if lib.OpenSSL_version_num() < 0x30000000:
            raise Sm2Error("OpenSSL 3 is needed for SM2 (found an older libcrypto)")
        self.lib = lib
        self.sm3 = lib.EVP_sm3()
        if not self.sm3:
            raise Sm2Error("this OpenSSL has no SM3")


_lib: _Lib | None = None
_lib_lock = threading.Lock()


def _ossl() -> _Lib:
    global _lib
    if _lib is None:
        with _lib_lock:
            if _lib is None:
                _lib = _Lib()
    return _lib


def _L() -> Any:
    return _ossl().lib


def available() -> bool:
    """True if this machine's OpenSSL can do SM2 (checked by making and checking a signature)."""
    try:
        k = SM2PrivateKey.generate()
        k.public_key().verify(k.sign(b"probe"), b"probe")
    except (Sm2Error, InvalidSignature, OSError):
        return False
    return True


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(b),)) + b


def _der_int(v: int) -> bytes:
    b = v.to_bytes(v.bit_length() // 8 + 1, "big")  # leading zero keeps it positive
    while len(b) > 1 and b[0] == 0 and b[1] < 0x80:
        b = b[1:]
    return b"\x02" + _der_len(len(b)) + b


def rs_to_der(sig: bytes) -> bytes:
    """r||s (64 bytes) -> DER ``SEQUENCE {INTEGER r, INTEGER s}``."""
    if len(sig) != 64:
        raise Sm2Error(f"SM2 signature must be 64 bytes (r||s), got {len(sig)}")
    body = _der_int(int.from_bytes(sig[:32], "big")) + _der_int(int.from_bytes(sig[32:], "big"))
    return b"\x30" + _der_len(len(body)) + body


def der_to_rs(der: bytes) -> bytes:
    """DER ``SEQUENCE {INTEGER r, INTEGER s}`` -> r||s (64 bytes). Strict: one sequence, two integers."""
    def take(buf: bytes, pos: int, tag: int) -> tuple[bytes, int]:
        if pos + 2 > len(buf) or buf[pos] != tag:
            raise Sm2Error("SM2 signature is not DER SEQUENCE {r, s}")
        n, pos = buf[pos + 1], pos + 2
        if n & 0x80:
            k = n & 0x7F
            if k == 0 or k > 2 or pos + k > len(buf):
                raise Sm2Error("SM2 signature has a bad DER length")
            n, pos = int.from_bytes(buf[pos:pos + k], "big"), pos + k
        if pos + n > len(buf):
            raise Sm2Error("SM2 signature is truncated")
        return buf[pos:pos + n], pos + n

    seq, end = take(der, 0, 0x30)
    if end != len(der):
        raise Sm2Error("bytes after the SM2 signature")
    r, pos = take(seq, 0, 0x02)
    s, pos = take(seq, pos, 0x02)
    if pos != len(seq) or not r or not s or r[0] & 0x80 or s[0] & 0x80:
        raise Sm2Error("SM2 signature is not two positive DER integers")
    ri, si = int.from_bytes(r, "big"), int.from_bytes(s, "big")
    if not (0 < ri < N and 0 < si < N):
        raise Sm2Error("SM2 signature r or s out of range")
    return ri.to_bytes(32, "big") + si.to_bytes(32, "big")


def _pem(label: str, der: bytes) -> bytes:
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return b"".join((f"-----BEGIN {label}-----\n".encode(), *(x + b"\n" for x in lines),
                     f"-----END {label}-----\n".encode()))


_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*([A-Za-z0-9+/=\s]+?)-----END \1-----")


def pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    """All PEM blocks in ``data``: (label, DER)."""
    out = []
    for m in _PEM_RE.finditer(data):
        try:
            out.append((m.group(1).decode(), base64.b64decode(b"".join(m.group(2).split()), validate=True)))
        except ValueError:
            raise Sm2Error("PEM block is not valid base64") from None
    return out


class _PKey:
    """Owns one EVP_PKEY."""

    __slots__ = ("_pkey",)

    def __init__(self, pkey: int | None) -> None:
        self._pkey: int | None = pkey or None  # freed by __del__, also when __init__ raises below
        if not pkey:
            _L().ERR_clear_error()
            raise Sm2Error("OpenSSL refused the key")
        if _L().EVP_PKEY_is_a(pkey, b"SM2") != 1:
            _L().ERR_clear_error()
            raise Sm2Error("the key is not on the SM2 curve")

    def __del__(self) -> None:
        pkey, self._pkey = self._pkey, None
        if pkey and _lib is not None:
            _lib.lib.EVP_PKEY_free(pkey)

    def _md_ctx(self, uid: bytes) -> tuple[int, int]:
        L = _L()
        mctx = L.EVP_MD_CTX_new()
        pctx = L.EVP_PKEY_CTX_new_from_pkey(None, self._pkey, None)
        if not mctx or not pctx or L.EVP_PKEY_CTX_set1_id(pctx, uid, len(uid)) != 1:
            L.EVP_MD_CTX_free(mctx)
            L.EVP_PKEY_CTX_free(pctx)
            L.ERR_clear_error()
            raise Sm2Error("OpenSSL could not set up an SM2 context")
        L.EVP_MD_CTX_set_pkey_ctx(mctx, pctx)
        return mctx, pctx

    def point(self) -> bytes:
        buf = ctypes.create_string_buffer(65)
        n = ctypes.c_size_t(0)
        if _L().EVP_PKEY_get_octet_string_param(self._pkey, b"pub", buf, 65, ctypes.byref(n)) != 1 or n.value != 65:
            _L().ERR_clear_error()
            raise Sm2Error("OpenSSL could not export the SM2 public key")
        return buf.raw


def _check_uid(uid: bytes) -> bytes:
    if not isinstance(uid, bytes) or not 0 < len(uid) < 8192:
        raise Sm2Error("SM2 user id must be 1..8191 bytes")
    return uid


class SM2PublicKey:
    """An SM2 public key (a point on the SM2 curve)."""

    __slots__ = ("_k", "_point")

    def __init__(self, k: _PKey) -> None:
        self._k = k
        self._point = k.point()

    @classmethod
    def from_spki_der(cls, der: bytes) -> SM2PublicKey:
        buf = ctypes.c_char_p(der)
        return cls(_PKey(_L().d2i_PUBKEY(None, ctypes.byref(buf), len(der))))

    @classmethod
    def from_point(cls, point: bytes) -> SM2PublicKey:
        """From the uncompressed point 04||x||y (65 bytes)."""
        if not isinstance(point, bytes) or len(point) != 65 or point[0] != 4:
            raise Sm2Error("SM2 public key must be the 65-byte uncompressed point 04||x||y")
        return cls.from_spki_der(_SPKI_PREFIX + point)

    @classmethod
    def from_pem(cls, data: bytes) -> SM2PublicKey:
        blocks = [d for label, d in pem_blocks(data) if label == "PUBLIC KEY"]
        if len(blocks) != 1:
            raise Sm2Error("expected one PEM PUBLIC KEY block")
        return cls.from_spki_der(blocks[0])

    def point(self) -> bytes:
        return self._point

    def spki_der(self) -> bytes:
        return _SPKI_PREFIX + self._point

    def pem(self) -> bytes:
        return _pem("PUBLIC KEY", self.spki_der())

    def verify_der(self, der_signature: bytes, message: bytes, uid: bytes = DEFAULT_UID) -> None:
        """Raise InvalidSignature unless ``der_signature`` is this key's SM2 signature over ``message``."""
        L = _L()
        mctx, pctx = self._k._md_ctx(_check_uid(uid))
        try:
            if L.EVP_DigestVerifyInit(mctx, None, _ossl().sm3, None, self._k._pkey) != 1:
                raise Sm2Error("OpenSSL could not start an SM2 verification")
            ok = L.EVP_DigestVerify(mctx, der_signature, len(der_signature), message, len(message))
        finally:
            L.EVP_MD_CTX_free(mctx)
            L.EVP_PKEY_CTX_free(pctx)
            L.ERR_clear_error()
        if ok != 1:
            raise InvalidSignature("SM2 signature does not verify")

    def verify(self, signature: bytes, message: bytes, uid: bytes = DEFAULT_UID) -> None:
        """Raise InvalidSignature unless ``signature`` (r||s) is this key's SM2 signature over ``message``."""
        try:
            der = rs_to_der(signature)
        except Sm2Error:
            raise InvalidSignature("SM2 signature must be 64 bytes r||s") from None
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        if not (0 < r < N and 0 < s < N):
            raise InvalidSignature("SM2 signature r or s out of range")
        self.verify_der(der, message, uid)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SM2PublicKey) and other._point == self._point

    def __hash__(self) -> int:
        return hash(self._point)

    def __repr__(self) -> str:
        return f"SM2PublicKey({self._point.hex()[:18]}…)"


class SM2PrivateKey:
    """An SM2 private key. Its repr and errors never show the scalar."""

    __slots__ = ("_k", "_pub")

    def __init__(self, k: _PKey) -> None:
        self._k = k
        self._pub: SM2PublicKey | None = None

    @classmethod
    def generate(cls) -> SM2PrivateKey:
        """A fresh key: d uniform in [1, n-2] from the OS CSPRNG (secrets)."""
        return cls.from_scalar(secrets.randbelow(N - 2) + 1)

    @classmethod
    def from_scalar(cls, d: int | bytes) -> SM2PrivateKey:
        if isinstance(d, bytes):
            if len(d) != 32:
                raise Sm2Error("SM2 private key must be 32 bytes")
            d = int.from_bytes(d, "big")
        if not 1 <= d <= N - 2:
            raise Sm2Error("SM2 private key out of range [1, n-2]")
        return cls.from_pkcs8_der(_pkcs8(d))

    @classmethod
    def from_pkcs8_der(cls, der: bytes) -> SM2PrivateKey:
        buf = ctypes.c_char_p(der)
        return cls(_PKey(_L().d2i_AutoPrivateKey(None, ctypes.byref(buf), len(der))))

    @classmethod
    def from_pem(cls, data: bytes) -> SM2PrivateKey:
        blocks = [d for label, d in pem_blocks(data) if label in ("PRIVATE KEY", "EC PRIVATE KEY")]
        if len(blocks) != 1:
            raise Sm2Error("expected one unencrypted PEM PRIVATE KEY block")
        return cls.from_pkcs8_der(blocks[0])

    def public_key(self) -> SM2PublicKey:
        if self._pub is None:
            self._pub = SM2PublicKey(self._k)
        return self._pub

    def sign_der(self, message: bytes, uid: bytes = DEFAULT_UID) -> bytes:
        """The DER SM2 signature (SM3 over Z_A||M, random k) of ``message``."""
        L = _L()
        mctx, pctx = self._k._md_ctx(_check_uid(uid))
        try:
            if L.EVP_DigestSignInit(mctx, None, _ossl().sm3, None, self._k._pkey) != 1:
                raise Sm2Error("OpenSSL could not start an SM2 signature")
            buf = ctypes.create_string_buffer(80)
            n = ctypes.c_size_t(80)
            if L.EVP_DigestSign(mctx, buf, ctypes.byref(n), message, len(message)) != 1:
                raise Sm2Error("OpenSSL could not make an SM2 signature")
            return buf.raw[: n.value]
        finally:
            L.EVP_MD_CTX_free(mctx)
            L.EVP_PKEY_CTX_free(pctx)
            L.ERR_clear_error()

    def sign(self, message: bytes, uid: bytes = DEFAULT_UID) -> bytes:
        """The SM2 signature of ``message`` as r||s (64 bytes)."""
        return der_to_rs(self.sign_der(message, uid))

    def __repr__(self) -> str:
        return "SM2PrivateKey(<secret>)"


def _pkcs8(d: int) -> bytes:
    """PKCS#8 PrivateKeyInfo for scalar ``d`` (the public point is left out; OpenSSL derives it)."""
    ec_priv = b"\x02\x01\x01" + b"\x04\x20" + d.to_bytes(32, "big")  # ECPrivateKey {version 1, privateKey}
    ec_priv = b"\x30" + _der_len(len(ec_priv)) + ec_priv
    body = b"\x02\x01\x00" + _ALGID + b"\x04" + _der_len(len(ec_priv)) + ec_priv
    return b"\x30" + _der_len(len(body)) + body


def private_pem(key: SM2PrivateKey) -> bytes:
    """PKCS#8 PEM of ``key`` (as ``openssl genpkey -algorithm SM2`` writes it)."""
    return _pem("PRIVATE KEY", _private_der(key))


def _private_der(key: SM2PrivateKey) -> bytes:
    L = _L()
    bn = ctypes.c_void_p(None)
    if L.EVP_PKEY_get_bn_param(key._k._pkey, b"priv", ctypes.byref(bn)) != 1:
        L.ERR_clear_error()
        raise Sm2Error("OpenSSL could not export the SM2 private key")
    try:
        out = ctypes.create_string_buffer(32)
        if L.BN_bn2binpad(bn, out, 32) != 32:
            raise Sm2Error("SM2 private key does not fit 32 bytes")
        d = int.from_bytes(out.raw, "big")
        ctypes.memset(out, 0, 32)
    finally:
        L.BN_clear_free(bn)
    return _pkcs8(d)
