"""Where the gateway's keys live, from its config: the registry KEK and the batch signing key.

* registry KEK: ``[keys] kek_file`` (0600 file, ``gateway/kek.py``), or ``[keys.pkcs11] kek_label`` (an
  AES-256 key in the token), or neither (root keys in plaintext: a warning at start, ``plaintext`` in status);
* signing key: ``[keys.pkcs11] signing_key_label`` (Ed25519 in the token) or ``gateway.key_file`` (PEM,
  Ed25519 or SM2); either way it must be of ``gateway.suite``.

Every error names the file, module, token or label and why; never a key or the PIN (docs/keys.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lifeline.gateway import kek as keywrap
from lifeline.gateway.config import GatewayConfig
from lifeline.protocols import keys as keyfile
from lifeline.protocols.cose_sign import SigningKey, signing_key


class KeyStoreError(Exception):
    """A configured key that cannot be used; the message names where it is and why."""


@dataclass(slots=True)
class GatewayKeys:
    kek: keywrap.Kek | None
    signer: SigningKey | None
    token: Any = None  # hsm.Token when the config names one (closed by close())
    signer_source: str = ""

    def describe(self) -> dict[str, str]:
        """For status output and logs: where each key lives (never the key)."""
        return {"registry_keys": keywrap.describe(self.kek), "signing_key": self.signer_source}

    def storage(self) -> list[tuple[dict[str, str], float]]:
        """The ``key_storage`` gauge: where each key lives and under which cipher (no paths, no keys)."""
        reg_where = "plaintext" if self.kek is None else ("pkcs11" if self.token is not None
                                                           and not isinstance(self.kek, keywrap.MemoryKek)
                                                           else "file")
        reg_cipher = "none" if self.kek is None else keywrap.CIPHER_NAMES[self.kek.suite]
        sign_where = ("pkcs11" if self.signer_source.startswith("PKCS#11") else
                      "file" if self.signer_source.startswith("file") else self.signer_source or "none")
        sign_suite = self.signer.suite if self.signer is not None else ""
        return [({"key": "registry", "where": reg_where, "cipher": reg_cipher}, 1),
                ({"key": "signing", "where": sign_where, "cipher": sign_suite}, 1)]

    def close(self) -> None:
        if self.token is not None:
            self.token.close()
            self.token = None


def open_keys(cfg: GatewayConfig, *, signer: bool = True, kek: bool = True) -> GatewayKeys:
    """Open what the config names. Raises KeyStoreError (the caller refuses to start)."""
    from lifeline.gateway import hsm

    token = None
    tcfg = cfg.keys.pkcs11
    try:
        if tcfg is not None and ((signer and tcfg.signing_key_label) or (kek and tcfg.kek_label)):
            token = hsm.Token.from_config(tcfg)
        the_kek: keywrap.Kek | None = None
        if kek:
            if cfg.keys.kek_file is not None:
                the_kek = keywrap.load_file(cfg.keys.kek_file)
            elif tcfg is not None and tcfg.kek_label is not None and token is not None:
                the_kek = token.kek(tcfg.kek_label)
        the_signer: SigningKey | None = None
        source = ""
        if signer:
            if tcfg is not None and tcfg.signing_key_label is not None and token is not None:
                the_signer = token.signer(tcfg.signing_key_label)
                source = f"PKCS#11 token {tcfg.token_label!r}, key {tcfg.signing_key_label!r}"
            else:
                the_signer = signing_key(keyfile.load_signing_key(cfg.gateway.key_file, cfg.gateway.suite))
                source = f"file {cfg.gateway.key_file}"
            if the_signer.suite != cfg.gateway.suite:
                raise keyfile.KeyFileError("wrong_suite", f"{source}: the signing key is of suite "
                                           f"{the_signer.suite}, but gateway.suite is {cfg.gateway.suite}")
    except (hsm.TokenError, keywrap.KekError, keyfile.KeyFileError) as e:
        if token is not None:
            token.close()
        raise KeyStoreError(str(e)) from None
    return GatewayKeys(the_kek, the_signer, token, source)


def load_registry_kek(cfg: GatewayConfig) -> GatewayKeys:
    """Only the registry KEK (for ``devices import/list/revoke``); ``kek`` None = plaintext registry."""
    return open_keys(cfg, signer=False)
