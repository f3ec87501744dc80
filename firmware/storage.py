# Flash persistence helpers: atomic replace (write tmp, then rename over the old file) and records that
# carry their own check, so a torn or corrupt file reads as missing instead of as a wrong value.
# MicroPython subset; ``fs`` is hal.fs.

import hashlib
import json

_MAGIC = b"LL"


def _check(payload):
    return hashlib.sha256(payload).digest()[:4]


def pack(payload):
    """magic (2) | length (2, BE) | payload | sha256(payload)[:4]."""
    return _MAGIC + len(payload).to_bytes(2, "big") + payload + _check(payload)


def unpack(data):
    """The payload of a packed record, or None when torn, truncated or corrupt."""
    if data is None or len(data) < 8 or data[:2] != _MAGIC:
        return None
    n = int.from_bytes(data[2:4], "big")
    if len(data) != 8 + n:
        return None
    payload = data[4:4 + n]
    if _check(payload) != data[4 + n:]:
        return None
    return payload


def read(fs, path):
    """Whole file as bytes, or None when it does not exist."""
    try:
        f = fs.open(path, "rb")
    except OSError:
        return None
    try:
        return f.read()
    finally:
        f.close()


def write_atomic(fs, path, data):
    """Replace ``path`` with ``data`` so that a power cut leaves the old or the new content, never a mix."""
    tmp = path + ".tmp"
    f = fs.open(tmp, "wb")
    try:
        f.write(data)
    finally:
        f.close()
    fs.rename(tmp, path)


def load_record(fs, path):
    """Payload of a packed record file, falling back to a complete leftover tmp file; None if neither."""
    p = unpack(read(fs, path))
    if p is None:
        p = unpack(read(fs, path + ".tmp"))
    return p


def save_record(fs, path, payload):
    write_atomic(fs, path, pack(payload))


def load_json(fs, path):
    p = load_record(fs, path)
    if p is None:
        return None
    try:
        return json.loads(p)
    except ValueError:
        return None


def save_json(fs, path, obj):
    save_record(fs, path, json.dumps(obj).encode())


def remove(fs, path):
    try:  # noqa: SIM105 - MicroPython has no contextlib
        fs.remove(path)
    except OSError:
        pass
