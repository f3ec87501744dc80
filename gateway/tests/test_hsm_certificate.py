"""A CA-issued identity for a key that lives in a PKCS#11 token (SoftHSM2): the token signs the CSR (checked
by the openssl command line), the chain rides in batches the token signs, and the platform's CA check
accepts them; a certificate from another CA is refused, and one for another key is refused at the gateway."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from lifeline.gateway import hsm
from lifeline.protocols import batch, gwcert, keys, schema
from lifeline.tools.softhsm import SoftHsm
from lifeline.tools.testca import TestCA

TOKEN = "lifeline-spare"
LABEL = "gw-identity"
GW = "gw-hsm"


def test_token_key_gets_a_ca_identity(softhsm: SoftHsm, tmp_path: Path) -> None:
    admin = hsm.Token(softhsm.module, TOKEN, softhsm.pins[TOKEN], rw=True)
    try:
        admin.generate_signing_key(LABEL)
    finally:
        admin.close()
    token = hsm.Token(softhsm.module, TOKEN, softhsm.pins[TOKEN])
    try:
        signer = token.signer(LABEL)
        csr = gwcert.make_csr(signer, GW)
        (tmp_path / "gw.csr").write_bytes(csr)
        r = subprocess.run(["openssl", "req", "-in", "gw.csr", "-noout", "-verify", "-text"], cwd=tmp_path,
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0 and "DNS:gw-hsm" in r.stdout and "ED25519" in r.stdout, r.stderr
        city, rogue = TestCA(tmp_path / "city", "sm"), TestCA(tmp_path / "rogue", "sm")
        cert = city.issue(csr, GW)
        with pytest.raises(gwcert.CertError, match="not for this gateway's signing key"):
            other = keys.generate_for("intl")
            gwcert.attach_chain(signer, city.issue(gwcert.make_csr(other, GW), GW), GW, now=time.time())
        rec = batch.BatchRecord(device_id=bytes(8), fcnt=1, node_time=5, rx_ms=1_700_000_000_000,
                                kind=schema.K_SMOKE, fields={1: 0}, data_class=1, receptions=())
        data = batch.BatchSigner(gwcert.attach_chain(signer, cert, GW, now=time.time()), GW).sign(
            [rec], lane=0, created_ms=1).data
        assert batch.verify(data, gwcert.CaTrust.from_files(city.cert.read_bytes()).resolver()).gateway_id == GW
        with pytest.raises(batch.BatchError) as info:
            batch.verify(data, gwcert.CaTrust.from_files(rogue.cert.read_bytes()).resolver())
        assert info.value.reason == "untrusted_certificate"
    finally:
        token.close()
