# SM3 hash (GB/T 32905-2016), pure Python in the MicroPython subset. Used by crypto suite 2 (LL2, "sm").
#
# Written for MicroPython on the nodes: the 64 rounds are inlined (a call costs more than the round), the
# rotated round constants are a precomputed table, the message schedule lives in one list reused across
# blocks, and an HMAC's key-pad blocks are absorbed once per key (``hmac_pads``), so a frame MIC costs two
# compressions instead of four. The gateway uses OpenSSL's SM3 through `cryptography` instead; the tests
# cross-check both against the standard's examples.

_M = 0xFFFFFFFF
IV = (0x7380166F, 0x4914B2B9, 0x172442D7, 0xDA8A0600, 0xA96F30BC, 0x163138AA, 0xE38DEE4D, 0xB0FB0E4E)
DIGEST_SIZE = 32
BLOCK_SIZE = 64


def _rotated_constants() -> tuple:  # type: ignore[type-arg]
    out = []
    for j in range(64):
        t = 0x79CC4519 if j < 16 else 0x7A879D8A
        n = j % 32
        out.append(((t << n) | (t >> (32 - n))) & _M if n else t)
    return tuple(out)


_T = _rotated_constants()


def _compress(v: list, b: bytes, off: int, w: list) -> None:  # type: ignore[type-arg]
    """Absorb the 64-byte block ``b[off:off + 64]`` into the state ``v`` (8 words), in place."""
    M = _M
    for j in range(16):
        i = off + 4 * j
        w[j] = (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]
    for j in range(16, 68):
        x = w[j - 3]
        x = w[j - 16] ^ w[j - 9] ^ (((x << 15) | (x >> 17)) & M)
        y = w[j - 13]
        w[j] = (x ^ (((x << 15) | (x >> 17)) & M) ^ (((x << 23) | (x >> 9)) & M)
                ^ (((y << 7) | (y >> 25)) & M) ^ w[j - 6])
    a, b_, c, d, e, f, g, h = v
    T = _T
    for j in range(64):
        a12 = ((a << 12) | (a >> 20)) & M
        ss1 = (a12 + e + T[j]) & M
        ss1 = ((ss1 << 7) | (ss1 >> 25)) & M
        wj = w[j]
        if j < 16:
            tt1 = ((a ^ b_ ^ c) + d + (ss1 ^ a12) + (wj ^ w[j + 4])) & M
            tt2 = ((e ^ f ^ g) + h + ss1 + wj) & M
        else:
            tt1 = (((a & b_) | (a & c) | (b_ & c)) + d + (ss1 ^ a12) + (wj ^ w[j + 4])) & M
            tt2 = ((g ^ (e & (f ^ g))) + h + ss1 + wj) & M
        d = c
        c = ((b_ << 9) | (b_ >> 23)) & M
        b_ = a
        a = tt1
        h = g
        g = ((f << 19) | (f >> 13)) & M
        f = e
        e = tt2 ^ (((tt2 << 9) | (tt2 >> 23)) & M) ^ (((tt2 << 17) | (tt2 >> 15)) & M)
    v[0] ^= a
    v[1] ^= b_
    v[2] ^= c
    v[3] ^= d
    v[4] ^= e
    v[5] ^= f
    v[6] ^= g
    v[7] ^= h


def _finish(state: tuple, data: bytes, absorbed: int) -> bytes:  # type: ignore[type-arg]
    """Hash ``data`` starting from ``state``, which has already absorbed ``absorbed`` bytes (a multiple of
    64); returns the 32-byte digest."""
    v = list(state)
    w = [0] * 68
    n = len(data)
    full = n - n % 64
    for off in range(0, full, 64):
        _compress(v, data, off, w)
    bits = (absorbed + n) * 8
    tail = bytearray(data[full:])
    tail.append(0x80)
    while len(tail) % 64 != 56:
        tail.append(0)
    tail.extend(bits.to_bytes(8, "big"))
    last = bytes(tail)
    for off in range(0, len(last), 64):
        _compress(v, last, off, w)
    out = bytearray(32)
    for i in range(8):
        x = v[i]
        out[4 * i] = x >> 24
        out[4 * i + 1] = (x >> 16) & 0xFF
        out[4 * i + 2] = (x >> 8) & 0xFF
        out[4 * i + 3] = x & 0xFF
    return bytes(out)


def digest(data: bytes) -> bytes:
    """SM3(data), 32 bytes."""
    return _finish(IV, data, 0)


def _absorb_block(block: bytes) -> tuple:  # type: ignore[type-arg]
    v = list(IV)
    _compress(v, block, 0, [0] * 68)
    return tuple(v)


def hmac_pads(key: bytes) -> tuple:  # type: ignore[type-arg]
    """The SM3 states after the HMAC inner and outer key pads (RFC 2104 with SM3, block size 64): compute
    once per key, then ``hmac_with`` per message."""
    if len(key) > BLOCK_SIZE:
        key = digest(key)
    ipad = bytearray(64)
    opad = bytearray(64)
    for i in range(64):
        k = key[i] if i < len(key) else 0
        ipad[i] = k ^ 0x36
        opad[i] = k ^ 0x5C
    return (_absorb_block(bytes(ipad)), _absorb_block(bytes(opad)))


def hmac_with(pads: tuple, msg: bytes) -> bytes:  # type: ignore[type-arg]
    return _finish(pads[1], _finish(pads[0], msg, 64), 64)


def hmac(key: bytes, msg: bytes) -> bytes:
    """HMAC-SM3(key, msg), 32 bytes."""
    return hmac_with(hmac_pads(key), msg)
