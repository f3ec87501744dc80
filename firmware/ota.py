# Over-the-air update of the app bundle.
#
# Authentication: HMAC-SHA256 under K_ota = HMAC-SHA256(root, "lifeline/1/ota" || device id) over the
# manifest (an sm node, docs/protocol.md 2.2: HMAC-SM3 under K_ota = HMAC-SM3(root, "lifeline/2/ota" ||
# device id), same 32-byte tag), and the manifest lists the SHA-256 of every file, so one tag covers the
# whole bundle. (ESP32 MicroPython has SHA-256 in hashlib but no Ed25519/ECDSA verifier; a pure-Python
# Ed25519 verify takes tens of seconds and ~tens of KB of RAM on the ESP32, so a per-device symmetric key
# is used. A signature would let one key sign for the whole fleet; the HMAC key is per device and derived
# from the root key the node already holds, so a leaked key compromises one node, not the fleet.)
#
# Bundle blob (what C_OTA_CHUNK downlinks or the GATT service carry):
#   manifest length (2, BE) | manifest (JSON: {"v": version, "files": [[path, size, sha256 hex], ...]})
#   | tag (32) | file contents concatenated in manifest order
# Install: verify the tag before writing anything, write the files into the spare slot (/app/a or /app/b),
# verify every file hash from flash, then switch the pointer atomically (tmp + rename) with trial state;
# bootsel rolls back if the new app has not sent an acknowledged report within K boots.

import hashlib
import json

from lifeline.firmware import bootsel, storage
from lifeline.protocols import crypto

STAGING = "/app/incoming"
SLOTS = ("/app/a", "/app/b")


class OtaError(Exception):
    def __init__(self, reason):
        Exception.__init__(self, reason)
        self.reason = reason


def ota_key(root_key, dev_id, suite=1):
    """K_ota of the node's frame crypto suite (1 intl, 2 sm)."""
    if suite == 2:
        from lifeline.protocols import crypto_sm

        return crypto_sm.derive(root_key, crypto_sm.LABEL_OTA, dev_id)
    return crypto.derive(root_key, crypto.LABEL_OTA, dev_id)


def _tag(key, manifest, suite):
    if suite == 2:
        from lifeline.protocols import crypto_sm

        return crypto_sm.hmac_sm3(key, manifest)
    return crypto.hmac_sha256(key, manifest)


def make_bundle(files, version, key, suite=1):
    """Build a bundle blob from {relative path: bytes} (host side and tests)."""
    names = sorted(files)
    manifest = json.dumps({"v": version, "files": [[n, len(files[n]), hashlib.sha256(files[n]).digest().hex()]
                                                   for n in names]}).encode()
    tag = _tag(key, manifest, suite)
    return len(manifest).to_bytes(2, "big") + manifest + tag + b"".join(files[n] for n in names)


def parse_bundle(blob, key, suite=1):
    """(version, [(path, content)]) after checking the tag and every hash; OtaError otherwise."""
    if len(blob) < 34:
        raise OtaError("truncated")
    n = int.from_bytes(blob[:2], "big")
    if len(blob) < 2 + n + 32:
        raise OtaError("truncated")
    manifest = blob[2:2 + n]
    tag = blob[2 + n:2 + n + 32]
    if not crypto.ct_equal(_tag(key, manifest, suite), tag):
        raise OtaError("bad_mac")
    try:
        m = json.loads(manifest)
        version = int(m["v"])
        entries = m["files"]
    except (ValueError, KeyError, TypeError):
        raise OtaError("bad_manifest") from None
    pos = 2 + n + 32
    out = []
    for e in entries:
        path, size, digest = e[0], int(e[1]), e[2]
        if not isinstance(path, str) or ".." in path or path.startswith("/"):
            raise OtaError("bad_path")
        data = blob[pos:pos + size]
        if len(data) != size or hashlib.sha256(data).digest().hex() != digest:
            raise OtaError("bad_hash")
        out.append((path, data))
        pos += size
    if pos != len(blob):
        raise OtaError("trailing_bytes")
    return version, out


def _mkdirs(fs, path):
    parts = path.split("/")
    cur = ""
    for p in parts[1:-1]:
        cur += "/" + p
        fs.mkdir(cur)


def install(fs, blob, key, trial_boots, suite=1):
    """Verify and write the bundle to the spare slot and switch to it on trial. Returns the version."""
    version, files = parse_bundle(blob, key, suite)
    cur = bootsel.read_pointer(fs) or {"slot": bootsel.FACTORY, "version": 0}
    slot = SLOTS[1] if cur.get("slot") == SLOTS[0] else SLOTS[0]
    fs.mkdir("/app")
    fs.mkdir(slot)
    for path, data in files:
        full = slot + "/" + path
        _mkdirs(fs, full)
        f = fs.open(full, "wb")
        try:
            f.write(data)
        finally:
            f.close()
    for path, data in files:  # read back: what is in flash is what was authenticated
        got = storage.read(fs, slot + "/" + path)
        if got is None or hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
            raise OtaError("write_verify")
    storage.remove(fs, bootsel.TRIAL)
    bootsel.write_pointer(fs, {"slot": slot, "version": version, "trial": 1, "k": trial_boots,
                               "prev": cur.get("slot", bootsel.FACTORY), "prev_version": cur.get("version", 0)})
    return version


# The running app's side of the trial (in bootsel so that a normal wake does not load this module).
confirm = bootsel.confirm
in_trial = bootsel.in_trial
take_rollback = bootsel.take_rollback


class Receiver:
    """Collects C_OTA_BEGIN / C_OTA_CHUNK downlinks into a staging file, in order."""

    def __init__(self, fs):
        self._fs = fs
        self.version = -1
        self.size = 0
        self.chunks = 0
        self.next = 0
        self._buf = bytearray()

    def begin(self, version, size, chunks):
        self.version = version
        self.size = size
        self.chunks = chunks
        self.next = 0
        self._buf = bytearray()

    def chunk(self, index, data):
        """True when the last chunk arrived; chunks out of order are ignored (the sender repeats)."""
        if self.version < 0 or index != self.next:
            return False
        self._buf.extend(data)
        self.next += 1
        if len(self._buf) > self.size:
            self.version = -1
            raise OtaError("oversize")
        return self.next == self.chunks

    def blob(self):
        return bytes(self._buf[:self.size])
