"""Keys in a PKCS#11 token (HSM, TPM, cipher machine; SoftHSM2 in the tests): they are used, never read.

* :class:`TokenSigner`: the gateway's Ed25519 batch signing key (CKM_EDDSA, RFC 8032 pure Ed25519, the
  signature COSE alg -8 names). ``sign(data)`` hands the Sig_structure to the token and gets 64 bytes back.
* :class:`TokenKek`: an AES-256 key-encryption key for the registry (CKM_AES_GCM inside the token); the
  wrapped-key format is ``gateway/kek.py``'s, suite intl.

One session per :class:`Token`, guarded by a lock (PKCS#11 sessions are not for concurrent use; the
forwarder signs on the DB thread, the registry unwraps on a worker thread). The PIN comes from a 0600 file
and is never logged; library errors are reduced to their PKCS#11 error name, never their text.
SoftHSM2 has no SM2 or SM4 mechanisms: an ``sm`` deployment's token is a cipher machine exposing them
through GM/T 0018 (SDF) or vendor PKCS#11 mechanisms (docs/keys.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lifeline.gateway import kek as keywrap
from lifeline.gateway.config import Pkcs11Config
from lifeline.gateway.secretfile import SecretFileError, read_secret

COSE_ALG_EDDSA = -8
ED25519_OID = "1.3.101.112"


class TokenError(Exception):
    """A token, key or PIN that cannot be used. Names the module, token and label; never the PIN."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing  # the key label is not in the token (as opposed to a token or PIN problem)


def _reason(e: BaseException) -> str:
    """A PKCS#11 error as its class name (``PinIncorrect``, ``NoSuchKey``): library text can echo input."""
    return type(e).__name__


def read_pin(path: Path) -> str:
    try:
        data = read_secret(path, "token PIN file")
    except SecretFileError as e:
        raise TokenError(str(e)) from None
    pin = data.decode("utf-8", "replace").strip()
    if not pin or "\n" in pin:
        raise TokenError(f"token PIN file {path}: expected the PIN on one line")
    return pin


class Token:
    """An open, logged-in session on one token of one PKCS#11 module."""

    def __init__(self, module: Path, token_label: str, pin: str, *, rw: bool = False) -> None:
        import pkcs11

        self.module = module
        self.token_label = token_label
        self.lock = threading.Lock()
        where = f"PKCS#11 module {module}, token {token_label!r}"
        self.where = where
        try:
            lib = pkcs11.lib(str(module))
        except (pkcs11.PKCS11Error, OSError) as e:
            raise TokenError(f"{where}: cannot load the module ({_reason(e)})") from None
        try:
            token = lib.get_token(token_label=token_label)
        except pkcs11.NoSuchToken:
            raise TokenError(f"{where}: no such token") from None
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"{where}: {_reason(e)}") from None
        try:
            self.session: Any = token.open(user_pin=pin, rw=rw)
        except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange):
            raise TokenError(f"{where}: the PIN was refused (check the PIN file)") from None
        except pkcs11.PinLocked:
            raise TokenError(f"{where}: the user PIN is locked (too many wrong PINs; the security officer "
                             "must reset it)") from None
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"{where}: cannot log in ({_reason(e)})") from None

    @classmethod
    def from_config(cls, cfg: Pkcs11Config, *, rw: bool = False) -> Token:
        return cls(cfg.module, cfg.token_label, read_pin(cfg.pin_file), rw=rw)

    def close(self) -> None:
        import pkcs11

        with self.lock, contextlib.suppress(pkcs11.PKCS11Error):
            self.session.close()

    def __repr__(self) -> str:
        return f"Token({self.where})"

    def _find(self, object_class: Any, label: str, key_type: Any) -> Any:
        import pkcs11

        try:
            with self.lock:
                return self.session.get_key(object_class=object_class, key_type=key_type, label=label)
        except pkcs11.NoSuchKey:
            raise TokenError(f"{self.where}: no {key_type.name} {object_class.name} labelled {label!r}",
                             missing=True) from None
        except pkcs11.MultipleObjectsReturned:
            raise TokenError(f"{self.where}: more than one {object_class.name} labelled {label!r}") from None
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"{self.where}: key {label!r}: {_reason(e)}") from None

    def signer(self, label: str) -> TokenSigner:
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass

        priv = self._find(ObjectClass.PRIVATE_KEY, label, KeyType.EC_EDWARDS)
        pub = self._find(ObjectClass.PUBLIC_KEY, label, KeyType.EC_EDWARDS)
        try:
            with self.lock:
                point = bytes(pub[Attribute.EC_POINT])
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"{self.where}: key {label!r}: cannot read the public point ({_reason(e)})") from None
        raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point  # DER OCTET STRING or raw
        if len(raw) != 32:
            raise TokenError(f"{self.where}: key {label!r} is not an Ed25519 key (public point of {len(raw)} bytes)")
        return TokenSigner(self, label, priv, Ed25519PublicKey.from_public_bytes(raw))

    def kek(self, label: str) -> TokenKek:
        from pkcs11 import KeyType, ObjectClass

        return TokenKek(self, label, self._find(ObjectClass.SECRET_KEY, label, KeyType.AES))

    # -------------------------------------------------------------- key creation (needs rw=True)

    def generate_signing_key(self, label: str) -> Ed25519PublicKey:
        """A new Ed25519 key pair in the token: private part sensitive and not extractable."""
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism
        from pkcs11.util.ec import encode_named_curve_parameters

        try:
            with self.lock:
                params = self.session.create_domain_parameters(
                    KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)},
                    local=True)
                params.generate_keypair(store=True, label=label, mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                                        private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"{self.where}: cannot generate Ed25519 key {label!r} ({_reason(e)})") from None
        return self.signer(label).public_key()

    def import_signing_key(self, label: str, key: Ed25519PrivateKey) -> Ed25519PublicKey:
        """Move an existing Ed25519 key into the token (sensitive, not extractable): the platform's trust in
        the gateway's public key stays as it is. Delete the key file afterwards (docs/keys.md)."""
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass
        from pkcs11.util.ec import encode_named_curve_parameters

        params = encode_named_curve_parameters(ED25519_OID)
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        try:
            with self.lock:
                self.session.create_object({
                    Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
                    Attribute.EC_PARAMS: params, Attribute.VALUE: seed, Attribute.TOKEN: True,
                    Attribute.LABEL: label, Attribute.SIGN: True, Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True})
                self.session.create_object({
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
                    Attribute.EC_PARAMS: params, Attribute.EC_POINT: b"\x04\x20" + public, Attribute.TOKEN: True,
                    Attribute.LABEL: label, Attribute.VERIFY: True})
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"{self.where}: cannot import Ed25519 key {label!r} ({_reason(e)})") from None
        return self.signer(label).public_key()

    def generate_kek(self, label: str) -> None:
        """A new AES-256 key in the token: sensitive, not extractable, for encrypt/decrypt only."""
        import pkcs11
        from pkcs11 import Attribute, KeyType

        try:
            with self.lock:
                self.session.generate_key(KeyType.AES, 256, label=label, store=True,
                                          template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False})
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"{self.where}: cannot generate AES key {label!r} ({_reason(e)})") from None


class TokenSigner:
    """The batch signing key inside the token, a ``cose_sign.SigningKey`` (suite intl, COSE alg -8).

    ``sign`` returns the raw 64-byte Ed25519 signature the token made over the Sig_structure.
    """

    alg = COSE_ALG_EDDSA
    suite = "intl"

    def __init__(self, token: Token, label: str, handle: Any, public: Ed25519PublicKey,
                 extra: Mapping[int, Any] | None = None) -> None:
        self._token = token
        self.label = label
        self._handle = handle
        self._public = public
        self._extra = dict(extra or {})

    def protected_extra(self) -> Mapping[int, Any]:
        return self._extra

    def with_protected(self, extra: Mapping[int, Any]) -> TokenSigner:
        """The same key with extra protected header entries (e.g. 33 x5chain for a CA-issued identity)."""
        return TokenSigner(self._token, self.label, self._handle, self._public, extra)

    def __repr__(self) -> str:
        return f"TokenSigner({self._token.where}, key {self.label!r})"

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        import pkcs11
        from pkcs11 import Mechanism

        try:
            with self._token.lock:
                sig = bytes(self._handle.sign(data, mechanism=Mechanism.EDDSA))
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"{self._token.where}: signing with {self.label!r} failed ({_reason(e)})") from None
        if len(sig) != 64:
            raise TokenError(f"{self._token.where}: {self.label!r} returned a {len(sig)}-byte signature")
        return sig


class TokenKek:
    """A registry KEK that stays in the token: AES-256-GCM performed by the token (wrap suite intl)."""

    suite = keywrap.WRAP_INTL

    def __init__(self, token: Token, label: str, handle: Any) -> None:
        self._token = token
        self.label = label
        self._handle = handle

    def __repr__(self) -> str:
        return f"TokenKek({self.source})"

    @property
    def source(self) -> str:
        return f"{self._token.where}, key {self.label!r}"

    def seal(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        import pkcs11
        from pkcs11 import GCMParams, Mechanism

        try:
            with self._token.lock:
                return bytes(self._handle.encrypt(data, mechanism=Mechanism.AES_GCM,
                                                  mechanism_param=GCMParams(nonce, aad, keywrap.TAG_BYTES * 8)))
        except pkcs11.PKCS11Error as e:
            raise keywrap.KekError(f"{self.source}: encryption failed ({_reason(e)})") from None

    def open(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        import pkcs11
        from pkcs11 import GCMParams, Mechanism

        try:
            with self._token.lock:
                return bytes(self._handle.decrypt(data, mechanism=Mechanism.AES_GCM,
                                                  mechanism_param=GCMParams(nonce, aad, keywrap.TAG_BYTES * 8)))
        except pkcs11.PKCS11Error:
            raise keywrap.KekError(f"does not open under the key-encryption key ({self.source}): another KEK, "
                                   "another device id, or a damaged row") from None
