"""``lifeline bench batch_suites``: the batch signature suites side by side, and the certificate chain's cost.

Per suite (``intl`` Ed25519, ``sm`` SM2-SM3), for a batch of the usual size (50 records, ~4 KB, the
gateway's ``sign_encoded`` path): batches signed per second, and batches verified per second at the sink
(``batch.verify``: envelope, signature, payload decode). The suite ``intl`` figure is the same-run baseline
of the ``sm`` one. Then the x5chain (gateway certificate in the protected header): bytes added per batch,
and the sink's chain check per batch, cold (every certificate signature checked) and warm (the chain seen
before: cache hit, validity and CRL rechecked). The CA is made by the openssl command line.
"""

from __future__ import annotations

import os
import time

from lifeline.protocols import batch, cose_sign, gwcert, keys, schema
from lifeline.tools.bench import BenchContext, Figure, rate, timer
from lifeline.tools.testca import TestCA

RECORDS = 50


def _records() -> list[bytes]:
    rec = batch.BatchRecord(device_id=os.urandom(8), fcnt=1, node_time=1, rx_ms=1_700_000_000_000,
                            kind=schema.K_WATER_LEVEL, fields={1: 312, 2: 85, 15: 3400}, data_class=0,
                            receptions=(batch.WireReception("lora-serial", "lora0", 1_700_000_000_000, -90, 5),))
    return [batch.encode_record(rec)] * RECORDS


def bench(ctx: BenchContext) -> list[Figure]:
    encoded = _records()
    n = ctx.scale(600, 60)
    figures: list[Figure] = []
    signed: dict[str, bytes] = {}
    for suite in ("intl", "sm"):
        key = keys.generate_for(suite)
        signer = batch.BatchSigner(key, "gw-bench")
        with timer() as t:
            for _ in range(n):
                sb = signer.sign_encoded(encoded, lane=0, created_ms=1)
        signed[suite] = sb.data
        base = None if suite == "intl" else "batch_sign_rate_intl"
        figures.append(Figure("batch_suites", f"batch_sign_rate_{suite}", rate(n, t()), "batches/s", baseline=base,
                              note=f"{RECORDS} records, {len(sb.data)} B COSE_Sign1, "
                                   f"{'Ed25519' if suite == 'intl' else 'SM2-SM3 (OpenSSL)'}"))
        pub = keys.public_key(key)
        with timer() as t:
            for _ in range(n):
                batch.verify(sb.data, pub)
        base = None if suite == "intl" else "batch_verify_rate_intl"
        figures.append(Figure("batch_suites", f"batch_verify_rate_{suite}", rate(n, t()), "batches/s",
                              baseline=base, note="sink side: envelope + signature + payload decode"))
        v = cose_sign.verify_key(pub)
        msg = os.urandom(len(sb.data))
        sig = signer.key.sign(msg)
        with timer() as t:
            for _ in range(n):
                v.verify(sig, msg)
        base = None if suite == "intl" else "signature_verify_rate_intl"
        figures.append(Figure("batch_suites", f"signature_verify_rate_{suite}", rate(n, t()), "verifications/s",
                              baseline=base, note=f"the signature alone over {len(msg)} B"))

    for suite in ("intl", "sm"):
        ca = TestCA(ctx.workdir / f"ca-{suite}", suite)
        key = keys.generate_for(suite)
        cert = ca.issue(gwcert.make_csr(key, "gw-bench"), "gw-bench")
        with_chain = gwcert.attach_chain(cose_sign.signing_key(key), cert, "gw-bench", now=time.time())
        data = batch.BatchSigner(with_chain, "gw-bench").sign_encoded(encoded, lane=0, created_ms=1).data
        plain = batch.BatchSigner(key, "gw-bench").sign_encoded(encoded, lane=0, created_ms=1).data
        figures.append(Figure("batch_suites", f"x5chain_overhead_{suite}", len(data) - len(plain), "bytes/batch",
                              better="lower", note=f"one {suite} certificate in the protected header "
                                                   f"({len(plain)} B batch without it)"))
        trust = gwcert.CaTrust.from_files(ca.cert.read_bytes(), ca.crl())
        resolve = trust.resolver()
        m = ctx.scale(300, 30)
        with timer() as t:
            for _ in range(m):
                trust._cache.clear()  # cold: parse + every certificate signature
                batch.verify(data, resolve)
        cold = t() / m
        with timer() as t:
            for _ in range(m):
                batch.verify(data, resolve)
        warm = t() / m
        pub = keys.public_key(key)
        with timer() as t:
            for _ in range(m):
                batch.verify(plain, pub)
        pinned = t() / m
        figures.append(Figure("batch_suites", f"verify_pinned_us_{suite}", pinned * 1e6, "us/batch", better="lower",
                              note="pinned raw key (baseline of the two below)"))
        figures.append(Figure("batch_suites", f"verify_chain_cold_us_{suite}", cold * 1e6, "us/batch", better="lower",
                              baseline=f"verify_pinned_us_{suite}",
                              note=f"x5chain checked against the CA (+{(cold - pinned) * 1e6:.0f} us): first batch "
                                   "of a gateway"))
        figures.append(Figure("batch_suites", f"verify_chain_warm_us_{suite}", warm * 1e6, "us/batch", better="lower",
                              baseline=f"verify_pinned_us_{suite}",
                              note=f"chain cached (+{(warm - pinned) * 1e6:.0f} us): validity + CRL rechecked"))
    return figures
