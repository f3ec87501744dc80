"""Provisioning records for the gateway registry, signed by the technician's Ed25519 key.

A record is one JSON object per device (the format ``lifeline gateway devices import`` reads):
``device_id, root_key, kind, location{address, lat_udeg, lon_udeg, spatial_unit}, data_class,
install_date, design_life_years, tags, suite, technician, signature`` (``suite``: the node's frame crypto
suite, "intl" or "sm"). The signature is Ed25519 over the
canonical JSON of the record without ``signature`` (keys sorted, no spaces, UTF-8), hex encoded; the
gateway computes the same bytes (gateway/registry.py ``signed_bytes``) and checks it against its list
of trusted technician public keys.

The records file holds root keys: it is created with mode 0600 (before any byte is written), appended
to with one line per device, and refused when its mode is looser. Revocations go to the same kind of
file as ``{"device_id": ..., "revoked": true, "reason": ..., "technician": ..., "signature": ...}``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import keys as keyfiles
from lifeline.provisioning.errors import EnvironmentProblem
from lifeline.provisioning.nodeconfig import DeviceSpec


def signed_bytes(record: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build(spec: DeviceSpec, device_id: bytes, root_key: bytes, technician: str) -> dict[str, Any]:
    loc = spec.location
    return {
        "device_id": device_id.hex(),
        "root_key": root_key.hex(),
        "kind": spec.kind,
        "location": {"address": loc.address, "lat_udeg": loc.lat_udeg, "lon_udeg": loc.lon_udeg,
                     "spatial_unit": loc.spatial_unit},
        "data_class": spec.data_class,
        "install_date": spec.install_date,
        "design_life_years": spec.design_life_years,
        "tags": list(spec.tags),
        "suite": spec.suite,
        "technician": technician,
    }


def sign(record: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    out = dict(record)
    out.pop("signature", None)
    out["signature"] = key.sign(signed_bytes(out)).hex()
    return out


def revocation(device_id: str, reason: str, technician: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    rec: dict[str, Any] = {"device_id": device_id, "revoked": True, "reason": reason, "technician": technician}
    return sign(rec, key)


# ---- technician key --------------------------------------------------------------------------------------


def create_technician_key(path: Path, *, overwrite: bool = False) -> str:
    """New Ed25519 key at ``path`` (PEM, 0600, atomic); returns the public key hex."""
    key = keyfiles.generate()
    try:
        keyfiles.save_private_key(key, path, overwrite=overwrite)
    except FileExistsError as exc:
        raise EnvironmentProblem("key_exists", str(exc)) from None
    except OSError as exc:
        raise EnvironmentProblem("key_write", f"cannot write {path}: {exc.strerror}") from None
    return keyfiles.public_key_hex(key)


def load_technician_key(path: Path) -> Ed25519PrivateKey:
    try:
        return keyfiles.load_private_key(path)
    except keyfiles.KeyFileError as exc:
        raise EnvironmentProblem(f"technician_key_{exc.reason}", str(exc)) from None
    except OSError as exc:
        raise EnvironmentProblem("technician_key_unreadable", f"cannot read {path}: {exc.strerror}") from None


# ---- the records file ------------------------------------------------------------------------------------


def _write_secret(path: Path, lines: list[bytes]) -> None:
    """Replace ``path`` atomically with ``lines``: a new 0600 file (O_EXCL), fsync, rename, fsync dir."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as exc:
        raise EnvironmentProblem("records_unwritable", f"cannot write next to {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        for line in lines:
            os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def upsert(path: Path, record: Mapping[str, Any]) -> bool:
    """Put ``record`` into the file, replacing an earlier record of the same device (the gateway import
    refuses a device id twice in one file). False when an identical record is already there."""
    existing = list(read(path))
    dev = record.get("device_id")
    if any(r == dict(record) for r in existing):
        return False
    kept = [r for r in existing if r.get("device_id") != dev]
    _write_secret(path, [_line(r) for r in [*kept, record]])
    return True


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Records in a file (later lines win per device id is the caller's choice)."""
    if not path.exists():
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise EnvironmentProblem("records_mode", f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    if path.is_symlink():
        raise EnvironmentProblem("records_symlink", f"{path} is a symlink; refusing to read keys through it")
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    yield obj


def find(path: Path, device_id: str) -> dict[str, Any] | None:
    """The last non-revocation record for ``device_id`` in the file, or None."""
    found = None
    for rec in read(path):
        if rec.get("device_id") == device_id and not rec.get("revoked"):
            found = rec
    return found
