"""Independent verification: batches signed here verify with pycose 1.1.0, and COSE_Sign1 messages made by
pycose verify here. pycose runs in its own venv (/work/main/.venv-cose, made by tools/bootstrap.sh) as a
separate process, so nothing of our CBOR or COSE code is on its path."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import batch, keys, schema
from lifeline.protocols.batch import BatchRecord, BatchSigner, WireReception

ROOT = Path(__file__).resolve().parents[2]
COSE_PY = ROOT / ".venv-cose" / "bin" / "python"
VECTOR = ROOT / "protocols" / "vectors" / "batch.json"

# Runs under pycose. Reads a JSON job on stdin, answers JSON on stdout.
PYCOSE_SCRIPT = r'''
import json, sys
import cbor2
from pycose.messages import Sign1Message
from pycose.keys import OKPKey, EC2Key
from pycose.keys.curves import Ed25519, P256
from pycose.headers import Algorithm, KID, ContentType
from pycose.algorithms import EdDSA, Es256

job = json.load(sys.stdin)
out = {"cbor2": cbor2.__version__ if hasattr(cbor2, "__version__") else "?", "verified": [], "signed": []}
pub = bytes.fromhex(job["public_key"])
for item in job.get("verify", []):
    try:
        msg = Sign1Message.decode(bytes.fromhex(item))
        msg.key = OKPKey(crv=Ed25519, x=pub)
        ok = bool(msg.verify_signature())
        alg = msg.phdr.get(Algorithm)
        out["verified"].append({
            "ok": ok,
            "payload": msg.payload.hex(),
            "alg": getattr(alg, "fullname", str(alg)),
            "kid": msg.phdr.get(KID, b"").hex(),
            "content_type": msg.phdr.get(ContentType),
            "unprotected": len(msg.uhdr),
        })
    except Exception as exc:  # a failed decode is an answer too
        out["verified"].append({"ok": False, "error": type(exc).__name__})
for item in job.get("sign", []):
    payload = bytes.fromhex(item["payload"])
    if item.get("alg") == "ES256":
        key = EC2Key.generate_key(crv=P256)
        alg = Es256
    else:
        key = OKPKey(crv=Ed25519, d=bytes.fromhex(job["private_key"]), x=pub)
        alg = EdDSA
    msg = Sign1Message(phdr={Algorithm: alg, ContentType: item["content_type"], KID: item["kid"].encode()},
                       uhdr={}, payload=payload)
    msg.key = key
    out["signed"].append(msg.encode(tag=True).hex())
json.dump(out, sys.stdout)
'''


def pycose(job: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    assert COSE_PY.exists(), f"{COSE_PY} missing: run tools/bootstrap.sh setup (it creates .venv-cose)"
    script = tmp_path / "pycose_job.py"
    script.write_text(PYCOSE_SCRIPT)
    proc = subprocess.run(
        [str(COSE_PY), str(script)], input=json.dumps(job), capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


SEED = bytes(range(100, 132))
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUB_HEX = keys.public_key_hex(KEY)


def random_record(rng: random.Random) -> BatchRecord:
    kind = rng.choice(sorted(k for k in schema.KINDS if not schema.is_downlink_kind(k)))
    fields: dict[int, int | bytes] = {}
    for f in schema.KINDS[kind][3]:
        if f[7] or rng.random() < 0.5:
            fields[f[0]] = rng.randint(f[4], f[5])
    if rng.random() < 0.2:
        fields[30] = rng.randbytes(rng.randint(0, 20))
    return BatchRecord(
        device_id=rng.randbytes(8),
        fcnt=rng.randrange(1 << 32),
        node_time=rng.randrange(1 << 32),
        rx_ms=rng.randrange(1 << 44),
        kind=kind,
        fields=fields,
        data_class=schema.KINDS[kind][1],
        receptions=tuple(
            WireReception(rng.choice(["lora-serial", "lora-udp", "ble", "nbiot"]), f"a{rng.randrange(9)}",
                          rng.randrange(1 << 44), rng.choice([None, rng.randint(-140, 0)]),
                          rng.choice([None, rng.randint(-200, 150)]))
            for _ in range(rng.randint(0, 3))
        ),
        flags=rng.randrange(8),
        record_type=0,
        priority=rng.randrange(3),
    )


def test_our_batches_verify_with_pycose(tmp_path: Path) -> None:
    rng = random.Random(20260101)
    signer = BatchSigner(KEY, "gw-cross")
    signed = [signer.sign([random_record(rng) for _ in range(rng.randint(0, 12))], lane=rng.randrange(2),
                          created_ms=rng.randrange(1 << 42)) for _ in range(150)]
    # Two that must fail, to show pycose really checks: a flipped signature bit, a flipped payload bit.
    bad_sig = bytearray(signed[0].data)
    bad_sig[-1] ^= 0x80
    bad_payload = bytearray(signed[1].data)
    bad_payload[len(bad_payload) // 2] ^= 0x01
    job = {"public_key": PUB_HEX, "verify": [sb.data.hex() for sb in signed] + [bad_sig.hex(), bad_payload.hex()]}
    answers = pycose(job, tmp_path)["verified"]
    assert len(answers) == len(signed) + 2
    for sb, ans in zip(signed, answers, strict=False):
        assert ans["ok"], ans
        assert ans["alg"] == "EDDSA" and ans["kid"] == b"gw-cross".hex()
        assert ans["content_type"] == batch.CONTENT_TYPE and ans["unprotected"] == 0
        # pycose's view of the payload decodes to the same batch we signed.
        ours = batch.verify(sb.data, KEY.public_key())
        assert bytes.fromhex(ans["payload"]) == cbor2.loads(sb.data).value[2]
        body = cbor2.loads(bytes.fromhex(ans["payload"]))
        assert body[3] == ours.seq and len(body[7]) == len(ours.records)
    assert answers[-2]["ok"] is False and answers[-1]["ok"] is False


def test_the_normative_vector_verifies_with_pycose(tmp_path: Path) -> None:
    vec = json.loads(VECTOR.read_text())
    job = {"public_key": vec["public_key"], "verify": [b["cose_sign1"] for b in vec["batches"]]}
    answers = pycose(job, tmp_path)["verified"]
    for b, ans in zip(vec["batches"], answers, strict=True):
        assert ans["ok"] and ans["payload"] == b["payload"]


def test_pycose_signed_batches_verify_here(tmp_path: Path) -> None:
    rng = random.Random(7)
    payloads = []
    for seq in range(20):
        recs = [random_record(rng) for _ in range(rng.randint(0, 6))]
        payloads.append((recs, batch.payload_bytes("gw-cross", seq, bytes(32), 1000 + seq, seq % 2, recs)))
    job = {
        "public_key": PUB_HEX,
        "private_key": SEED.hex(),
        "sign": [{"payload": p.hex(), "kid": "gw-cross", "content_type": batch.CONTENT_TYPE} for _, p in payloads]
        + [{"payload": payloads[0][1].hex(), "kid": "gw-cross", "content_type": batch.CONTENT_TYPE, "alg": "ES256"}],
    }
    signed = pycose(job, tmp_path)["signed"]
    for seq, ((recs, _payload), hexdata) in enumerate(zip(payloads, signed, strict=False)):
        got = batch.verify(bytes.fromhex(hexdata), KEY.public_key())
        assert got.seq == seq and got.records == tuple(recs) and got.lane == seq % 2
        # Ed25519 is deterministic and both sides serialise the same headers: identical bytes.
        ours = batch.sign_payload(KEY, "gw-cross", _payload)
        assert ours.hex() == hexdata
    with pytest.raises(batch.BatchError) as info:
        batch.verify(bytes.fromhex(signed[-1]), KEY.public_key())
    assert info.value.reason == "bad_alg" and "ES256" in info.value.detail
