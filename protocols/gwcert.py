"""Gateway identity from the city's CA: certificate requests, the x5chain batch header, and chain checks.

* Gateway side: :func:`make_csr` writes a PKCS#10 request for the gateway key (Ed25519, or SM2 signed with
  SM2-with-SM3, OID 1.2.156.10197.1.501, default user id); :func:`load_chain` reads the issued chain (PEM,
  leaf first) and :func:`x5chain_header` puts it in the batch's protected header (COSE ``x5chain``, label 33,
  RFC 9360: one certificate as a bstr, several as an array of bstr).
* Platform side: :class:`CaTrust` holds the trust anchor CA certificates and, optionally, the CA's CRL. It
  checks a batch's chain (each certificate signed by the next, the last by an anchor; validity with the
  verifier's clock; CA flags on issuers; the leaf's key usage includes digitalSignature and it is no CA; the
  gateway id is the leaf's subject CN or a SAN dNSName; the leaf and intermediates are not on the CRL) and
  returns the leaf key as a :class:`~lifeline.protocols.cose_sign.VerifyKey`. :meth:`CaTrust.resolver` plugs
  it into :func:`lifeline.protocols.batch.verify`. Every refusal is a ``BatchError`` with a reason below.

Certificates signed with Ed25519, ECDSA or RSA are checked by ``cryptography``; SM2-with-SM3 ones by
:mod:`lifeline.protocols.sm2` over the tbsCertificate (``cryptography`` parses them but has no SM2).

CPython only.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from lifeline.protocols import cose_sign, sm2
from lifeline.protocols.batch import BatchError
from lifeline.protocols.cose_sign import VerifyKey

H_X5CHAIN: Final = 33
SM2_SIG_OID: Final = x509.ObjectIdentifier(sm2.SIG_OID)
MAX_CHAIN: Final = 4  # certificates in one x5chain
MAX_CERT_BYTES: Final = 8192

# refusal reasons (BatchError.reason), counted by the platform sink
R_NO_CERTIFICATE: Final = "no_certificate"  # CA mode, but the batch carries no x5chain
R_BAD_CERTIFICATE: Final = "bad_certificate"  # not DER X.509, too many, too large, unsupported key
R_UNTRUSTED_CERTIFICATE: Final = "untrusted_certificate"  # not issued (signed) by the configured CA
R_CERTIFICATE_EXPIRED: Final = "certificate_expired"  # outside its validity period (sink clock)
R_BAD_KEY_USAGE: Final = "bad_key_usage"  # leaf without digitalSignature, a CA as leaf, an issuer not a CA
R_GATEWAY_MISMATCH: Final = "gateway_mismatch"  # the certificate does not name the batch's gateway id
R_REVOKED: Final = "revoked"  # on the CA's CRL
CHAIN_REASONS: Final = (R_NO_CERTIFICATE, R_BAD_CERTIFICATE, R_UNTRUSTED_CERTIFICATE, R_CERTIFICATE_EXPIRED,
                        R_BAD_KEY_USAGE, R_GATEWAY_MISMATCH, R_REVOKED)


class CertError(ValueError):
    """A certificate, chain, CSR or CRL file that cannot be used (configuration time)."""


# ---------------------------------------------------------------------------------------------- DER bits


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(b),)) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _der_len(len(body)) + body


def _read_tlv(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER item at ``pos``."""
    if pos + 2 > len(buf):
        raise CertError("truncated DER")
    tag, n, pos = buf[pos], buf[pos + 1], pos + 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 3 or pos + k > len(buf):
            raise CertError("bad DER length")
        n, pos = int.from_bytes(buf[pos:pos + k], "big"), pos + k
    if pos + n > len(buf):
        raise CertError("truncated DER")
    return tag, pos, pos + n


def spki_der(cert: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo DER of ``cert`` (also for keys ``cryptography`` cannot load, such as SM2)."""
    tbs = cert.tbs_certificate_bytes
    _, pos, end = _read_tlv(tbs, 0)
    fields: list[tuple[int, int, int]] = []
    while pos < end and len(fields) < 7:
        tag, _, ve = _read_tlv(tbs, pos)
        fields.append((tag, pos, ve))
        pos = ve
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    if len(fields) < 6:
        raise CertError("tbsCertificate too short")
    _, s, e = fields[5]  # serial, signature, issuer, validity, subject, subjectPublicKeyInfo
    return tbs[s:e]


# ---------------------------------------------------------------------------------------------- keys


def _verify_key_of(cert: x509.Certificate) -> VerifyKey:
    """The batch verify key of a gateway certificate (Ed25519 or SM2)."""
    try:
        pub = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        pub = None
    if isinstance(pub, Ed25519PublicKey):
        return cose_sign.Ed25519Verifier(pub)
    if pub is None:
        try:
            return cose_sign.Sm2Verifier(sm2.SM2PublicKey.from_spki_der(spki_der(cert)))
        except (sm2.Sm2Error, CertError):
            pass
    raise BatchError(R_BAD_CERTIFICATE, "the gateway certificate's key is neither Ed25519 nor SM2")


def public_key_matches(cert: x509.Certificate, key: object) -> bool:
    """True if ``cert`` certifies the public half of ``key`` (a private/public key or a SigningKey)."""
    v = _verify_key_of(cert)
    if isinstance(key, cose_sign.Ed25519Signer | cose_sign.Sm2Signer):
        key = key.private_key
    if isinstance(key, Ed25519PrivateKey | sm2.SM2PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey) and isinstance(v, cose_sign.Ed25519Verifier):
        return key.public_bytes_raw() == v.raw()
    if isinstance(key, sm2.SM2PublicKey) and isinstance(v, cose_sign.Sm2Verifier):
        return key.point() == v.raw()
    return False


def check_signature(cert_or_crl: x509.Certificate | x509.CertificateRevocationList,
                    issuer: x509.Certificate) -> bool:
    """True if ``issuer``'s key signed ``cert_or_crl`` (Ed25519, ECDSA, RSA through cryptography; SM2-SM3)."""
    tbs = (cert_or_crl.tbs_certificate_bytes if isinstance(cert_or_crl, x509.Certificate)
           else cert_or_crl.tbs_certlist_bytes)
    if cert_or_crl.signature_algorithm_oid == SM2_SIG_OID:
        try:
            pub = sm2.SM2PublicKey.from_spki_der(spki_der(issuer))
            pub.verify_der(cert_or_crl.signature, tbs)
        except (sm2.Sm2Error, CertError, InvalidSignature):
            return False
        return True
    try:
        if isinstance(cert_or_crl, x509.Certificate):
            cert_or_crl.verify_directly_issued_by(issuer)
            return True
        return cert_or_crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False


# ---------------------------------------------------------------------------------------------- gateway side


_ED25519_ALGID: Final = bytes.fromhex("300506032b6570")  # id-Ed25519, no parameters (RFC 8410)


def signer_public_key(key: object) -> Ed25519PublicKey | sm2.SM2PublicKey | None:
    """The public key behind a private key or SigningKey, if it can be known here (file keys; a token
    signer that offers ``public_key()``); None otherwise."""
    if isinstance(key, cose_sign.WithHeaders):
        key = key.inner
    if isinstance(key, cose_sign.Ed25519Signer | cose_sign.Sm2Signer):
        key = key.private_key
    if isinstance(key, Ed25519PrivateKey | sm2.SM2PrivateKey):
        return key.public_key()
    get = getattr(key, "public_key", None)
    pub = get() if callable(get) else None
    return pub if isinstance(pub, Ed25519PublicKey | sm2.SM2PublicKey) else None


def make_csr(key: Ed25519PrivateKey | sm2.SM2PrivateKey | cose_sign.SigningKey, gateway_id: str) -> bytes:
    """A PEM PKCS#10 request: subject CN = gateway id, SAN dNSName = gateway id, signed by ``key``: a private
    key, or any SigningKey whose public key is known (``public_key()``, e.g. a PKCS#11 token signer)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])
    san = x509.SubjectAlternativeName([x509.DNSName(gateway_id)])
    if isinstance(key, Ed25519PrivateKey):
        csr = x509.CertificateSigningRequestBuilder().subject_name(name).add_extension(san, critical=False)
        return csr.sign(key, None).public_bytes(serialization.Encoding.PEM)
    # Otherwise built here (RFC 2986): cryptography cannot sign with SM2 or through a SigningKey.
    signer = cose_sign.signing_key(key)
    pub = signer_public_key(key)
    if pub is None:
        raise CertError("the signing key does not tell its public key; cannot make a request for it")
    if isinstance(pub, sm2.SM2PublicKey):
        spki, algid = pub.spki_der(), sm2.SIG_ALGID_DER
    else:
        spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        algid = _ED25519_ALGID
    ext = _tlv(0x30, _tlv(0x06, bytes.fromhex("551d11")) + _tlv(0x04, san_der(gateway_id)))  # subjectAltName
    ext_req = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a864886f70d01090e")) + _tlv(0x31, _tlv(0x30, ext)))
    info = _tlv(0x30, b"\x02\x01\x00" + name.public_bytes() + spki + _tlv(0xA0, ext_req))
    raw = signer.sign(info)  # SM2: r||s with SM3 over Z_A||info; Ed25519: the signature over info
    sig = sm2.rs_to_der(raw) if signer.alg == cose_sign.ALG_SM2_SM3 else raw
    der = _tlv(0x30, info + algid + _tlv(0x03, b"\x00" + sig))
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def san_der(gateway_id: str) -> bytes:
    return _tlv(0x30, _tlv(0x82, gateway_id.encode("ascii")))  # GeneralNames { dNSName }


# What cryptography raises for bytes that are not a certificate it can read: ValueError for most damage,
# x509.InvalidVersion for a version field other than v1 or v3 and x509.DuplicateExtension (neither is a
# ValueError) for an extension that appears twice (found lazily, when the extensions are first read).
_DER_ERRORS = (ValueError, x509.InvalidVersion, x509.DuplicateExtension)


def load_chain(data: bytes, what: str = "certificate file") -> list[x509.Certificate]:
    """PEM certificates, leaf first. Raises CertError naming ``what``."""
    blocks = [der for label, der in sm2.pem_blocks(data) if label == "CERTIFICATE"]
    if not blocks:
        raise CertError(f"{what}: no PEM CERTIFICATE block")
    if len(blocks) > MAX_CHAIN:
        raise CertError(f"{what}: {len(blocks)} certificates; at most {MAX_CHAIN}")
    try:
        return [x509.load_der_x509_certificate(b) for b in blocks]
    except _DER_ERRORS as e:
        raise CertError(f"{what}: not an X.509 certificate ({e})") from None


def x5chain_header(chain: Sequence[x509.Certificate]) -> dict[int, Any]:
    """The protected header entry carrying ``chain`` (RFC 9360: a bstr for one, an array for several)."""
    ders = [c.public_bytes(serialization.Encoding.DER) for c in chain]
    return {H_X5CHAIN: ders[0] if len(ders) == 1 else ders}


def attach_chain(signer: cose_sign.SigningKey, chain_pem: bytes, gateway_id: str, *, now: float,
                 what: str = "gateway.certificate_file") -> cose_sign.SigningKey:
    """``signer`` with the chain in its protected header, after checking that the chain fits: the leaf
    certifies the signer's key (when its public key is known here, see signer_public_key), names
    ``gateway_id``, and is within its validity period. Raises CertError naming ``what``."""
    chain = load_chain(chain_pem, what)
    leaf = chain[0]
    pub = signer_public_key(signer)
    if pub is not None:
        try:
            matches = public_key_matches(leaf, pub)
        except BatchError:
            matches = False
        if not matches:
            raise CertError(f"{what}: the certificate is not for this gateway's signing key "
                            f"(suite {signer.suite})")
    try:
        names = leaf_names(leaf)
    except CertError as e:
        raise CertError(f"{what}: {e}") from None
    if gateway_id not in names:
        raise CertError(f"{what}: the certificate names {sorted(names)}, not gateway {gateway_id!r}")
    t = datetime.fromtimestamp(now, tz=UTC)
    if not leaf.not_valid_before_utc <= t <= leaf.not_valid_after_utc:
        raise CertError(f"{what}: the certificate is valid {leaf.not_valid_before_utc.isoformat()} to "
                        f"{leaf.not_valid_after_utc.isoformat()}, not now")
    return cose_sign.WithHeaders(signer, x5chain_header(chain))


def leaf_names(cert: x509.Certificate) -> set[str]:
    names = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names.update(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    except _DER_ERRORS as e:
        raise CertError(f"the certificate's extensions are malformed ({type(e).__name__})") from None
    return names


# ---------------------------------------------------------------------------------------------- platform side


@dataclass(frozen=True, slots=True)
class _Checked:
    """A chain whose signatures and structure hold (cached by its bytes); dates and CRL are rechecked."""

    key: VerifyKey
    names: frozenset[str]
    periods: tuple[tuple[datetime, datetime], ...]
    serials: tuple[tuple[bytes, int], ...]  # (issuer DER, serial) of every non-anchor certificate


class CaTrust:
    """Trust anchors (the city CA) and an optional CRL, for gateways that carry an x5chain."""

    def __init__(self, anchors: Sequence[x509.Certificate], crl: x509.CertificateRevocationList | None = None,
                 *, clock: Callable[[], float] | None = None, cache_size: int = 1024) -> None:
        if not anchors:
            raise CertError("no trust anchor")
        self.anchors = list(anchors)
        self._clock = clock
        self._cache: dict[bytes, _Checked] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.revoked: frozenset[tuple[bytes, int]] = frozenset()
        self.crl_next_update: datetime | None = None
        self.crl_path: Path | None = None  # watched for a new CRL (see watch_crl)
        self.crl_reloads = 0
        self.crl_reload_errors = 0
        self.crl_error = ""
        self._crl_stat: tuple[int, int] | None = None
        self._crl_checked = 0.0
        self._crl_every_s = 10.0
        if crl is not None:
            self.set_crl(crl)

    @classmethod
    def from_paths(cls, ca_path: Path, crl_path: Path | None = None, *, clock: Callable[[], float] | None = None,
                   reload_every_s: float = 10.0) -> CaTrust:
        """From files; a CRL file is watched: a replaced one is loaded (after its signature is checked)."""
        crl = crl_path.read_bytes() if crl_path is not None else None
        trust = cls.from_files(ca_path.read_bytes(), crl, clock=clock, ca_name=str(ca_path), crl_name=str(crl_path))
        if crl_path is not None:
            trust.watch_crl(crl_path, reload_every_s)
        return trust

    def watch_crl(self, path: Path, every_s: float = 10.0) -> None:
        self.crl_path = path
        self._crl_every_s = every_s
        self._crl_stat = self._stat(path)
        self._crl_checked = time.monotonic()

    @staticmethod
    def _stat(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def maybe_reload_crl(self, force: bool = False) -> bool:
        """Load the watched CRL file again if it changed (checked at most every ``every_s``). A CRL that
        cannot be read, parsed or is not signed by the CA is not used: the previous one stays in force and
        ``crl_reload_errors``/``crl_error`` say why. True if a new CRL was loaded."""
        path = self.crl_path
        if path is None:
            return False
        now = time.monotonic()
        if not force and now - self._crl_checked < self._crl_every_s:
            return False
        self._crl_checked = now
        st = self._stat(path)
        if st == self._crl_stat and not force:
            return False
        self._crl_stat = st
        try:
            data = path.read_bytes()
            crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
            self.set_crl(crl, str(path))
        except (OSError, ValueError, CertError) as e:
            self.crl_reload_errors += 1
            self.crl_error = f"{path}: {e}"
            return False
        self.crl_reloads += 1
        self.crl_error = ""
        return True

    @classmethod
    def from_files(cls, ca: bytes, crl: bytes | None = None, *, clock: Callable[[], float] | None = None,
                   ca_name: str = "--ca", crl_name: str = "--crl") -> CaTrust:
        anchors = load_chain(ca, ca_name)
        for a in anchors:
            try:
                is_ca = _is_ca(a)
            except _DER_ERRORS as e:
                raise CertError(f"{ca_name}: a certificate has malformed extensions ({e})") from None
            if not is_ca:
                raise CertError(f"{ca_name}: {a.subject.rfc4514_string()} is not a CA certificate "
                                "(basicConstraints cA)")
        trust = cls(anchors, clock=clock)
        if crl is not None:
            try:
                parsed = (x509.load_pem_x509_crl(crl) if b"-----BEGIN" in crl else x509.load_der_x509_crl(crl))
            except ValueError as e:
                raise CertError(f"{crl_name}: not an X.509 CRL ({e})") from None
            try:
                trust.set_crl(parsed, crl_name)
            except ValueError as e:
                raise CertError(f"{crl_name}: malformed CRL ({e})") from None
        return trust

    def set_crl(self, crl: x509.CertificateRevocationList, what: str = "CRL") -> None:
        """Use ``crl`` (it must be signed by one of the anchors)."""
        issuer = next((a for a in self.anchors if a.subject == crl.issuer and check_signature(crl, a)), None)
        if issuer is None:
            raise CertError(f"{what}: not issued (signed) by a configured CA")
        issuer_der = crl.issuer.public_bytes()
        with self._lock:
            self.revoked = frozenset((issuer_der, r.serial_number) for r in crl)
            self.crl_next_update = crl.next_update_utc

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Judge validity periods with ``clock`` (Unix seconds)."""
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock() if self._clock else time.time(), tz=UTC)

    def verify_chain(self, ders: Sequence[bytes], gateway_id: str) -> VerifyKey:
        """Check a gateway's chain (DER, leaf first) for ``gateway_id``; the leaf's key, or BatchError."""
        fp = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in ders)).digest()
        checked = self._cache.get(fp)
        if checked is None:
            try:
                checked = self._check_structure(ders)
            except (*_DER_ERRORS, TypeError, UnsupportedAlgorithm, CertError) as e:  # lazily parsed parts
                if isinstance(e, BatchError):
                    raise
                raise BatchError(R_BAD_CERTIFICATE, f"a certificate of the x5chain is malformed "
                                 f"({type(e).__name__})") from None
            with self._lock:
                if len(self._cache) >= self._cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[fp] = checked
        now = self._now()
        for nb, na in checked.periods:
            if not nb <= now <= na:
                when = "not valid before" if now < nb else "expired"
                raise BatchError(R_CERTIFICATE_EXPIRED, f"{when} {nb.isoformat() if now < nb else na.isoformat()} "
                                 f"(sink clock {now.isoformat(timespec='seconds')})")
        for s in checked.serials:
            if s in self.revoked:
                raise BatchError(R_REVOKED, f"certificate serial {s[1]:x} is on the CA's CRL")
        if gateway_id not in checked.names:
            raise BatchError(R_GATEWAY_MISMATCH, f"the certificate names {sorted(checked.names)}, the batch "
                             f"gateway {gateway_id!r}")
        return checked.key

    def _check_structure(self, ders: Sequence[bytes]) -> _Checked:
        if not 1 <= len(ders) <= MAX_CHAIN or any(len(d) > MAX_CERT_BYTES for d in ders):
            raise BatchError(R_BAD_CERTIFICATE, f"x5chain of {len(ders)} certificates; 1..{MAX_CHAIN} of at most "
                             f"{MAX_CERT_BYTES} bytes")
        try:
            certs = [x509.load_der_x509_certificate(d) for d in ders]
        except _DER_ERRORS:
            raise BatchError(R_BAD_CERTIFICATE, "x5chain holds something that is not a DER X.509 certificate") \
                from None
        anchor_ders = {a.public_bytes(serialization.Encoding.DER) for a in self.anchors}
        while len(certs) > 1 and certs[-1].public_bytes(serialization.Encoding.DER) in anchor_ders:
            certs.pop()  # a chain may end with the anchor itself
        leaf = certs[0]
        key = _verify_key_of(leaf)
        if _is_ca(leaf):
            raise BatchError(R_BAD_KEY_USAGE, "the gateway certificate is a CA certificate")
        try:
            ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            raise BatchError(R_BAD_KEY_USAGE, "the gateway certificate has no keyUsage extension") from None
        if not ku.digital_signature:
            raise BatchError(R_BAD_KEY_USAGE, "the gateway certificate's keyUsage lacks digitalSignature")
        for child, parent in itertools.pairwise(certs):
            if not _is_ca(parent):
                raise BatchError(R_BAD_KEY_USAGE, f"issuer {parent.subject.rfc4514_string()} is not a CA")
            if child.issuer != parent.subject or not check_signature(child, parent):
                raise BatchError(R_UNTRUSTED_CERTIFICATE,
                                 f"{child.subject.rfc4514_string()} is not signed by the next certificate")
        top = certs[-1]
        if not any(top.issuer == a.subject and check_signature(top, a) for a in self.anchors):
            raise BatchError(R_UNTRUSTED_CERTIFICATE, f"{top.subject.rfc4514_string()} (issuer "
                             f"{top.issuer.rfc4514_string()}) is not issued by the configured CA")
        return _Checked(
            key=key,
            names=frozenset(leaf_names(leaf)),
            periods=tuple((c.not_valid_before_utc, c.not_valid_after_utc) for c in certs),
            serials=tuple((c.issuer.public_bytes(), c.serial_number) for c in certs),
        )

    def resolver(self) -> Callable[[Mapping[Any, Any], Mapping[Any, Any]], VerifyKey]:
        """A key resolver for :func:`lifeline.protocols.batch.verify`: the key of the batch's x5chain."""

        def resolve(protected: Mapping[Any, Any], unprotected: Mapping[Any, Any]) -> VerifyKey:
            self.maybe_reload_crl()
            if H_X5CHAIN not in protected:
                where = " (it is unprotected; it must be protected)" if H_X5CHAIN in unprotected else ""
                raise BatchError(R_NO_CERTIFICATE, f"no x5chain (label 33) in the protected header{where}")
            value = protected[H_X5CHAIN]
            ders = [value] if isinstance(value, bytes) else value
            if not isinstance(ders, list) or not all(isinstance(d, bytes) for d in ders):
                raise BatchError(R_BAD_CERTIFICATE, "x5chain must be a bstr or an array of bstr")
            kid = protected.get(4)
            if not isinstance(kid, bytes):
                raise BatchError("bad_header", "kid (gateway id) missing or not a byte string")
            return self.verify_chain(ders, kid.decode("utf-8", "replace"))

        return resolve


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()
