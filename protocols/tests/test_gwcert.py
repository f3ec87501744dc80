"""Gateway identity from a CA: CSRs (checked by the openssl command line), x5chain in the batch, and the
platform-side chain checks with every refusal reason. The CAs are made by the openssl CLI (tools/testca.py),
for both suites and mixed (an SM2 CA may certify an Ed25519 gateway and the other way round)."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.protocols import batch, cose_sign, gwcert, keys, schema
from lifeline.protocols.batch import BatchError, BatchRecord, BatchSigner, WireReception
from lifeline.tools.testca import TestCA

REC = BatchRecord(device_id=bytes(8), fcnt=1, node_time=5, rx_ms=9, kind=schema.K_SMOKE, fields={1: 2},
                  data_class=schema.SENSITIVE, receptions=(WireReception("lora", "lora0", 9, -90, 70),))
NOW = time.time()
YEAR = 365 * 86400


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestCA]]:
    base = tmp_path_factory.mktemp("ca")
    yield {"sm": TestCA(base / "sm", "sm"), "intl": TestCA(base / "intl", "intl"),
           "rogue": TestCA(base / "rogue", "sm", name="Lifeline Test City CA")}  # same name, other key


def ders(pem: bytes) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in gwcert.load_chain(pem)]


def signed_batch(key: keys.PrivateKey, chain_pem: bytes, gw: str = "gw-1") -> bytes:
    signer = gwcert.attach_chain(cose_sign.signing_key(key), chain_pem, gw, now=time.time())
    return BatchSigner(signer, gw).sign([REC], lane=0, created_ms=1).data


def refused(data: bytes, trust: gwcert.CaTrust) -> BatchError:
    with pytest.raises(BatchError) as info:
        batch.verify(data, trust.resolver())
    assert info.value.reason in gwcert.CHAIN_REASONS + batch.REASONS
    return info.value


@pytest.mark.parametrize("suite", ["sm", "intl"])
def test_csr_is_verified_by_the_openssl_command_line(tmp_path: Path, suite: str) -> None:
    key = keys.generate_for(suite)
    (tmp_path / "gw.csr").write_bytes(gwcert.make_csr(key, "gw-7"))
    opts = ["-vfyopt", "distid:1234567812345678"] if suite == "sm" else []
    r = subprocess.run(["openssl", "req", "-in", "gw.csr", "-noout", "-verify", "-subject", *opts], cwd=tmp_path,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "gw-7" in r.stdout, r.stderr
    text = subprocess.run(["openssl", "req", "-in", "gw.csr", "-noout", "-text"], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout
    assert ("SM2-with-SM3" if suite == "sm" else "ED25519") in text and "DNS:gw-7" in text


@pytest.mark.parametrize(("ca_suite", "gw_suite"), [("sm", "sm"), ("intl", "intl"), ("sm", "intl"), ("intl", "sm")])
def test_a_batch_carrying_its_chain_verifies_against_the_ca(cas: dict[str, TestCA], ca_suite: str,
                                                             gw_suite: str) -> None:
    ca = cas[ca_suite]
    key = keys.generate_for(gw_suite)
    cert = ca.issue(gwcert.make_csr(key, "gw-1"), "gw-1")
    data = signed_batch(key, cert)
    prot = cbor2.loads(cbor2.loads(data).value[0])
    assert prot[1] == (-65537 if gw_suite == "sm" else -8) and prot[33] == ders(cert)[0]
    trust = gwcert.CaTrust.from_files(ca.cert.read_bytes(), ca.crl())
    got = batch.verify(data, trust.resolver())
    assert got.records == (REC,) and got.gateway_id == "gw-1"


def test_a_certificate_from_another_ca_is_refused(cas: dict[str, TestCA]) -> None:
    key = keys.generate_for("sm")
    cert = cas["rogue"].issue(gwcert.make_csr(key, "gw-1"), "gw-1")
    e = refused(signed_batch(key, cert), gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes()))
    assert e.reason == "untrusted_certificate" and "not issued by the configured CA" in e.detail


def test_a_revoked_certificate_is_refused(cas: dict[str, TestCA], tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca", "sm")
    key, other = keys.generate_for("sm"), keys.generate_for("intl")
    cert = ca.issue(gwcert.make_csr(key, "gw-1"), "gw-1")
    good = ca.issue(gwcert.make_csr(other, "gw-2"), "gw-2")
    ca.revoke(cert)
    trust = gwcert.CaTrust.from_files(ca.cert.read_bytes(), ca.crl())
    assert refused(signed_batch(key, cert), trust).reason == "revoked"
    assert batch.verify(signed_batch(other, good, "gw-2"), trust.resolver()).gateway_id == "gw-2"
    # a CRL must come from the configured CA
    with pytest.raises(gwcert.CertError, match="not issued"):
        gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes(), ca.crl())


def test_validity_is_judged_with_the_verifiers_clock(cas: dict[str, TestCA]) -> None:
    key = keys.generate_for("sm")
    cert = cas["sm"].issue(gwcert.make_csr(key, "gw-1"), "gw-1", days=30)
    data = signed_batch(key, cert)
    for when in (NOW + 31 * 86400, NOW - 86400):
        trust = gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes(), clock=float(when).__float__)
        assert refused(data, trust).reason == "certificate_expired"
    trust = gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes(), clock=lambda: NOW + 29 * 86400)
    assert batch.verify(data, trust.resolver()).seq == 0


def test_the_certificate_must_name_the_batchs_gateway(cas: dict[str, TestCA]) -> None:
    key = keys.generate_for("intl")
    cert = cas["intl"].issue(gwcert.make_csr(key, "gw-1"), "gw-1")
    # attach_chain refuses the mismatch at the gateway; a hand-made batch shows the sink refuses it too
    with pytest.raises(gwcert.CertError, match="gw-2"):
        gwcert.attach_chain(cose_sign.signing_key(key), cert, "gw-2", now=time.time())
    signer = cose_sign.WithHeaders(cose_sign.signing_key(key), gwcert.x5chain_header(gwcert.load_chain(cert)))
    data = BatchSigner(signer, "gw-2").sign([REC], lane=0, created_ms=1).data
    trust = gwcert.CaTrust.from_files(cas["intl"].cert.read_bytes())
    assert refused(data, trust).reason == "gateway_mismatch"


def test_key_usage_and_ca_flags(cas: dict[str, TestCA]) -> None:
    trust = gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes())
    key = keys.generate_for("sm")
    kws: list[dict[str, Any]] = [{"key_usage": "keyCertSign"},
                                 {"ca": True, "key_usage": "digitalSignature,keyCertSign"}]
    for kw in kws:
        cert = cas["sm"].issue(gwcert.make_csr(key, "gw-1"), "gw-1", **kw)
        assert refused(signed_batch(key, cert), trust).reason == "bad_key_usage"


def test_intermediate_ca_chain(tmp_path: Path) -> None:
    root = TestCA(tmp_path / "root", "sm")
    inter = TestCA(tmp_path / "inter", "sm", name="District CA", parent=root)
    key = keys.generate_for("sm")
    chain = inter.chain(inter.issue(gwcert.make_csr(key, "gw-1"), "gw-1"))
    assert len(gwcert.load_chain(chain)) == 2
    data = signed_batch(key, chain)
    assert batch.verify(data, gwcert.CaTrust.from_files(root.cert.read_bytes()).resolver()).seq == 0
    # the leaf alone does not reach the root
    leaf_only = signed_batch(key, chain[: chain.index(b"-----END CERTIFICATE-----") + 26])
    assert refused(leaf_only, gwcert.CaTrust.from_files(root.cert.read_bytes())).reason == "untrusted_certificate"
    root.revoke(inter.cert.read_bytes())
    revoked = gwcert.CaTrust.from_files(root.cert.read_bytes(), root.crl())
    assert refused(data, revoked).reason == "revoked"


def test_missing_or_garbage_x5chain(cas: dict[str, TestCA]) -> None:
    trust = gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes())
    key = keys.generate_for("sm")
    assert refused(BatchSigner(key, "gw-1").sign([REC], 0, 1).data, trust).reason == "no_certificate"
    for value in (b"not a certificate", [b"x"] * 5, 7, [1, 2]):
        signer = cose_sign.WithHeaders(cose_sign.signing_key(key), {33: value})
        assert refused(BatchSigner(signer, "gw-1").sign([REC], 0, 1).data, trust).reason == "bad_certificate"


def test_someone_elses_certificate_does_not_lend_its_identity(cas: dict[str, TestCA]) -> None:
    victim, thief = keys.generate_for("sm"), keys.generate_for("sm")
    cert = cas["sm"].issue(gwcert.make_csr(victim, "gw-1"), "gw-1")
    with pytest.raises(gwcert.CertError, match="not for this gateway's signing key"):
        gwcert.attach_chain(cose_sign.signing_key(thief), cert, "gw-1", now=time.time())
    signer = cose_sign.WithHeaders(cose_sign.signing_key(thief), gwcert.x5chain_header(gwcert.load_chain(cert)))
    data = BatchSigner(signer, "gw-1").sign([REC], 0, 1).data
    assert refused(data, gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes())).reason == "bad_signature"


def test_configuration_errors_name_the_file(cas: dict[str, TestCA]) -> None:
    with pytest.raises(gwcert.CertError, match="--ca"):
        gwcert.CaTrust.from_files(b"junk")
    key = keys.generate_for("sm")
    leaf = cas["sm"].issue(gwcert.make_csr(key, "gw-1"), "gw-1")
    with pytest.raises(gwcert.CertError, match="not a CA"):
        gwcert.CaTrust.from_files(leaf)
    with pytest.raises(gwcert.CertError, match="--crl"):
        gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes(), b"junk")
    with pytest.raises(gwcert.CertError, match="not now"):
        gwcert.attach_chain(cose_sign.signing_key(key), leaf, "gw-1", now=NOW + 2 * YEAR)


def test_a_replaced_crl_file_is_picked_up_and_a_bad_one_is_not(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca", "sm")
    key = keys.generate_for("sm")
    cert = ca.issue(gwcert.make_csr(key, "gw-1"), "gw-1")
    crl_file = tmp_path / "city.crl"
    crl_file.write_bytes(ca.crl())  # nothing revoked yet
    trust = gwcert.CaTrust.from_paths(ca.cert, crl_file, reload_every_s=3600)
    data = signed_batch(key, cert)
    assert batch.verify(data, trust.resolver()).seq == 0
    ca.revoke(cert)
    crl_file.write_bytes(ca.crl())
    assert batch.verify(data, trust.resolver()).seq == 0  # not re-read before its interval ...
    assert trust.maybe_reload_crl(force=True) and trust.crl_reloads == 1  # ... or when forced
    assert refused(data, trust).reason == "revoked"
    crl_file.write_bytes(b"garbage")  # a broken CRL is not used; the previous one stays in force
    assert not trust.maybe_reload_crl(force=True)
    assert trust.crl_reload_errors == 1 and str(crl_file) in trust.crl_error
    assert refused(data, trust).reason == "revoked"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mangled_certificates_are_refused_with_a_reason(cas: dict[str, TestCA], data: st.DataObject) -> None:
    """Bytes flipped, cut or inserted anywhere in the certificate: a BatchError with a reason, never another
    exception (cryptography parses certificates lazily, so extensions can fail late)."""
    global _FUZZ_CERT
    if _FUZZ_CERT is None:
        key = keys.generate_for("sm")
        _FUZZ_CERT = (key, ders(cas["sm"].issue(gwcert.make_csr(key, "gw-1"), "gw-1"))[0])
    key, der = _FUZZ_CERT
    buf = bytearray(der)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i: i + data.draw(st.integers(1, 8))]
        else:
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        if not buf:
            buf = bytearray(b"\x30")
    signer = cose_sign.WithHeaders(cose_sign.signing_key(key), {33: bytes(buf)})
    trust = gwcert.CaTrust.from_files(cas["sm"].cert.read_bytes())
    batch_bytes = BatchSigner(signer, "gw-1").sign([REC], 0, 1).data
    try:
        batch.verify(batch_bytes, trust.resolver())
    except BatchError as e:
        assert e.reason in gwcert.CHAIN_REASONS + batch.REASONS


_FUZZ_CERT: tuple[keys.PrivateKey, bytes] | None = None


def test_a_certificate_with_an_unknown_version_is_refused(cas: dict[str, TestCA]) -> None:
    """cryptography raises InvalidVersion, not ValueError, for it (the fuzz test above found this)."""
    key = keys.generate_for("intl")
    buf = bytearray(ders(cas["intl"].issue(gwcert.make_csr(key, "gw-1"), "gw-1"))[0])
    assert buf[8:13] == bytes.fromhex("a003020102")  # tbsCertificate [0] version INTEGER 2 (v3)
    buf[12] = 3
    signer = cose_sign.WithHeaders(cose_sign.signing_key(key), {33: bytes(buf)})
    batch_bytes = BatchSigner(signer, "gw-1").sign([REC], 0, 1).data
    with pytest.raises(BatchError) as e:
        batch.verify(batch_bytes, gwcert.CaTrust.from_files(cas["intl"].cert.read_bytes()).resolver())
    assert e.value.reason == "bad_certificate"
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(buf)) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(gwcert.CertError, match=r"not an X\.509 certificate"):
        gwcert.load_chain(pem)


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) items of a DER sequence's content (definite lengths only)."""
    out, i = [], 0
    while i < len(data):
        tag, n = data[i], data[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(data[i:i + k], "big")
            i += k
        out.append((tag, data[i:i + n]))
        i += n
    return out


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    head = bytes((n,)) if n < 0x80 else bytes((0x80 | ((n.bit_length() + 7) // 8),)) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes((tag,)) + head + body


def test_a_certificate_with_a_duplicated_extension_is_refused(cas: dict[str, TestCA], tmp_path: Path) -> None:
    """cryptography raises DuplicateExtension (not a ValueError) when the extensions are first read; the
    sink and the gateway's own certificate check both turn it into a refusal with a reason."""
    key = keys.generate_for("intl")
    der = ders(cas["intl"].issue(gwcert.make_csr(key, "gw-1"), "gw-1"))[0]
    [(_, cert_body)] = _der_items(der)
    tbs_tag_body, *rest = _der_items(cert_body)
    tbs = []
    for tag, body in _der_items(tbs_tag_body[1]):
        if tag == 0xA3:  # [3] Extensions: SEQUENCE OF Extension; repeat the first one
            [(_, exts)] = _der_items(body)
            first = _der_items(exts)[0]
            body = _der(0x30, exts + _der(*first))
        tbs.append(_der(tag, body))
    mangled = _der(0x30, _der(0x30, b"".join(tbs)) + b"".join(_der(t, b) for t, b in rest))
    signer = cose_sign.WithHeaders(cose_sign.signing_key(key), {33: mangled})
    batch_bytes = BatchSigner(signer, "gw-1").sign([REC], 0, 1).data
    with pytest.raises(BatchError) as e:
        batch.verify(batch_bytes, gwcert.CaTrust.from_files(cas["intl"].cert.read_bytes()).resolver())
    assert e.value.reason == "bad_certificate"
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(mangled) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(gwcert.CertError, match=r"gateway\.certificate_file: .*malformed"):
        gwcert.attach_chain(cose_sign.signing_key(key), pem, "gw-1", now=time.time())
