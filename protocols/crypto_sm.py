# Crypto suite 2 (LL2-HSM3/64-SM4CTR, "sm") primitives, MicroPython subset. See docs/protocol.md section 2.
#
# The same construction as suite 1 with the national commercial algorithms in place of the international
# ones: HMAC-SM3 (GB/T 32905) for key derivation and the 64-bit MIC, SM4 (GB/T 32907) in CTR mode built from
# single-block encryption, with suite 1's counter blocks and nonce rules, encrypt-then-MAC.

from . import crypto, sm3, sm4

SUITE = crypto.SUITE_2
NAME = "LL2-HSM3/64-SM4CTR"

LABEL_MIC_UP = b"lifeline/2/mic-up"
LABEL_MIC_DOWN = b"lifeline/2/mic-down"
LABEL_ENC = b"lifeline/2/enc"
LABEL_OTA = b"lifeline/2/ota"


def hmac_sm3(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 HMAC with SM3 (block 64 bytes, output 32)."""
    return sm3.hmac(key, msg)


def derive(root: bytes, label: bytes, dev_id: bytes, length: int = 32, pads: object = None) -> bytes:
    """Per-purpose key: HMAC-SM3(root, label || device id), truncated to ``length``. ``pads``: the root
    key's ``sm3.hmac_pads``, when the caller derives several keys."""
    if pads is None:
        pads = sm3.hmac_pads(root)
    return sm3.hmac_with(pads, label + dev_id)[:length]  # type: ignore[arg-type]


def derive_keys(keys: object, root: bytes) -> None:
    """Fill a frame.Keys of suite 2 (``keys.dev_id`` set) with the per-purpose keys of ``root`` (the root
    key's pad blocks are absorbed once for the three keys: 8 SM3 compressions instead of 12, every wake)."""
    dev_id = keys.dev_id  # type: ignore[attr-defined]
    pads = sm3.hmac_pads(root)
    keys.mic_up = derive(root, LABEL_MIC_UP, dev_id, 32, pads)  # type: ignore[attr-defined]
    keys.mic_down = derive(root, LABEL_MIC_DOWN, dev_id, 32, pads)  # type: ignore[attr-defined]
    keys.enc = derive(root, LABEL_ENC, dev_id, 16, pads)  # type: ignore[attr-defined]
    keys.cipher = sm4.Sm4Ecb(keys.enc)  # type: ignore[attr-defined]


def mic(keys: object, downlink: bool, msg: bytes) -> bytes:
    """HMAC-SM3(K_mic_dir, msg), 32 bytes; the key's pad states are kept on ``keys`` after the first use, so
    a frame costs two SM3 compressions (three when header + body exceed 55 bytes) instead of four."""
    attr = "_sm_down" if downlink else "_sm_up"
    pads = getattr(keys, attr, None)
    if pads is None:
        pads = sm3.hmac_pads(getattr(keys, "mic_down" if downlink else "mic_up"))
        setattr(keys, attr, pads)
    return sm3.hmac_with(pads, msg)


def ctr_xor(enc_key: bytes, downlink: bool, dev_id: bytes, fcnt: int, data: bytes) -> bytes:
    """SM4-CTR keystream XOR with suite 1's counter blocks: 0x01 | dir | device id | fcnt | 0x00 | i."""
    return crypto.ctr_xor(b"", downlink, dev_id, fcnt, data, sm4.Sm4Ecb(enc_key))
