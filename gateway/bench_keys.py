"""`lifeline bench --only keys`: what key storage costs (docs/keys.md).

Same-run baselines: a file Ed25519 key beside the SoftHSM2 token key (signatures per second, one per batch),
a plaintext registry beside a wrapped one (devices loaded per second: the daemon's start and reload), and
the unwrap rate per KEK kind. The token is a private SoftHSM2 store in the bench's work directory; the
module reads ``SOFTHSM2_CONF`` once per process, so run this benchmark in its own ``lifeline bench``.
"""

from __future__ import annotations

import json
import os

from lifeline.tools.bench import BenchContext, Figure, rate, timer

PIN = "Bench-PIN-0000"


def bench(ctx: BenchContext) -> list[Figure]:
    from lifeline.gateway import hsm
    from lifeline.gateway import kek as keywrap
    from lifeline.gateway.registry import Registry
    from lifeline.gateway.testing import TestNode
    from lifeline.protocols import keys
    from lifeline.tools.softhsm import make_softhsm

    store = make_softhsm(ctx.workdir / "softhsm", {"bench": PIN})
    os.environ["SOFTHSM2_CONF"] = str(store.conf)
    token = hsm.Token(store.module, "bench", PIN, rw=True)
    figures: list[Figure] = []
    try:
        token.generate_signing_key("sign")
        token.generate_kek("kek")
        signer, token_kek = token.signer("sign"), token.kek("kek")
        file_key = keys.generate()
        msg = os.urandom(600)  # about the Sig_structure of a small batch (a large one hashes inside the token)
        n = ctx.scale(3000, 300)
        with timer() as t:
            for _ in range(n):
                file_key.sign(msg)
        figures.append(Figure("keys", "sign_file_ed25519", rate(n, t()), "signatures/s"))
        with timer() as t:
            for _ in range(n):
                signer.sign(msg)
        figures.append(Figure("keys", "sign_pkcs11_ed25519", rate(n, t()), "signatures/s",
                              baseline="sign_file_ed25519", note="SoftHSM2 CKM_EDDSA; one signature per batch"))

        dev, root = os.urandom(8), os.urandom(32)
        keks: dict[str, keywrap.Kek] = {
            "file_aes256gcm": keywrap.MemoryKek(keywrap.WRAP_INTL, os.urandom(32)),
            "file_sm4gcm": keywrap.MemoryKek(keywrap.WRAP_SM, os.urandom(16)),
            "pkcs11_aes256gcm": token_kek}
        for name, kek in keks.items():
            blob = keywrap.wrap(kek, dev, root)
            m = ctx.scale(20_000, 2_000) if name.startswith("file") else n
            with timer() as t:
                for _ in range(m):
                    keywrap.unwrap(kek, dev, blob)
            figures.append(Figure("keys", f"unwrap_{name}", rate(m, t()), "keys/s"))

        devices = ctx.scale(10_000, 1_000)
        lines = [json.dumps(TestNode(i.to_bytes(8, "big")).record()) for i in range(1, devices + 1)]
        loads: list[tuple[str, keywrap.Kek | None]] = [
            ("plaintext", None), ("file_aes256gcm", keks["file_aes256gcm"]), ("pkcs11_aes256gcm", token_kek)]
        for name, maybe_kek in loads:
            db = ctx.workdir / f"registry-{name}.db"
            with Registry(db, maybe_kek) as reg:
                reg.import_lines(lines, now_ms=1)
            with Registry(db, maybe_kek) as reg, timer() as t:
                loaded = sum(1 for _ in reg.all())
            assert loaded == devices
            figures.append(Figure("keys", f"registry_load_{name}", rate(devices, t()), "devices/s",
                                  baseline=None if maybe_kek is None else "registry_load_plaintext",
                                  note=f"{devices} devices read with their root keys (daemon start and reload)"))
    finally:
        token.close()
    return figures
