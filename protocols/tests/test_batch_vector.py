"""The normative signed-batch vector (protocols/vectors/batch.json), byte for byte.

Ed25519 is deterministic (RFC 8032), so the same key and records always give the same COSE_Sign1.
Regenerate only when the contract changes on purpose: .venv/bin/python protocols/tests/test_batch_vector.py
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import batch, keys, schema
from lifeline.protocols.batch import BatchRecord, BatchSigner, WireReception

VECTOR = Path(__file__).resolve().parent.parent / "vectors" / "batch.json"
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
# RFC 8032 section 7.1, TEST 1: a published test key, never used for anything real.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
GATEWAY = "gw-test-01"
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
NODE_T0 = T0_MS // 1000 - batch.EPOCH_UNIX


def record_to_vec(r: BatchRecord) -> dict[str, Any]:
    return {
        "device_id": r.device_id.hex(),
        "fcnt": r.fcnt,
        "node_time": r.node_time,
        "rx_ms": r.rx_ms,
        "kind": r.kind,
        "fields": {str(k): {"bytes": v.hex()} if isinstance(v, bytes) else v for k, v in r.fields.items()},
        "data_class": r.data_class,
        "receptions": [[x.radio, x.adapter, x.rx_ms, x.rssi, x.snr_x10] for x in r.receptions],
        "flags": r.flags,
        "record_type": r.record_type,
        "priority": r.priority,
    }


def record_from_vec(v: dict[str, Any]) -> BatchRecord:
    return BatchRecord(
        device_id=bytes.fromhex(v["device_id"]),
        fcnt=v["fcnt"],
        node_time=v["node_time"],
        rx_ms=v["rx_ms"],
        kind=v["kind"],
        fields={int(k): bytes.fromhex(x["bytes"]) if isinstance(x, dict) else x for k, x in v["fields"].items()},
        data_class=v["data_class"],
        receptions=tuple(WireReception(*x) for x in v["receptions"]),
        flags=v["flags"],
        record_type=v["record_type"],
        priority=v["priority"],
    )


def inputs() -> list[tuple[int, int, list[BatchRecord]]]:
    """(lane, created_ms, records) of each batch in the vector chain."""
    alarm = BatchRecord(
        device_id=bytes.fromhex("70b3d57ed0000001"), fcnt=4242, node_time=NODE_T0 - 1, rx_ms=T0_MS - 130,
        kind=schema.K_SMOKE, fields={1: 2, 2: 1450, 5: 231, 15: 3010}, data_class=schema.SENSITIVE,
        receptions=(WireReception("lora-serial", "lora0", T0_MS - 130, -97, 75),), priority=schema.P_ALARM,
    )
    meter = BatchRecord(
        device_id=bytes.fromhex("0004a30b001c2f3e"), fcnt=881, node_time=NODE_T0 - 3600, rx_ms=T0_MS + 59_000,
        kind=schema.K_WATER_METER, fields={1: 1_234_567, 2: 0, 3: 0, 15: 3550}, data_class=schema.SENSITIVE,
        receptions=(WireReception("nbiot", "nb0", T0_MS + 59_000, None, None),),
        flags=batch.FLAG_BACKFILLED | batch.FLAG_QUEUED,
    )
    return [(batch.LANE_LIVE, T0_MS, [alarm]), (batch.LANE_BACKLOG, T0_MS + 60_000, [meter])]


def build() -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    signer = BatchSigner(key, GATEWAY)
    out: list[dict[str, Any]] = []
    for lane, created, recs in inputs():
        prev = signer.prev_hash
        payload = batch.payload_bytes(GATEWAY, signer.next_seq, prev, created, lane, recs)
        sb = signer.sign(recs, lane=lane, created_ms=created)
        out.append({
            "seq": sb.seq,
            "lane": lane,
            "created_ms": created,
            "prev_hash": prev.hex(),
            "records": [record_to_vec(r) for r in recs],
            "protected": batch.protected_header(GATEWAY).hex(),
            "payload": payload.hex(),
            "cose_sign1": sb.data.hex(),
            "digest": sb.digest.hex(),
        })
    return {
        "description": "Lifeline signed uplink batches (docs/protocol.md section 5): a two-batch hash chain",
        "private_key_seed": SEED.hex(),
        "public_key": keys.public_key_hex(key),
        "gateway_id": GATEWAY,
        "batches": out,
    }


def test_vector_byte_for_byte() -> None:
    vec = json.loads(VECTOR.read_text())
    assert vec == build()


def test_vector_verifies_and_chains() -> None:
    vec = json.loads(VECTOR.read_text())
    pub = bytes.fromhex(vec["public_key"])
    tracker = batch.ChainTracker()
    prev = bytes(32)
    for b in vec["batches"]:
        data = bytes.fromhex(b["cose_sign1"])
        assert hashlib.sha256(data).hexdigest() == b["digest"]
        got = batch.verify(data, pub)
        assert got.records == tuple(record_from_vec(r) for r in b["records"])
        assert (got.seq, got.lane, got.created_ms, got.prev_hash) == (b["seq"], b["lane"], b["created_ms"], prev)
        assert tracker.add_batch(got).ok
        prev = got.digest
    assert tracker.intact


def test_docs_example_is_the_vector() -> None:
    """docs/protocol.md section 5.6 shows batch 0 of the vector, its digest and the test key."""
    vec = json.loads(VECTOR.read_text())
    text = DOC.read_text()
    m = re.search(r"<!-- batch-example:begin -->\n(.*?)<!-- batch-example:end -->", text, re.S)
    assert m is not None, "docs/protocol.md lacks the batch-example block"
    b0 = vec["batches"][0]
    assert "".join(m.group(1).split()) == b0["cose_sign1"]
    assert b0["digest"] in text and vec["public_key"] in text and vec["private_key_seed"] in text
    assert vec["batches"][1]["prev_hash"] == b0["digest"]


if __name__ == "__main__":
    VECTOR.write_text(json.dumps(build(), indent=1) + "\n")
    print(f"wrote {VECTOR}")
