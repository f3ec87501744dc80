"""Lifeline protocols: the one definition of every byte on the wire (see docs/protocol.md).

Device-side modules (MicroPython subset, installed on nodes): DEVICE_MODULES. The rest is CPython only.
"""

DEVICE_MODULES = ("schema", "cbor", "aes", "crypto", "frame", "sm3", "sm4", "crypto_sm", "suites", "rekey")
