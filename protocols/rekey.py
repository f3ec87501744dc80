# Over-the-air re-key (docs/keys.md, "Rotating a device key"): the pending root key both sides derive from
# the current one and the seed of a `rekey` downlink, with the suite's HMAC (the suite KDF of protocol.md
# section 2 with its own label). MicroPython subset; kept out of crypto.py / crypto_sm.py, which every wake
# loads: nodes import this module only when a `rekey` arrives or a re-key is pending in flash.

from . import crypto

SEED_LEN = 16
MAX_EPOCH = 65535
LABEL_1 = b"lifeline/1/rekey"  # suite 1 (LL1-HS256/64-A128CTR): HMAC-SHA256
LABEL_2 = b"lifeline/2/rekey"  # suite 2 (LL2-HSM3/64-SM4CTR): HMAC-SM3

# The schema registry's re-key kinds (schema_table.LAZY), packed like schema._PACKED; schema.info reads them
# from here, so nodes load them only when a re-key frame occurs.
# packed:begin (generated from schema_table.KINDS by `python -m lifeline.tools.gen_docs`; do not edit)
_PACKED = {
    11: (2, 1,  # rekey_confirm
        b'\x01\x02\x80\x00\x00\x00\x01\x80\x00\x00\xff\xff'),  # epoch
    70: (2, 1,  # rekey
        b'\x01\x02\x80\x00\x00\x00\x01\x80\x00\x00\xff\xff'  # epoch
        b'\x02\x03\x80\x00\x00\x00\x10\x80\x00\x00\x00\x10'),  # seed
}
# packed:end


def pending_root(suite: int, root: bytes, dev_id: bytes, epoch: int, seed: bytes) -> bytes:
    """HMAC_suite(root, "lifeline/<suite>/rekey" || device id || epoch (2, BE) || seed), 32 bytes.
    ValueError for a seed that is not 16 bytes, an epoch out of 1..65535 or an unknown suite."""
    if len(seed) != SEED_LEN or len(dev_id) != 8:
        raise ValueError("rekey seed must be 16 bytes, device id 8")
    if epoch < 1 or epoch > MAX_EPOCH:
        raise ValueError("rekey epoch out of range")
    msg = dev_id + epoch.to_bytes(2, "big") + seed
    if suite == crypto.SUITE_1:
        return crypto.hmac_sha256(root, LABEL_1 + msg)
    if suite == crypto.SUITE_2:
        from . import sm3

        return sm3.hmac(root, LABEL_2 + msg)
    raise ValueError("unknown crypto suite")
