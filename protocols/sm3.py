# SM3 hash (GB/T 32905-2016), pure Python in the MicroPython subset. Used by crypto suite 2 (LL2, "sm").
#
# Written for MicroPython on the nodes: the 64 rounds are inlined (a call costs more than the round), the
# rotated round constants are a precomputed table, the message schedule lives in lists reused across
# blocks, words are 16-bit halves (below), and an HMAC's key-pad blocks are absorbed once per key
# (``hmac_pads``), so a frame MIC costs two compressions instead of four. The gateway uses OpenSSL's SM3
# through `cryptography` instead; the tests cross-check both against the standard's examples.

# Every 32-bit word is kept as two 16-bit halves (h, l), so no intermediate value reaches 2^30: on a 32-bit
# MicroPython port an int of 2^30 or more is a heap object, and the plain 32-bit version allocated about
# 130 KB per compression (measured under MicroPython 1.27). A rotation left by n < 16 of (h, l) is
# h' = (h & (2^(16-n) - 1)) << n | l >> (16 - n), l' the same with h and l swapped; by 16 + n it is the
# rotation by n of (l, h). Additions carry from the low half into the high half.

IV = (0x7380166F, 0x4914B2B9, 0x172442D7, 0xDA8A0600, 0xA96F30BC, 0x163138AA, 0xE38DEE4D, 0xB0FB0E4E)
DIGEST_SIZE = 32
BLOCK_SIZE = 64


def _halves(words: tuple) -> tuple:  # type: ignore[type-arg]
    out = []
    for w in words:
        out.append(w >> 16)
        out.append(w & 0xFFFF)
    return tuple(out)


def _rotated_constants() -> tuple:  # type: ignore[type-arg]
    """T_j rotated left by j mod 32, as 128 halves: (high, low) per round."""
    out = []
    for j in range(64):
        t = 0x79CC4519 if j < 16 else 0x7A879D8A
        n = j % 32
        out.append(((t << n) | (t >> (32 - n))) & 0xFFFFFFFF if n else t)
    return _halves(tuple(out))


_IV = _halves(IV)
_T = _rotated_constants()


def _compress(v: list, b: bytes, off: int, wh: list, wl: list) -> None:  # type: ignore[type-arg]
    """Absorb the 64-byte block ``b[off:off + 64]`` into the state ``v`` (16 halves), in place. ``wh`` and
    ``wl`` are 68-entry scratch lists for the message schedule (reused across blocks)."""
    for j in range(16):
        i = off + 4 * j
        wh[j] = (b[i] << 8) | b[i + 1]
        wl[j] = (b[i + 2] << 8) | b[i + 3]
    for j in range(16, 68):
        # x = W[j-16] ^ W[j-9] ^ rotl(W[j-3], 15)
        yh = wh[j - 3]
        yl = wl[j - 3]
        xh = wh[j - 16] ^ wh[j - 9] ^ (((yh & 0x1) << 15) | (yl >> 1))
        xl = wl[j - 16] ^ wl[j - 9] ^ (((yl & 0x1) << 15) | (yh >> 1))
        # W[j] = P1(x) ^ rotl(W[j-13], 7) ^ W[j-6], P1(x) = x ^ rotl(x, 15) ^ rotl(x, 23)
        yh = wh[j - 13]
        yl = wl[j - 13]
        wh[j] = (xh ^ (((xh & 0x1) << 15) | (xl >> 1)) ^ (((xl & 0x1FF) << 7) | (xh >> 9))
                 ^ (((yh & 0x1FF) << 7) | (yl >> 9)) ^ wh[j - 6])
        wl[j] = (xl ^ (((xl & 0x1) << 15) | (xh >> 1)) ^ (((xh & 0x1FF) << 7) | (xl >> 9))
                 ^ (((yl & 0x1FF) << 7) | (yh >> 9)) ^ wl[j - 6])
    ah, al, bh, bl, ch, cl, dh, dl, eh, el, fh, fl, gh, gl, hh, hl = v
    T = _T
    for j in range(64):
        # a12 = rotl(a, 12); ss1 = rotl(a12 + e + T_j, 7); ss2 = ss1 ^ a12
        a12h = ((ah & 0xF) << 12) | (al >> 4)
        a12l = ((al & 0xF) << 12) | (ah >> 4)
        sl = a12l + el + T[2 * j + 1]
        sh = (a12h + eh + T[2 * j] + (sl >> 16)) & 0xFFFF
        sl &= 0xFFFF
        s1h = ((sh & 0x1FF) << 7) | (sl >> 9)
        s1l = ((sl & 0x1FF) << 7) | (sh >> 9)
        if j < 16:
            ffh = ah ^ bh ^ ch
            ffl = al ^ bl ^ cl
            ggh = eh ^ fh ^ gh
            ggl = el ^ fl ^ gl
        else:
            ffh = (ah & bh) | (ah & ch) | (bh & ch)
            ffl = (al & bl) | (al & cl) | (bl & cl)
            ggh = gh ^ (eh & (fh ^ gh))
            ggl = gl ^ (el & (fl ^ gl))
        # tt1 = FF + d + ss2 + (W[j] ^ W[j+4]); tt2 = GG + h + ss1 + W[j]
        xl = ffl + dl + (s1l ^ a12l) + (wl[j] ^ wl[j + 4])
        xh = (ffh + dh + (s1h ^ a12h) + (wh[j] ^ wh[j + 4]) + (xl >> 16)) & 0xFFFF
        yl = ggl + hl + s1l + wl[j]
        yh = (ggh + hh + s1h + wh[j] + (yl >> 16)) & 0xFFFF
        yl &= 0xFFFF
        # d = c; c = rotl(b, 9); b = a; a = tt1
        dh = ch
        dl = cl
        ch = ((bh & 0x7F) << 9) | (bl >> 7)
        cl = ((bl & 0x7F) << 9) | (bh >> 7)
        bh = ah
        bl = al
        ah = xh
        al = xl & 0xFFFF
        # h = g; g = rotl(f, 19); f = e; e = P0(tt2) = tt2 ^ rotl(tt2, 9) ^ rotl(tt2, 17)
        hh = gh
        hl = gl
        gh = ((fl & 0x1FFF) << 3) | (fh >> 13)
        gl = ((fh & 0x1FFF) << 3) | (fl >> 13)
        fh = eh
        fl = el
        eh = yh ^ (((yh & 0x7F) << 9) | (yl >> 7)) ^ (((yl & 0x7FFF) << 1) | (yh >> 15))
        el = yl ^ (((yl & 0x7F) << 9) | (yh >> 7)) ^ (((yh & 0x7FFF) << 1) | (yl >> 15))
    v[0] ^= ah
    v[1] ^= al
    v[2] ^= bh
    v[3] ^= bl
    v[4] ^= ch
    v[5] ^= cl
    v[6] ^= dh
    v[7] ^= dl
    v[8] ^= eh
    v[9] ^= el
    v[10] ^= fh
    v[11] ^= fl
    v[12] ^= gh
    v[13] ^= gl
    v[14] ^= hh
    v[15] ^= hl


def _finish(state: tuple, data: bytes, absorbed: int) -> bytes:  # type: ignore[type-arg]
    """Hash ``data`` starting from ``state`` (16 halves), which has already absorbed ``absorbed`` bytes (a
    multiple of 64); returns the 32-byte digest."""
    v = list(state)
    wh = [0] * 68
    wl = [0] * 68
    n = len(data)
    full = n - n % 64
    for off in range(0, full, 64):
        _compress(v, data, off, wh, wl)
    bits = (absorbed + n) * 8
    tail = bytearray(data[full:])
    tail.append(0x80)
    while len(tail) % 64 != 56:
        tail.append(0)
    tail.extend(bits.to_bytes(8, "big"))
    last = bytes(tail)
    for off in range(0, len(last), 64):
        _compress(v, last, off, wh, wl)
    out = bytearray(32)
    for i in range(16):
        x = v[i]
        out[2 * i] = x >> 8
        out[2 * i + 1] = x & 0xFF
    return bytes(out)


def digest(data: bytes) -> bytes:
    """SM3(data), 32 bytes."""
    return _finish(_IV, data, 0)


def _absorb_block(block: bytes) -> tuple:  # type: ignore[type-arg]
    v = list(_IV)
    _compress(v, block, 0, [0] * 68, [0] * 68)
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
