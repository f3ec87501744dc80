# AES-128 single-block encryption (FIPS-197), pure Python in the MicroPython subset.
#
# Used where no hardware/C AES exists: the MicroPython WebAssembly build in CI has no `cryptolib`.
# On ESP32 nodes `cryptolib.aes(key, 1)` (ECB) is used instead and on the gateway the `cryptography`
# package; tests cross-check all of them against the FIPS-197 vectors. Only encryption is needed:
# Lifeline builds CTR mode from single-block encryption.

_SBOX = bytes.fromhex(
    "637c777bf26b6fc53001672bfed7ab76ca82c97dfa5947f0add4a2af9ca472c0"
    "b7fd9326363ff7cc34a5e5f171d8311504c723c31896059a071280e2eb27b275"
    "09832c1a1b6e5aa0523bd6b329e32f8453d100ed20fcb15b6acbbe394a4c58cf"
    "d0efaafb434d338545f9027f503c9fa851a3408f929d38f5bcb6da2110fff3d2"
    "cd0c13ec5f974417c4a77e3d645d197360814fdc222a908846eeb814de5e0bdb"
    "e0323a0a4906245cc2d3ac629195e479e7c8376d8dd54ea96c56f4ea657aae08"
    "ba78252e1ca6b4c6e8dd741f4bbd8b8a703eb5664803f60e613557b986c11d9e"
    "e1f8981169d98e949b1e87e9ce5528df8ca1890dbfe6426841992d0fb054bb16"
)

_RCON = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36)


def _xtime(a: int) -> int:
    a <<= 1
    if a & 0x100:
        a ^= 0x11B
    return a


def expand_key(key: bytes) -> list:  # type: ignore[type-arg]
    """AES-128 key schedule: 11 round keys of 16 bytes (as bytearrays)."""
    if len(key) != 16:
        raise ValueError("AES-128 key must be 16 bytes")
    w = bytearray(key)
    sbox = _SBOX
    i = 16
    r = 0
    while i < 176:
        t0 = w[i - 4]
        t1 = w[i - 3]
        t2 = w[i - 2]
        t3 = w[i - 1]
        if i % 16 == 0:
            t0, t1, t2, t3 = sbox[t1] ^ _RCON[r], sbox[t2], sbox[t3], sbox[t0]
            r += 1
        w.append(w[i - 16] ^ t0)
        w.append(w[i - 15] ^ t1)
        w.append(w[i - 14] ^ t2)
        w.append(w[i - 13] ^ t3)
        i += 4
    return [w[j : j + 16] for j in range(0, 176, 16)]


def encrypt_block(round_keys: list, block: bytes) -> bytes:  # type: ignore[type-arg]
    """Encrypt one 16-byte block with an expanded key."""
    sbox = _SBOX
    s = bytearray(16)
    rk = round_keys[0]
    for i in range(16):
        s[i] = block[i] ^ rk[i]
    for rnd in range(1, 11):
        # SubBytes + ShiftRows (state is column-major: s[r + 4c])
        t = bytearray(16)
        for c in range(4):
            for r in range(4):
                t[r + 4 * c] = sbox[s[r + 4 * ((c + r) % 4)]]
        if rnd < 10:
            # MixColumns
            for c in range(4):
                i = 4 * c
                a0 = t[i]
                a1 = t[i + 1]
                a2 = t[i + 2]
                a3 = t[i + 3]
                x = a0 ^ a1 ^ a2 ^ a3
                t[i] = a0 ^ x ^ _xtime(a0 ^ a1)
                t[i + 1] = a1 ^ x ^ _xtime(a1 ^ a2)
                t[i + 2] = a2 ^ x ^ _xtime(a2 ^ a3)
                t[i + 3] = a3 ^ x ^ _xtime(a3 ^ a0)
        rk = round_keys[rnd]
        for i in range(16):
            s[i] = t[i] ^ rk[i]
    return bytes(s)


class AesEcb:
    """Same shape as the part of `cryptolib.aes(key, 1)` Lifeline uses: ``encrypt(block)``."""

    def __init__(self, key: bytes) -> None:
        self._rk = expand_key(key)

    def encrypt(self, block: bytes) -> bytes:
        if len(block) % 16:
            raise ValueError("ECB input must be a multiple of 16 bytes")
        if len(block) == 16:
            return encrypt_block(self._rk, block)
        out = bytearray()
        for i in range(0, len(block), 16):
            out.extend(encrypt_block(self._rk, block[i : i + 16]))
        return bytes(out)
