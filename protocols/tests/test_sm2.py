"""SM2 with SM3 through the OpenSSL binding, checked against the published example, an independent library
(gmalglib, its own C code) and the openssl command line; and SM2-signed batches (suite ``sm``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gmalglib.sm2 import SM2 as GmSM2
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.protocols import batch, cose_sign, schema, sm2
from lifeline.protocols.batch import BatchError, BatchRecord, BatchSigner, WireReception

# The SM2 signature example on the recommended curve (GM/T 0003.5-2012 / GB/T 32918.5-2017 example,
# also in GmSSL's tests): d_A, the public key it gives, M = "message digest", the default user id, and the
# (r, s) made with k = 59276E27...BC21.
D_A = bytes.fromhex("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8")
P_A = bytes.fromhex(
    "04" "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)
R_S = bytes.fromhex(
    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
)
MSG = b"message digest"

REC = BatchRecord(device_id=bytes.fromhex("70b3d57ed0000001"), fcnt=3, node_time=9, rx_ms=1_700_000_000_000,
                  kind=schema.K_SMOKE, fields={1: 2, 5: 215}, data_class=schema.SENSITIVE,
                  receptions=(WireReception("lora-serial", "lora0", 1_700_000_000_000, -97, 75),))


def test_published_example_public_key_and_signature() -> None:
    key = sm2.SM2PrivateKey.from_scalar(D_A)
    assert key.public_key().point() == P_A
    pub = sm2.SM2PublicKey.from_point(P_A)
    pub.verify(R_S, MSG)
    with pytest.raises(InvalidSignature):
        pub.verify(R_S, b"message digesT")
    with pytest.raises(InvalidSignature):
        pub.verify(R_S, MSG, uid=b"ALICE123@YAHOO.COM")  # Z_A covers the user id
    with pytest.raises(InvalidSignature):
        pub.verify(R_S[:63] + bytes([R_S[63] ^ 1]), MSG)


def test_independent_library_agrees_both_ways() -> None:
    ours = sm2.SM2PrivateKey.generate()
    point = ours.public_key().point()
    gm = GmSM2(pk=point)  # gmalglib: raw 04||x||y, default uid 1234567812345678
    for msg in (b"", b"x", MSG, bytes(range(256)) * 40):
        assert gm.verify(msg, ours.sign(msg))
    theirs_sk, theirs_pk = GmSM2().generate_keypair()
    signer = GmSM2(theirs_sk)
    pub = sm2.SM2PublicKey.from_point(theirs_pk)
    for msg in (b"", MSG, bytes(5000)):
        pub.verify(signer.sign(msg), msg)
    assert sm2.SM2PrivateKey.from_scalar(theirs_sk).public_key().point() == theirs_pk


def _openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=False)


def test_openssl_command_line_reads_our_keys_and_checks_our_signatures(tmp_path: Path) -> None:
    key = sm2.SM2PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(sm2.private_pem(key))
    (tmp_path / "pub.pem").write_bytes(key.public_key().pem())
    (tmp_path / "msg").write_bytes(MSG * 10)
    (tmp_path / "sig").write_bytes(key.sign_der(MSG * 10))
    opts = ("-rawin", "-digest", "sm3", "-pkeyopt", "distid:1234567812345678")
    ok = _openssl("pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-in", "msg", "-sigfile", "sig", *opts,
                  cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "msg").write_bytes(MSG * 10 + b"!")
    bad = _openssl("pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-in", "msg", "-sigfile", "sig", *opts,
                   cwd=tmp_path)
    assert bad.returncode != 0
    # and the other way: a key and a signature made by the command line
    assert _openssl("genpkey", "-algorithm", "SM2", "-out", "k2.pem", cwd=tmp_path).returncode == 0
    assert _openssl("pkeyutl", "-sign", "-inkey", "k2.pem", "-in", "msg", "-out", "s2", *opts,
                    cwd=tmp_path).returncode == 0
    k2 = sm2.SM2PrivateKey.from_pem((tmp_path / "k2.pem").read_bytes())
    k2.public_key().verify_der((tmp_path / "s2").read_bytes(), MSG * 10 + b"!")


def test_private_pem_round_trip_and_no_secret_in_repr() -> None:
    key = sm2.SM2PrivateKey.from_scalar(D_A)
    again = sm2.SM2PrivateKey.from_pem(sm2.private_pem(key))
    assert again.public_key() == key.public_key()
    assert D_A.hex() not in repr(key).lower() and D_A.hex().upper() not in repr(key)


@pytest.mark.parametrize("d", [0, sm2.N - 1, sm2.N, 1 << 256])
def test_out_of_range_scalars_are_refused(d: int) -> None:
    with pytest.raises(sm2.Sm2Error):
        sm2.SM2PrivateKey.from_scalar(d)


def test_bad_public_keys_are_refused() -> None:
    with pytest.raises(sm2.Sm2Error):
        sm2.SM2PublicKey.from_point(b"\x04" + bytes(64))  # not on the curve
    with pytest.raises(sm2.Sm2Error):
        sm2.SM2PublicKey.from_point(P_A[:64])
    p256 = ec.generate_private_key(ec.SECP256R1())
    pem = p256.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(sm2.Sm2Error):
        sm2.SM2PublicKey.from_pem(pem)
    priv = p256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    with pytest.raises(sm2.Sm2Error):
        sm2.SM2PrivateKey.from_pem(priv)
    with pytest.raises(sm2.Sm2Error):
        sm2.SM2PrivateKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, sm2.N - 1), st.integers(1, sm2.N - 1))
def test_der_and_raw_signature_forms_round_trip(r: int, s: int) -> None:
    rs = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert sm2.der_to_rs(sm2.rs_to_der(rs)) == rs


@given(st.binary(max_size=80))
def test_der_parser_rejects_garbage_plainly(data: bytes) -> None:
    try:
        rs = sm2.der_to_rs(data)
    except sm2.Sm2Error:
        return
    assert sm2.rs_to_der(rs) == data


# ------------------------------------------------------------------------------ suite sm batches


KEY = sm2.SM2PrivateKey.from_scalar(D_A)


def test_sm2_batch_round_trip_names_its_suite() -> None:
    sb = BatchSigner(KEY, "gw-sm").sign([REC], lane=0, created_ms=5)
    tag = cbor2.loads(sb.data)
    prot = cbor2.loads(tag.value[0])
    assert prot == {1: -65537, 3: batch.CONTENT_TYPE, 4: b"gw-sm"}
    assert len(tag.value[3]) == 64
    for key in (KEY.public_key(), P_A, cose_sign.Sm2Verifier(KEY.public_key())):
        got = batch.verify(sb.data, key)
        assert got.records == (REC,) and got.gateway_id == "gw-sm"
    # an independent check of the signature over the RFC 9052 Sig_structure
    sig_structure = cbor2.dumps(["Signature1", tag.value[0], b"", tag.value[2]])
    assert GmSM2(pk=P_A).verify(sig_structure, tag.value[3])


def test_sm2_batches_chain_like_ed25519_ones() -> None:
    signer = BatchSigner(KEY, "gw-sm")
    tracker = batch.ChainTracker()
    for i in range(3):
        got = batch.verify(signer.sign([REC], lane=0, created_ms=i).data, P_A)
        assert tracker.add_batch(got).ok
    assert tracker.intact


def test_wrong_suite_and_forgeries_are_refused_with_reasons() -> None:
    sm_batch = BatchSigner(KEY, "gw-sm").sign([REC], lane=0, created_ms=5).data
    ed = Ed25519PrivateKey.from_private_bytes(bytes(32))
    ed_batch = BatchSigner(ed, "gw-sm").sign([REC], lane=0, created_ms=5).data

    def why(data: bytes, key: object) -> BatchError:
        with pytest.raises(BatchError) as info:
            batch.verify(data, key)  # type: ignore[arg-type]
        return info.value

    e = why(sm_batch, ed.public_key())
    assert e.reason == "bad_alg" and "SM2" in e.detail and "Ed25519" in e.detail
    assert why(ed_batch, KEY.public_key()).reason == "bad_alg"
    other = sm2.SM2PrivateKey.generate().public_key()
    assert why(sm_batch, other).reason == "bad_signature"
    tag = cbor2.loads(sm_batch)
    prot, unprot, payload, sig = tag.value
    # an Ed25519 signature under an SM2 header (the other suite's algorithm) does not verify as SM2
    forged = cbor2.dumps(cbor2.CBORTag(18, [prot, unprot, payload,
                                            ed.sign(cbor2.dumps(["Signature1", prot, b"", payload]))]))
    assert why(forged, KEY.public_key()).reason == "bad_signature"
    for bad_sig in (sig[:63], sig + b"\x00", bytes(64), sm2.N.to_bytes(32, "big") + sig[32:]):
        data = cbor2.dumps(cbor2.CBORTag(18, [prot, unprot, payload, bad_sig]))
        assert why(data, KEY.public_key()).reason == "bad_signature"
