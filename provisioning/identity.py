"""Device identity and secrets made on the provisioning host.

* Device id: the EUI-64 built from the chip's 48-bit base MAC by inserting FF FE in the middle
  (IEEE "Guidelines for Use of EUI, OUI and CID", mapping an EUI-48 to an EUI-64), 16 lowercase hex.
* Root key: 32 bytes from the OS CSPRNG (``secrets.token_bytes``). It is returned as bytes only; no
  function here formats it, and callers never print or log it.
* Claim code: random, independent of the key (the label carries it; it proves physical access when a
  resident or the city claims the device in an app, and reveals nothing about the key).
"""

from __future__ import annotations

import secrets

ROOT_KEY_LEN = 32
# Crockford base32 without I, L, O, U: unambiguous when typed from a printed label.
_CLAIM_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CLAIM_GROUPS = 3
CLAIM_GROUP_LEN = 4


def eui64_from_mac(mac: bytes) -> bytes:
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    return mac[:3] + b"\xff\xfe" + mac[3:]


def device_id_hex(device_id: bytes) -> str:
    return device_id.hex()


def new_root_key() -> bytes:
    return secrets.token_bytes(ROOT_KEY_LEN)


def new_claim_code() -> str:
    """e.g. ``7KQ2-M9XD-4TRA``: 60 random bits, grouped for reading aloud."""
    groups = ["".join(secrets.choice(_CLAIM_ALPHABET) for _ in range(CLAIM_GROUP_LEN)) for _ in range(CLAIM_GROUPS)]
    return "-".join(groups)
