"""Frame size helpers for host tools and tests (not installed on nodes: see frame.py's last lines)."""

from . import cbor, schema


def max_fields(kind: int) -> dict:  # type: ignore[type-arg]
    """Every field of ``kind`` at the value whose encoding is longest (for the size budget)."""
    packed = schema.info(kind)[2]  # type: ignore[index]
    out = {}
    for off in range(0, len(packed), 12):
        lo, hi = schema.lo_hi(packed, off)
        if packed[off + 1] & 1:
            out[packed[off]] = bytes(hi)
        else:
            # the wire length of a CBOR int grows with its magnitude: the longer of the two ends
            out[packed[off]] = lo if len(cbor.dumps(lo)) > len(cbor.dumps(hi)) else hi
    return out
