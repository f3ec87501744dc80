"""A throwaway city CA for tests and benchmarks, run with the ``openssl`` command line (both suites).

Suite ``sm``: an SM2 CA key, certificates and CRLs signed with SM2-with-SM3 (user id 1234567812345678);
suite ``intl``: an Ed25519 CA. ``issue`` signs a gateway's CSR (as ``lifeline gateway csr`` writes it) with
keyUsage digitalSignature and the gateway id as subject CN and SAN dNSName; ``revoke`` + ``crl`` make the
CA's CRL. Using the openssl CLI also makes the CA an implementation independent of Lifeline's own code.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from lifeline.protocols import sm2

_CNF = """[ca]
default_ca = city
[city]
database = {d}/index.txt
new_certs_dir = {d}
serial = {d}/serial
crlnumber = {d}/crlnumber
default_md = {md}
default_crl_days = 30
policy = any
[any]
commonName = supplied
"""


class TestCAError(RuntimeError):
    pass


class TestCA:
    """A CA in ``workdir``: ``ca.key`` (0600), ``ca.pem``; ``issue``/``revoke``/``crl``."""

    __test__ = False  # not a pytest class

    def __init__(self, workdir: Path, suite: str = "sm", name: str = "Lifeline Test City CA",
                 parent: TestCA | None = None) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.suite = suite
        self.key = self.dir / "ca.key"
        self.cert = self.dir / "ca.pem"
        self._n = 0
        (self.dir / "index.txt").touch()
        (self.dir / "serial").write_text("1000\n")
        (self.dir / "crlnumber").write_text("1000\n")
        (self.dir / "ca.cnf").write_text(_CNF.format(d=self.dir, md="sm3" if suite == "sm" else "default"))
        self._run("genpkey", "-algorithm", "SM2" if suite == "sm" else "ED25519", "-out", str(self.key))
        self.key.chmod(0o600)
        ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
        if parent is None:
            self._run("req", "-x509", "-new", "-key", str(self.key), *self._sig(), "-subj", f"/CN={name}",
                      "-days", "3650", *ext, "-out", str(self.cert))
        else:  # an intermediate CA signed by ``parent``
            csr = self.dir / "ca.csr"
            self._run("req", "-new", "-key", str(self.key), *self._sig(), "-subj", f"/CN={name}", "-out", str(csr))
            extfile = self.dir / "ca.ext"
            extfile.write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
            parent._sign_csr(csr, extfile, self.cert, self._vfy())

    def _sig(self) -> list[str]:
        return ["-sm3", "-sigopt", "distid:1234567812345678"] if self.suite == "sm" else []

    def _vfy(self) -> list[str]:
        return ["-vfyopt", "distid:1234567812345678"] if self.suite == "sm" else []

    def _run(self, *args: str) -> bytes:
        r = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, timeout=60, check=False)
        if r.returncode != 0:
            raise TestCAError(f"openssl {args[0]}: {r.stderr.decode(errors='replace')[-500:]}")
        return r.stdout

    def _sign_csr(self, csr: Path, extfile: Path, out: Path, vfy: list[str], days: int = 365) -> None:
        self._run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                  "-CAcreateserial", *self._sig(), *vfy, "-days", str(days), "-extfile", str(extfile),
                  "-out", str(out))

    def issue(self, csr_pem: bytes, gateway_id: str, *, days: int = 365, key_usage: str = "digitalSignature",
              ca: bool = False) -> bytes:
        """A certificate (PEM) for the CSR, naming ``gateway_id`` (subject CN from the CSR, SAN dNSName)."""
        self._n += 1
        csr = self.dir / f"req{self._n}.csr"
        csr.write_bytes(csr_pem)
        extfile = self.dir / f"req{self._n}.ext"
        extfile.write_text(f"basicConstraints=critical,CA:{'TRUE' if ca else 'FALSE'}\n"
                           f"keyUsage=critical,{key_usage}\nsubjectAltName=DNS:{gateway_id}\n")
        out = self.dir / f"cert{self._n}.pem"
        sm2_csr = b"BEGIN CERTIFICATE REQUEST" in csr_pem and _csr_is_sm2(csr_pem)
        self._sign_csr(csr, extfile, out, ["-vfyopt", "distid:1234567812345678"] if sm2_csr else [], days)
        return out.read_bytes()

    def chain(self, leaf_pem: bytes) -> bytes:
        """``leaf_pem`` followed by this CA's certificate when it is an intermediate (leaf first)."""
        return leaf_pem + (self.cert.read_bytes() if (self.dir / "ca.csr").exists() else b"")

    def revoke(self, cert_pem: bytes) -> None:
        self._n += 1
        path = self.dir / f"revoke{self._n}.pem"
        path.write_bytes(cert_pem)
        self._run("ca", "-config", "ca.cnf", "-keyfile", str(self.key), "-cert", str(self.cert),
                  "-revoke", str(path))

    def crl(self) -> bytes:
        out = self.dir / "crl.pem"
        self._run("ca", "-config", "ca.cnf", "-keyfile", str(self.key), "-cert", str(self.cert), "-gencrl",
                  *(["-sigopt", "distid:1234567812345678"] if self.suite == "sm" else []), "-out", str(out))
        return out.read_bytes()


def _csr_is_sm2(csr_pem: bytes) -> bool:
    blocks = [d for label, d in sm2.pem_blocks(csr_pem) if label == "CERTIFICATE REQUEST"]
    return bool(blocks) and bytes.fromhex("2a811ccf55018375") in blocks[0]  # sm2sign-with-sm3 OID
