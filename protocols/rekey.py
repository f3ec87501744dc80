# Over-the-air re-key (docs/keys.md, "Rotating a device key"): the pending root key both sides derive from
# the current one and the seed of a `rekey` downlink. MicroPython subset; nodes import it only when such a
# command arrives (or a re-key is pending in flash).

from . import crypto

SEED_LEN = 16
MAX_EPOCH = 65535


def pending_root(suite: int, root: bytes, dev_id: bytes, epoch: int, seed: bytes) -> bytes:
    """KDF(root, "lifeline/<suite>/rekey", device id, epoch, seed) with the suite's HMAC; 32 bytes.
    ValueError for a seed that is not 16 bytes, an epoch out of 1..65535 or an unknown suite."""
    if len(seed) != SEED_LEN or len(dev_id) != 8:
        raise ValueError("rekey seed must be 16 bytes, device id 8")
    if epoch < 1 or epoch > MAX_EPOCH:
        raise ValueError("rekey epoch out of range")
    if suite == crypto.SUITE_1:
        return crypto.rekey_root(root, dev_id, epoch, seed)
    if suite == crypto.SUITE_2:
        from . import crypto_sm

        return crypto_sm.rekey_root(root, dev_id, epoch, seed)
    raise ValueError("unknown crypto suite")
