"""The suite-sm signed-batch vector (protocols/vectors/batch_sm.json): the same two-batch chain as
batch.json, signed with SM2-SM3 by the published GB/T 32918 example key.

SM2 signatures are randomized, so the signatures are those of one recorded run; everything else is
normative and rebuilt here byte for byte: the protected header (alg -65537), the payloads, the
Sig_structure and the COSE_Sign1 around the recorded signature. The signatures must verify with Lifeline's
verifier and with gmalglib (independent). Regenerate only on purpose:
.venv/bin/python protocols/tests/test_batch_sm_vector.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cbor2
from gmalglib.sm2 import SM2 as GmSM2

from lifeline.protocols import batch, keys, sm2
from lifeline.protocols.batch import BatchRecord, BatchSigner, WireReception

HERE = Path(__file__).resolve().parent.parent / "vectors"
VECTOR = HERE / "batch_sm.json"
INTL = HERE / "batch.json"
# GB/T 32918 (GM/T 0003.5) signature example private key: published, never used for anything real.
D_A = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")


def record_from_vec(v: dict[str, Any]) -> BatchRecord:
    return BatchRecord(
        device_id=bytes.fromhex(v["device_id"]), fcnt=v["fcnt"], node_time=v["node_time"], rx_ms=v["rx_ms"],
        kind=v["kind"],
        fields={int(k): bytes.fromhex(x["bytes"]) if isinstance(x, dict) else x for k, x in v["fields"].items()},
        data_class=v["data_class"], receptions=tuple(WireReception(*x) for x in v["receptions"]),
        flags=v["flags"], record_type=v["record_type"], priority=v["priority"],
    )


def build() -> dict[str, Any]:
    intl = json.loads(INTL.read_text())
    key = sm2.SM2PrivateKey.from_scalar(D_A)
    gw = intl["gateway_id"]
    signer = BatchSigner(key, gw)
    out = []
    for b in intl["batches"]:
        recs = [record_from_vec(r) for r in b["records"]]
        prev = signer.prev_hash
        payload = batch.payload_bytes(gw, signer.next_seq, prev, b["created_ms"], b["lane"], recs)
        sb = signer.sign(recs, lane=b["lane"], created_ms=b["created_ms"])
        out.append({"seq": sb.seq, "lane": b["lane"], "created_ms": b["created_ms"], "prev_hash": prev.hex(),
                    "records": b["records"], "protected": batch.protected_header(gw, key).hex(),
                    "payload": payload.hex(), "signature": cbor2.loads(sb.data).value[3].hex(),
                    "cose_sign1": sb.data.hex(), "digest": sb.digest.hex()})
    return {"description": "Lifeline signed uplink batches, suite sm (SM2-SM3, COSE alg -65537): the chain of "
                           "batch.json; signatures from one recorded run (SM2 is randomized)",
            "private_key": D_A.hex(), "public_key": keys.public_key_hex(key), "user_id": sm2.DEFAULT_UID.decode(),
            "gateway_id": gw, "batches": out}


def test_everything_but_the_random_signature_is_rebuilt_byte_for_byte() -> None:
    vec = json.loads(VECTOR.read_text())
    intl = json.loads(INTL.read_text())
    key = sm2.SM2PrivateKey.from_scalar(bytes.fromhex(vec["private_key"]))
    assert vec["public_key"] == keys.public_key_hex(key)
    gw = vec["gateway_id"]
    prot = batch.protected_header(gw, key)
    assert cbor2.loads(prot) == {1: -65537, 3: batch.CONTENT_TYPE, 4: gw.encode()}
    prev = bytes(32)
    for b, ib in zip(vec["batches"], intl["batches"], strict=True):
        recs = [record_from_vec(r) for r in ib["records"]]
        payload = batch.payload_bytes(gw, b["seq"], prev, b["created_ms"], b["lane"], recs)
        assert payload.hex() == b["payload"]
        if b["seq"] == 0:
            assert b["payload"] == ib["payload"]  # same records, same zero prev_hash: the suites differ only above
        assert b["protected"] == prot.hex()
        sig = bytes.fromhex(b["signature"])
        rebuilt = cbor2.dumps(cbor2.CBORTag(18, [prot, {}, payload, sig]))
        assert rebuilt.hex() == b["cose_sign1"]
        assert hashlib.sha256(rebuilt).hexdigest() == b["digest"]
        prev = bytes.fromhex(b["digest"])


def test_vector_verifies_with_two_implementations_and_chains() -> None:
    vec = json.loads(VECTOR.read_text())
    pub = bytes.fromhex(vec["public_key"])
    tracker = batch.ChainTracker()
    for b in vec["batches"]:
        data = bytes.fromhex(b["cose_sign1"])
        got = batch.verify(data, pub)
        assert got.records == tuple(record_from_vec(r) for r in b["records"])
        assert tracker.add_batch(got).ok
        sig_structure = cbor2.dumps(["Signature1", bytes.fromhex(b["protected"]), b"", bytes.fromhex(b["payload"])])
        assert GmSM2(pk=pub).verify(sig_structure, bytes.fromhex(b["signature"]))
    assert tracker.intact


if __name__ == "__main__":
    VECTOR.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {VECTOR}")
