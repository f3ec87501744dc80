# SM4 block cipher (GB/T 32907-2016), encryption direction only, pure Python in the MicroPython subset.
#
# Crypto suite 2 (LL2, "sm") builds SM4-CTR from single-block encryption exactly as suite 1 builds AES-CTR, so
# decryption is never needed. Same shape as aes.AesEcb (``encrypt(block)``). The gateway uses OpenSSL's SM4
# through `cryptography`; the tests cross-check both against the standard's examples.

SBOX = bytes.fromhex(
    "d690e9fecce13db716b614c228fb2c052b679a762abe04c3aa44132649860699"
    "9c4250f491ef987a33540b43edcfac62e4b31ca9c908e89580df94fa758f3fa6"
    "4707a7fcf37317ba83593c19e6854fa8686b81b27164da8bf8eb0f4b70569d35"
    "1e240e5e6358d1a225227c3b01217887d40046579fd327524c3602e7a0c4c89e"
    "eabf8ad240c738b5a3f7f2cef96115a1e0ae5da49b341a55ad933230f58cb1e3"
    "1df6e22e8266ca60c02923ab0d534e6fd5db3745defd8e2f03ff6a726d6c5b51"
    "8d1baf92bbddbc7f11d95c411f105ad80ac13188a5cd7bbd2d74d012b8e5b4b0"
    "8969974a0c96777e65b9f109c56ec68418f07dec3adc4d2079ee5f3ed7cb3948"
)

# FK and CK (GB/T 32907 section 7.3) as 16-bit halves (high, low): CK[i] byte j is (4i + j) * 7 mod 256.
_FK = (0xA3B1, 0xBAC6, 0x56AA, 0x3350, 0x677D, 0x9197, 0xB270, 0x22DC)


def _ck() -> tuple:  # type: ignore[type-arg]
    out = []
    for i in range(32):
        b = [((4 * i + j) * 7) & 0xFF for j in range(4)]
        out.append((b[0] << 8) | b[1])
        out.append((b[2] << 8) | b[3])
    return tuple(out)


_CK = _ck()


def expand_key_halves(key: bytes) -> tuple:  # type: ignore[type-arg]
    """The 32 round keys of a 16-byte key as 64 16-bit halves (high, low per round), for
    :func:`encrypt_block`. Same halves arithmetic as there (no int reaches 2^30)."""
    if len(key) != 16:
        raise ValueError("SM4 key must be 16 bytes")
    S = SBOX
    CK = _CK
    k = [((key[2 * i] << 8) | key[2 * i + 1]) ^ _FK[i] for i in range(8)]  # K0..K3 as halves
    for i in range(0, 64, 2):
        xh = k[i + 2] ^ k[i + 4] ^ k[i + 6] ^ CK[i]
        xl = k[i + 3] ^ k[i + 5] ^ k[i + 7] ^ CK[i + 1]
        th = (S[xh >> 8] << 8) | S[xh & 0xFF]
        tl = (S[xl >> 8] << 8) | S[xl & 0xFF]
        # L'(t) = t ^ rotl(t, 13) ^ rotl(t, 23)
        k.append(k[i] ^ th ^ (((th & 0x7) << 13) | (tl >> 3)) ^ (((tl & 0x1FF) << 7) | (th >> 9)))
        k.append(k[i + 1] ^ tl ^ (((tl & 0x7) << 13) | (th >> 3)) ^ (((th & 0x1FF) << 7) | (tl >> 9)))
    return tuple(k[8:])


def expand_key(key: bytes) -> tuple:  # type: ignore[type-arg]
    """The 32 round keys as 32-bit words (as the standard lists them; host tests)."""
    h = expand_key_halves(key)
    return tuple((h[i] << 16) | h[i + 1] for i in range(0, 64, 2))


def encrypt_block(rkh: tuple, block: bytes, off: int = 0) -> bytes:  # type: ignore[type-arg]
    """Encrypt the 16 bytes at ``block[off:]`` with round keys ``rkh`` (:func:`expand_key_halves`).

    Words are 16-bit halves (h, l) so that no value reaches 2^30 (a heap object on a 32-bit MicroPython port):
    rotl(t, n) for n < 16 is (h & (2^(16-n) - 1)) << n | l >> (16 - n) for the high half, h and l swapped for
    the low half; rotl(t, 16 + n) is rotl((l, h), n)."""
    S = SBOX
    b = block
    x0h = (b[off] << 8) | b[off + 1]
    x0l = (b[off + 2] << 8) | b[off + 3]
    x1h = (b[off + 4] << 8) | b[off + 5]
    x1l = (b[off + 6] << 8) | b[off + 7]
    x2h = (b[off + 8] << 8) | b[off + 9]
    x2l = (b[off + 10] << 8) | b[off + 11]
    x3h = (b[off + 12] << 8) | b[off + 13]
    x3l = (b[off + 14] << 8) | b[off + 15]
    for i in range(0, 64, 2):
        xh = x1h ^ x2h ^ x3h ^ rkh[i]
        xl = x1l ^ x2l ^ x3l ^ rkh[i + 1]
        th = (S[xh >> 8] << 8) | S[xh & 0xFF]
        tl = (S[xl >> 8] << 8) | S[xl & 0xFF]
        # L(t) = t ^ rotl(t, 2) ^ rotl(t, 10) ^ rotl(t, 18) ^ rotl(t, 24)
        yh = (x0h ^ th ^ (((th & 0x3FFF) << 2) | (tl >> 14)) ^ (((th & 0x3F) << 10) | (tl >> 6))
              ^ (((tl & 0x3FFF) << 2) | (th >> 14)) ^ (((tl & 0xFF) << 8) | (th >> 8)))
        yl = (x0l ^ tl ^ (((tl & 0x3FFF) << 2) | (th >> 14)) ^ (((tl & 0x3F) << 10) | (th >> 6))
              ^ (((th & 0x3FFF) << 2) | (tl >> 14)) ^ (((th & 0xFF) << 8) | (tl >> 8)))
        x0h = x1h
        x0l = x1l
        x1h = x2h
        x1l = x2l
        x2h = x3h
        x2l = x3l
        x3h = yh
        x3l = yl
    out = bytearray(16)
    i = 0
    for x in (x3h, x3l, x2h, x2l, x1h, x1l, x0h, x0l):
        out[i] = x >> 8
        out[i + 1] = x & 0xFF
        i += 2
    return bytes(out)


class Sm4Ecb:
    """Same shape as aes.AesEcb / ``cryptolib.aes(key, 1)``: ``encrypt(data)`` for whole blocks."""

    def __init__(self, key: bytes) -> None:
        self._rk = expand_key_halves(key)

    def encrypt(self, data: bytes) -> bytes:
        if len(data) % 16:
            raise ValueError("ECB input must be a multiple of 16 bytes")
        if len(data) == 16:
            return encrypt_block(self._rk, data)
        out = bytearray()
        for i in range(0, len(data), 16):
            out.extend(encrypt_block(self._rk, data, i))
        return bytes(out)
