# Crypto suite 1 (LL1-HS256/64-A128CTR) primitives, MicroPython subset. See docs/protocol.md section 2.
#
# HMAC-SHA256 is written out (ESP32 MicroPython has hashlib.sha256 but no hmac module); AES-CTR is built
# from single-block ECB (ESP32 cryptolib has ECB/CBC only, CTR is compiled out).

import hashlib

try:
    import cryptolib  # type: ignore[import-not-found, unused-ignore]  # ESP32 MicroPython

    def _ecb(key: bytes) -> object:
        return cryptolib.aes(key, 1)  # mode 1 = ECB

except ImportError:
    from . import aes as _aes

    def _ecb(key: bytes) -> object:
        return _aes.AesEcb(key)


SUITE_1 = 1
SUITE_2 = 2  # LL2-HSM3/64-SM4CTR, protocols/crypto_sm.py
SUITE_NAMES = {1: "LL1-HS256/64-A128CTR"}  # suite 2's name: crypto_sm.NAME; all names: suites.NAMES
LABEL_MIC_UP = b"lifeline/1/mic-up"
LABEL_MIC_DOWN = b"lifeline/1/mic-down"
LABEL_ENC = b"lifeline/1/enc"
LABEL_OTA = b"lifeline/1/ota"

def _xor_pad(key: bytes, pad: int) -> bytes:
    out = bytearray(64)
    for i in range(64):
        out[i] = (key[i] if i < len(key) else 0) ^ pad
    return bytes(out)


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 HMAC with SHA-256."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    inner = hashlib.sha256(_xor_pad(key, 0x36))
    inner.update(msg)
    outer = hashlib.sha256(_xor_pad(key, 0x5C))
    outer.update(inner.digest())
    return outer.digest()


def derive(root: bytes, label: bytes, dev_id: bytes, length: int = 32) -> bytes:
    """Per-purpose key: HMAC-SHA256(root, label || device id), truncated to ``length``."""
    return hmac_sha256(root, label + dev_id)[:length]


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison (time depends only on the length)."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def ctr_xor(enc_key: bytes, downlink: bool, dev_id: bytes, fcnt: int, data: bytes, cipher: object = None) -> bytes:
    """AES-128-CTR keystream XOR; encryption and decryption are the same operation.

    Counter block i: 0x01 | dir | device id (8) | fcnt (4, BE) | 0x00 | i. Suite 2 passes its SM4 ``cipher``
    (any object with ``encrypt(block)``): the counter blocks are the same for both suites.
    """
    if len(data) > 255 * 16:
        raise ValueError("CTR input too long")
    if cipher is None:
        cipher = _ecb(enc_key)
    prefix = bytes((1, 1 if downlink else 0)) + dev_id + fcnt.to_bytes(4, "big") + b"\x00"
    out = bytearray(len(data))
    i = 0
    block = 0
    while i < len(data):
        stream = cipher.encrypt(prefix + bytes((block,)))  # type: ignore[attr-defined]
        n = min(16, len(data) - i)
        for j in range(n):
            out[i + j] = data[i + j] ^ stream[j]
        i += n
        block += 1
    return bytes(out)
