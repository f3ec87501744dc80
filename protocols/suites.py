# Crypto suite names, as provisioning records, the gateway registry and config, and node configs spell them.
# MicroPython subset. The suites themselves: docs/protocol.md section 2.

INTL = 1  # LL1-HS256/64-A128CTR, protocols/crypto.py
SM = 2  # LL2-HSM3/64-SM4CTR, protocols/crypto_sm.py
IDS = {"intl": INTL, "sm": SM}
LABELS = {INTL: "intl", SM: "sm"}
NAMES = {INTL: "LL1-HS256/64-A128CTR", SM: "LL2-HSM3/64-SM4CTR"}


def suite_id(name: object) -> int:
    """The suite id of a suite name ("intl", "sm"); ValueError for anything else."""
    if isinstance(name, str) and name in IDS:
        return IDS[name]
    raise ValueError("unknown crypto suite %r (known: intl, sm)" % (name,))
