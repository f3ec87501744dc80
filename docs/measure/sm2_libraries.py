"""How the SM2 library was chosen (docs/protocol.md section 5.1a): sign/verify rates of the candidates.

Not part of the package and not run by the tests: the candidates are not dependencies. Run it in a scratch
virtual environment beside the checkout:

    python3 -m venv /tmp/smbench
    /tmp/smbench/bin/pip install cryptography gmssl tongsuopy gmalglib smcryptopy
    /tmp/smbench/bin/python docs/measure/sm2_libraries.py 6000

It loads the system libcrypto (OpenSSL 3) the same way lifeline/protocols/sm2.py does, and times each
candidate for 1.5 s (pure-Python ones 3 s) on one message of the given size, SM3 and the default user id.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

UID = b"1234567812345678"


def rate(fn: Callable[[], object], secs: float = 1.5) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < secs:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def openssl(msg: bytes) -> tuple[float, float]:
    lib: Any = ctypes.CDLL(ctypes.util.find_library("crypto"))
    p = ctypes.c_void_p
    lib.EVP_PKEY_Q_keygen.restype = p
    lib.EVP_PKEY_Q_keygen.argtypes = [p, p, ctypes.c_char_p]
    for name in ("EVP_MD_CTX_new", "EVP_PKEY_CTX_new_from_pkey", "EVP_sm3"):
        getattr(lib, name).restype = p
    lib.EVP_PKEY_CTX_new_from_pkey.argtypes = [p, p, p]
    lib.EVP_PKEY_CTX_set1_id.argtypes = [p, p, ctypes.c_int]
    lib.EVP_MD_CTX_set_pkey_ctx.argtypes = [p, p]
    lib.EVP_MD_CTX_free.argtypes = [p]
    lib.EVP_PKEY_CTX_free.argtypes = [p]
    lib.EVP_DigestSignInit.argtypes = [p, p, p, p, p]
    lib.EVP_DigestSign.argtypes = [p, p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, ctypes.c_size_t]
    lib.EVP_DigestVerifyInit.argtypes = [p, p, p, p, p]
    lib.EVP_DigestVerify.argtypes = [p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    key = lib.EVP_PKEY_Q_keygen(None, None, b"SM2")

    def ctx() -> tuple[Any, Any]:
        m, c = lib.EVP_MD_CTX_new(), lib.EVP_PKEY_CTX_new_from_pkey(None, key, None)
        lib.EVP_PKEY_CTX_set1_id(c, UID, len(UID))
        lib.EVP_MD_CTX_set_pkey_ctx(m, c)
        return m, c

    def sign() -> bytes:
        m, c = ctx()
        lib.EVP_DigestSignInit(m, None, lib.EVP_sm3(), None, key)
        buf, n = ctypes.create_string_buffer(80), ctypes.c_size_t(80)
        lib.EVP_DigestSign(m, buf, ctypes.byref(n), msg, len(msg))
        lib.EVP_MD_CTX_free(m)
        lib.EVP_PKEY_CTX_free(c)
        return buf.raw[: n.value]

    sig = sign()

    def verify() -> bool:
        m, c = ctx()
        lib.EVP_DigestVerifyInit(m, None, lib.EVP_sm3(), None, key)
        ok = lib.EVP_DigestVerify(m, sig, len(sig), msg, len(msg)) == 1
        lib.EVP_MD_CTX_free(m)
        lib.EVP_PKEY_CTX_free(c)
        return ok

    assert verify()
    return rate(sign), rate(verify)


def main() -> None:
    msg = os.urandom(int(sys.argv[1]) if len(sys.argv) > 1 else 6000)
    res: dict[str, tuple[float, float]] = {"openssl3 (ctypes)": openssl(msg)}

    from gmalglib.sm2 import SM2  # type: ignore[import-not-found]

    sk, pk = SM2().generate_keypair()
    g, gv = SM2(sk), SM2(pk=pk)
    s = g.sign(msg)
    res["gmalglib"] = (rate(lambda: g.sign(msg)), rate(lambda: gv.verify(msg, s)))

    from smcryptopy import sm2 as rs  # type: ignore[import-not-found]

    rsk, rpk = rs.gen_keypair()
    s = rs.sign(UID, msg, rsk)
    res["smcryptopy"] = (rate(lambda: rs.sign(UID, msg, rsk)), rate(lambda: rs.verify(UID, msg, s, rpk)))

    from tongsuopy.crypto import hashes  # type: ignore[import-not-found]
    from tongsuopy.crypto.asymciphers import ec  # type: ignore[import-not-found]

    tk = ec.generate_private_key(ec.SM2())
    s = tk.sign(msg, ec.ECDSA(hashes.SM3()))
    res["tongsuopy"] = (rate(lambda: tk.sign(msg, ec.ECDSA(hashes.SM3()))),
                        rate(lambda: tk.public_key().verify(s, msg, ec.ECDSA(hashes.SM3()))))

    from gmssl import sm2 as gm  # type: ignore[import-not-found]

    d = secrets.token_hex(32)
    c = gm.CryptSM2(private_key=d, public_key="", mode=1)
    c.public_key = c._kg(int(d, 16), gm.default_ecc_table["g"])
    s = c.sign_with_sm3(msg)
    res["gmssl (pure Python)"] = (rate(lambda: c.sign_with_sm3(msg), 3), rate(lambda: c.verify_with_sm3(s, msg), 3))

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    e = Ed25519PrivateKey.generate()
    s = e.sign(msg)
    res["Ed25519 (cryptography)"] = (rate(lambda: e.sign(msg)), rate(lambda: e.public_key().verify(s, msg)))
    print(f"message {len(msg)} bytes")
    for name, (sg, vf) in res.items():
        print(f"{name:24s} sign/s {sg:9.0f}  verify/s {vf:9.0f}")


if __name__ == "__main__":
    main()
