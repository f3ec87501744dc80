"""Regenerate protocols/vectors/{frames,rejections,cbor,sm,rekey}.json.

Run only when the protocol changes on purpose (the vectors are normative; tests compare against the
committed files): .venv/bin/python protocols/tests/gen_vectors.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from lifeline.protocols import cbor, crypto, crypto_sm, frame, frame_sizes, schema, schema_table, suites

OUT = Path(__file__).resolve().parent.parent / "vectors"
ROOT_A = bytes(range(32))
DEV_A = bytes.fromhex("70b3d57ed0000001")
ROOT_B = bytes.fromhex("c0ffee00" * 8)
DEV_B = bytes.fromhex("0004a30b001c2f3e")


def jfields(fields: dict[int, Any]) -> dict[str, Any]:
    return {str(k): ({"bytes": v.hex()} if isinstance(v, bytes) else v) for k, v in fields.items()}


TYPICAL: dict[int, dict[int, Any]] = {
    schema.K_SMOKE: {1: 0, 2: 12, 3: 0, 4: 0, 5: 215, 15: 3010},
    schema.K_TILT: {1: 7, 2: 0, 3: 42, 5: 118, 15: 3590},
    schema.K_WATER_LEVEL: {1: 312, 2: 85, 3: 0, 15: 3400},
    schema.K_WATER_METER: {1: 1234567, 2: 0, 3: 0, 15: 3550},
    schema.K_GAS_METER: {1: 98765, 2: 120, 3: 0, 15: 3300},
    schema.K_ELECTRICITY_METER: {1: 4567890, 2: -1500, 3: 2, 4: 2301},
    schema.K_HEARTBEAT: {1: 1440, 2: 3, 3: 104, 4: -97, 5: -7, 6: 0, 15: 3300},
    schema.K_FAULT: {1: 1, 2: 513, 15: 3300},
    schema.K_ALARM_RAISED: {1: 17, 2: 0, 3: 1480},
    schema.K_ALARM_CLEARED: {1: 17, 2: 0, 3: 30},
    schema.C_ACK: {1: 4242, 2: 17, 3: 1},
    schema.C_CONFIG: {1: 3, 2: 900, 3: 300, 4: 250, 5: 1440, 6: 3},
    schema.C_TIME_SYNC: {1: 218000000},
    schema.C_MAINTENANCE: {1: 600, 2: 1},
    schema.C_OTA_BEGIN: {1: 105, 2: 61234, 3: 3828},
    schema.C_OTA_CHUNK: {1: 77, 2: bytes(range(16))},
    schema_table.K_REKEY_CONFIRM: {1: 3},
    schema_table.C_REKEY: {1: 3, 2: bytes(range(100, 116))},
}


def flags_for(kind: int, extra: int = 0) -> int:
    return (frame.FLAG_DOWN if schema.is_downlink_kind(kind) else 0) | extra


INTL = frame.SUITE_INTL
SM = frame.SUITE_SM


def frame_vector(name: str, root: bytes, dev: bytes, fcnt: int, time: int, kind: int,
                 fields: dict[int, Any], flags: int, suite: int = INTL) -> dict[str, Any]:
    data = frame.encode(frame.derive_keys(root, dev, suite), dev, fcnt, time, kind, fields, flags)
    out = {"name": name, "root_key": root.hex(), "dev_id": dev.hex(), "fcnt": fcnt, "time": time, "kind": kind,
           "flags": flags, "fields": jfields(fields), "frame": data.hex()}
    if suite != INTL:
        out["suite"] = suites.LABELS[suite]
    return out


def seal(root: bytes, dev: bytes, kind: int, flags: int, body: bytes, fcnt: int = 9, time: int = 1000,
         first: int = 0x11, encrypt: bool = False, suite: int = INTL, mic_suite: int | None = None) -> bytes:
    """A frame built by hand: header byte ``first``, body encrypted under ``suite`` if asked, MIC'd with the
    algorithm and keys of ``mic_suite`` (default: ``suite``)."""
    keys = frame.derive_keys(root, dev, suite)
    down = bool(flags & frame.FLAG_DOWN)
    if encrypt:
        body = crypto.ctr_xor(keys.enc, down, dev, fcnt, body, keys.cipher)
    msg = bytes((first, kind, flags)) + dev + fcnt.to_bytes(4, "big") + time.to_bytes(4, "big") + body
    mic_keys = keys if mic_suite is None else frame.derive_keys(root, dev, mic_suite)
    return msg + frame.compute_mic(mic_keys, down, msg)


def rejection(name: str, data: bytes, reason: str, downlink: bool = False, suite: int = INTL,
              allowed: tuple[int, ...] | None = None) -> dict[str, Any]:
    """A frame the receiver (device A of ``suite``, allowing ``allowed`` suites) must reject with ``reason``.
    The vector names the device's suite and the allowed list only when they differ from the defaults."""
    keys = frame.derive_keys(ROOT_A, DEV_A, suite)
    try:
        frame.decode(data, keys, downlink, allowed)
    except frame.FrameError as e:
        assert e.reason == reason, (name, e.reason, reason)
    else:
        raise AssertionError(name + " was accepted")
    out: dict[str, Any] = {"name": name, "root_key": ROOT_A.hex(), "dev_id": DEV_A.hex(), "downlink": downlink,
                           "frame": data.hex(), "reason": reason}
    if suite != INTL:
        out["suite"] = suites.LABELS[suite]
    if allowed is not None:
        out["allowed"] = [suites.LABELS[a] for a in allowed]
    return out


# The standards' own examples (GB/T 32905-2016 appendix A, GB/T 32907-2016 appendix A).
SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
SM3_ABCD16 = "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
SM4_KEY = "0123456789abcdeffedcba9876543210"
SM4_CT = "681edf34d206965e86b3e94f536e4246"


def _sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


def _hmac_sm3(key: bytes, msg: bytes) -> bytes:
    h = chmac.HMAC(key, hashes.SM3())
    h.update(msg)
    return h.finalize()


def _sm4(key: bytes, data: bytes) -> bytes:
    return Cipher(algorithms.SM4(key), modes.ECB()).encryptor().update(data)


def rekey_vectors() -> list[dict[str, Any]]:
    """The re-key KDF of both suites (docs/keys.md), expected values from OpenSSL's HMAC-SHA256 / HMAC-SM3:
    HMAC(root, "lifeline/<suite>/rekey" || device id || epoch (2, BE) || seed)."""
    out = []
    for suite, label, mac in ((INTL, b"lifeline/1/rekey", "sha256"), (SM, b"lifeline/2/rekey", "sm3")):
        for root, dev, epoch, seed in ((ROOT_A, DEV_A, 1, bytes(16)), (ROOT_B, DEV_B, 65535, bytes(range(16)))):
            msg = label + dev + epoch.to_bytes(2, "big") + seed
            if mac == "sm3":
                pending = _hmac_sm3(root, msg)
            else:
                h = chmac.HMAC(root, hashes.SHA256())
                h.update(msg)
                pending = h.finalize()
            out.append({"name": "%s-%s-%d" % (suites.LABELS[suite], dev.hex(), epoch), "suite": suites.LABELS[suite],
                        "root_key": root.hex(), "dev_id": dev.hex(), "epoch": epoch, "seed": seed.hex(),
                        "pending": pending.hex()})
    return out


def sm_vectors() -> dict[str, list[dict[str, Any]]]:
    """SM3, SM4, HMAC-SM3, the suite-2 KDF and SM4-CTR, expected values from the standards and from OpenSSL
    (through `cryptography`), never from Lifeline's own code: the device code is checked against these."""
    assert _sm3(b"abc").hex() == SM3_ABC and _sm3(b"abcd" * 16).hex() == SM3_ABCD16
    assert _sm4(bytes.fromhex(SM4_KEY), bytes.fromhex(SM4_KEY)).hex() == SM4_CT
    sm3v = [{"name": "gbt32905-a1-abc", "msg": b"abc".hex(), "digest": SM3_ABC},
            {"name": "gbt32905-a2-abcd*16", "msg": (b"abcd" * 16).hex(), "digest": SM3_ABCD16}]
    for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 200):  # every padding case
        msg = bytes((i * 7 + n) & 0xFF for i in range(n))
        sm3v.append({"name": "openssl-len-%d" % n, "msg": msg.hex(), "digest": _sm3(msg).hex()})
    sm4v = [{"name": "gbt32907-a1", "key": SM4_KEY, "plaintext": SM4_KEY, "ciphertext": SM4_CT}]
    for i in range(4):
        key = bytes((i * 31 + j * 17) & 0xFF for j in range(16))
        pt = bytes((i * 13 + j * 101) & 0xFF for j in range(16 * (i + 1)))
        sm4v.append({"name": "openssl-%d" % i, "key": key.hex(), "plaintext": pt.hex(),
                     "ciphertext": _sm4(key, pt).hex()})
    hmacv = []
    for klen, mlen in ((0, 0), (16, 3), (32, 43), (64, 64), (65, 100), (100, 1)):
        key = bytes((j * 3 + klen) & 0xFF for j in range(klen))
        msg = bytes((j * 5 + mlen) & 0xFF for j in range(mlen))
        hmacv.append({"name": "openssl-k%d-m%d" % (klen, mlen), "key": key.hex(), "msg": msg.hex(),
                      "mac": _hmac_sm3(key, msg).hex()})
    kdfv = []
    for root, dev in ((ROOT_A, DEV_A), (ROOT_B, DEV_B)):
        row = {"name": "kdf-" + dev.hex(), "root_key": root.hex(), "dev_id": dev.hex()}
        for purpose, label, n in (("mic_up", crypto_sm.LABEL_MIC_UP, 32), ("mic_down", crypto_sm.LABEL_MIC_DOWN, 32),
                                  ("enc", crypto_sm.LABEL_ENC, 16), ("ota", crypto_sm.LABEL_OTA, 32)):
            row[purpose] = _hmac_sm3(root, label + dev)[:n].hex()
        kdfv.append(row)
    ctrv = []
    for down, fcnt, n in ((False, 0, 1), (True, 0xFFFFFFFF, 16), (False, 4242, 33)):
        key = _hmac_sm3(ROOT_A, crypto_sm.LABEL_ENC + DEV_A)[:16]
        data = bytes((j * 11) & 0xFF for j in range(n))
        nonce = bytes((1, int(down))) + DEV_A + fcnt.to_bytes(4, "big") + b"\x00\x00"
        out = Cipher(algorithms.SM4(key), modes.CTR(nonce)).encryptor().update(data)
        ctrv.append({"name": "ctr-%s-%d-%d" % ("down" if down else "up", fcnt, n), "key": key.hex(),
                     "downlink": down, "dev_id": DEV_A.hex(), "fcnt": fcnt, "data": data.hex(), "out": out.hex()})
    return {"sm3": sm3v, "sm4": sm4v, "hmac_sm3": hmacv, "kdf": kdfv, "sm4_ctr": ctrv}


def main() -> None:
    frames = []
    for kind, fields in TYPICAL.items():
        name = schema.KINDS[kind][0]
        frames.append(frame_vector(name + "/typical", ROOT_A, DEV_A, 4242, 218000000, kind, fields,
                                   flags_for(kind, frame.FLAG_ACK_REQ if kind == schema.K_ALARM_RAISED else 0)))
        frames.append(frame_vector(name + "/max", ROOT_B, DEV_B, 0xFFFFFFFF, 0xFFFFFFFF, kind,
                                   frame_sizes.max_fields(kind), flags_for(kind)))
    frames.append(frame_vector("water_level/queued+test", ROOT_B, DEV_B, 0, 0, schema.K_WATER_LEVEL,
                               {1: 0}, frame.FLAG_QUEUED | frame.FLAG_TEST))
    frames.append(frame_vector("heartbeat/encrypted-by-choice", ROOT_A, DEV_A, 77, 5, schema.K_HEARTBEAT,
                               {1: 2}, frame.FLAG_ENC))
    # suite 2 (sm): every kind typical and at its maximum, same devices and counters as suite 1
    for kind, fields in TYPICAL.items():
        name = "sm/" + schema.KINDS[kind][0]
        frames.append(frame_vector(name + "/typical", ROOT_A, DEV_A, 4242, 218000000, kind, fields,
                                   flags_for(kind, frame.FLAG_ACK_REQ if kind == schema.K_ALARM_RAISED else 0),
                                   SM))
        frames.append(frame_vector(name + "/max", ROOT_B, DEV_B, 0xFFFFFFFF, 0xFFFFFFFF, kind,
                                   frame_sizes.max_fields(kind), flags_for(kind), SM))
    frames.append(frame_vector("sm/heartbeat/encrypted-by-choice", ROOT_A, DEV_A, 77, 5, schema.K_HEARTBEAT,
                               {1: 2}, frame.FLAG_ENC, SM))

    good = bytes.fromhex(frames[0]["frame"])  # smoke/typical, root A
    level = frame.encode(frame.derive_keys(ROOT_A, DEV_A), DEV_A, 9, 1000, schema.K_WATER_LEVEL, {1: 5})
    down_ack = frame.encode(frame.derive_keys(ROOT_A, DEV_A), DEV_A, 9, 1000, schema.C_ACK, {1: 1},
                            frame.FLAG_DOWN)
    forged = bytearray(good)
    forged[-1] ^= 1
    tampered = bytearray(good)
    tampered[frame.HEADER_LEN] ^= 0x40
    w = schema.K_WATER_LEVEL
    sm_level = frame.encode(frame.derive_keys(ROOT_A, DEV_A, SM), DEV_A, 9, 1000, w, {1: 5})
    sm_forged = bytearray(sm_level)
    sm_forged[-1] ^= 1
    rejections = [
        rejection("empty", b"", "truncated"),
        rejection("header-only", good[:19], "truncated"),
        rejection("oversized", good + bytes(256 - len(good)), "too_long"),
        rejection("version-2", bytes((0x21,)) + good[1:], "bad_version"),
        rejection("suite-9", bytes((0x19,)) + good[1:], "bad_suite"),
        rejection("reserved-flag", good[:2] + bytes((0x10,)) + good[3:], "bad_flags"),
        rejection("downlink-as-uplink", down_ack, "bad_direction"),
        rejection("uplink-as-downlink", level, "bad_direction", downlink=True),
        rejection("forged-mic", bytes(forged), "bad_mic"),
        rejection("tampered-body", bytes(tampered), "bad_mic"),
        rejection("wrong-device", seal(ROOT_A, DEV_B, w, 0, b"\xa1\x01\x05"), "bad_mic"),
        rejection("bad-cbor-float", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\xf9\x3c\x00"), "bad_cbor"),
        rejection("bad-cbor-indefinite", seal(ROOT_A, DEV_A, w, 0, b"\xbf\x01\x05\xff"), "bad_cbor"),
        rejection("bad-cbor-truncated", seal(ROOT_A, DEV_A, w, 0, b"\xa2\x01\x05"), "bad_cbor"),
        rejection("bad-cbor-duplicate-key", seal(ROOT_A, DEV_A, w, 0, b"\xa2\x01\x05\x01\x06"), "bad_cbor"),
        rejection("bad-cbor-tag", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\xc1\x05"), "bad_cbor"),
        rejection("too-deep", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\x81\x81\x81\x05"), "too_deep"),
        rejection("trailing-bytes", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\x05\x00"), "trailing_bytes"),
        rejection("not-a-map", seal(ROOT_A, DEV_A, w, 0, b"\x05"), "bad_type"),
        rejection("unknown-kind", seal(ROOT_A, DEV_A, 42, 0, b"\xa1\x01\x05"), "unknown_kind"),
        rejection("command-kind-uplink", seal(ROOT_A, DEV_A, schema.C_ACK, 0, b"\xa1\x01\x05"), "unknown_kind"),
        rejection("unknown-field", seal(ROOT_A, DEV_A, w, 0, b"\xa2\x01\x05\x09\x01"), "unknown_field"),
        rejection("bad-type-bytes", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\x41\x05"), "bad_type"),
        rejection("bad-type-bool", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\xf5"), "bad_type"),
        rejection("out-of-range", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\x19\x4e\x21"), "out_of_range"),
        rejection("negative-level", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\x20"), "out_of_range"),
        rejection("missing-field", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x02\x05"), "missing_field"),
        rejection("meter-in-clear", seal(ROOT_A, DEV_A, schema.K_WATER_METER, 0, b"\xa1\x01\x05"),
                  "not_encrypted"),
        # suite 2 (sm) and the suite checks
        rejection("suite-3", bytes((0x13,)) + good[1:], "bad_suite"),
        rejection("sm-frame-for-intl-device", sm_level, "wrong_suite"),
        rejection("intl-frame-for-sm-device", level, "wrong_suite", suite=SM),
        rejection("sm-frame-sm-not-allowed", sm_level, "suite_not_allowed", suite=SM, allowed=(INTL,)),
        rejection("intl-frame-intl-not-allowed", level, "suite_not_allowed", allowed=(SM,)),
        rejection("sm-forged-mic", bytes(sm_forged), "bad_mic", suite=SM),
        rejection("sm-header-hmac-sha256-mic", seal(ROOT_A, DEV_A, w, 0, b"\xa1\x01\x05", first=0x12,
                                                     suite=SM, mic_suite=INTL), "bad_mic", suite=SM),
        rejection("rekey-in-clear", seal(ROOT_A, DEV_A, schema_table.C_REKEY, frame.FLAG_DOWN,
                                         b"\xa2\x01\x03\x02\x50" + bytes(16)), "not_encrypted", downlink=True),
        rejection("sm-rekey-confirm-in-clear", seal(ROOT_A, DEV_A, schema_table.K_REKEY_CONFIRM, 0, b"\xa1\x01\x03",
                                                    first=0x12, suite=SM), "not_encrypted", suite=SM),
        rejection("sm-meter-in-clear", seal(ROOT_A, DEV_A, schema.K_WATER_METER, 0, b"\xa1\x01\x05", first=0x12,
                                            suite=SM), "not_encrypted", suite=SM),
        rejection("sm-encrypted-trailing-bytes", seal(ROOT_A, DEV_A, w, frame.FLAG_ENC, b"\xa1\x01\x05\x00",
                                                      first=0x12, encrypt=True, suite=SM),
                  "trailing_bytes", suite=SM),
    ]

    values: list[tuple[str, Any]] = [
        ("zero", 0), ("23", 23), ("24", 24), ("255", 255), ("256", 256), ("65535", 65535), ("65536", 65536),
        ("u32max", 0xFFFFFFFF), ("u32+1", 0x100000000), ("u64max", 0xFFFFFFFFFFFFFFFF), ("minus1", -1),
        ("minus24", -24), ("minus25", -25), ("i32min", -(2**31)), ("i64min", -(2**64)),
        ("bytes-empty", b""), ("bytes", bytes(range(30))), ("text", "Lifeline ✓"), ("false", False),
        ("true", True), ("null", None), ("array", [1, [2, 3], b"\x04"]),
        ("map-sorted", {10: 1, 2: 2, -1: 3, 1: {"a": [True]}}),
    ]

    def jval(v: Any) -> Any:
        if isinstance(v, bytes):
            return {"bytes": v.hex()}
        if isinstance(v, list):
            return [jval(x) for x in v]
        if isinstance(v, dict):
            return {"map": [[jval(k), jval(x)] for k, x in v.items()]}
        return v

    cbor_vectors = [{"name": n, "value": jval(v), "hex": cbor.dumps(v).hex()} for n, v in values]

    for name, obj in (("frames", frames), ("rejections", rejections), ("cbor", cbor_vectors),
                      ("sm", sm_vectors()), ("rekey", rekey_vectors())):
        (OUT / (name + ".json")).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
