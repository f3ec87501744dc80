"""Device registry: which nodes this gateway accepts, with their root keys (SQLite, file mode 0600).

Root keys are read by the daemon and by ``devices import`` only; they never appear in ``repr``, logs,
``devices list`` or error messages. With a key-encryption key (``gateway/kek.py``: a 0600 file or a PKCS#11
token key) they are stored wrapped (AES-256-GCM or SM4-GCM, bound to the device id); a plaintext registry
opened with a KEK is migrated in place, once, and the plaintext is wiped from the file (docs/keys.md).
Each device has exactly one crypto suite for its frames (``suite``: "intl" or "sm", docs/protocol.md section
2), set at provisioning; a registry made before suites existed gains the column in place, every device
"intl". Records come from provisioning as JSON lines (docs/operations.md, "Device registry"); when a trusted
technician key list is configured, each record must carry a valid
Ed25519 signature by a listed technician.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lifeline.gateway import kek as keywrap
from lifeline.gateway.log import Log
from lifeline.gateway.statedb import Transaction, connect
from lifeline.protocols import schema, suites

_log = Log("registry")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ACTIVE = "active"
REVOKED = "revoked"
MAX_LINE = 16384
_RECORD_KEYS = {"device_id", "root_key", "kind", "location", "data_class", "install_date",
                "design_life_years", "tags", "technician", "signature", "suite"}
_LOCATION_KEYS = {"address", "lat_udeg", "lon_udeg", "spatial_unit"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', 0);
CREATE TABLE IF NOT EXISTS devices(
  device_id BLOB PRIMARY KEY,
  root_key BLOB NOT NULL,
  key_epoch INTEGER NOT NULL DEFAULT 0,
  kind TEXT NOT NULL,
  address TEXT NOT NULL,
  lat_udeg INTEGER,
  lon_udeg INTEGER,
  spatial_unit TEXT NOT NULL,
  data_class INTEGER NOT NULL,
  install_date TEXT NOT NULL,
  design_life_years INTEGER NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
  tags TEXT NOT NULL,
  technician TEXT,
  signature TEXT,
  updated_ms INTEGER NOT NULL,
  suite TEXT NOT NULL DEFAULT 'intl' CHECK (suite IN ('intl', 'sm'))
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keystore(name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_keys(
  device_id BLOB PRIMARY KEY,
  epoch INTEGER NOT NULL,
  seed BLOB NOT NULL,
  root_key BLOB NOT NULL,
  created_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""
# Added after the first release: (column, definition) added in place to a registry that lacks it.
_ADDED_COLUMNS = (("suite", "TEXT NOT NULL DEFAULT 'intl' CHECK (suite IN ('intl', 'sm'))"),)
# keystore row 'check': a random key wrapped under the KEK for this id; present = root keys are wrapped.
_CHECK_ID = b"kek-check"  # 9 bytes: no device id (8 bytes) can collide with it
ROOT_KEY_BYTES = 32
_PENDING_TAG = b"/pending"  # a pending root key is wrapped for device id + this: never swappable with the root key


@dataclass(frozen=True, slots=True)
class PendingKey:
    """An over-the-air re-key in progress (docs/keys.md): the root key of ``epoch`` (= key_epoch + 1),
    derived from the current one and ``seed``, waiting for the node's rekey_confirm."""

    device_id: bytes
    epoch: int
    seed: bytes = field(repr=False)
    root_key: bytes = field(repr=False)


class RegistryError(Exception):
    """A registry operation that cannot proceed (unreadable file, unknown device)."""


@dataclass(frozen=True, slots=True)
class Location:
    address: str
    lat_udeg: int | None  # latitude in microdegrees (integer, no floats anywhere)
    lon_udeg: int | None
    spatial_unit: str


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: bytes
    root_key: bytes = field(repr=False)
    key_epoch: int
    kind: str
    location: Location
    data_class: int
    install_date: str
    design_life_years: int
    status: str
    tags: tuple[str, ...]
    technician: str | None = None
    signature: str | None = field(default=None, repr=False)
    suite: str = "intl"  # the node's frame crypto suite: "intl" | "sm" (suites.IDS)

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    @property
    def suite_id(self) -> int:
        return suites.IDS[self.suite]

    def public_dict(self) -> dict[str, Any]:
        """Everything but the key, for ``devices list --json``."""
        return {
            "device_id": self.device_id.hex(),
            "kind": self.kind,
            "location": {"address": self.location.address, "lat_udeg": self.location.lat_udeg,
                         "lon_udeg": self.location.lon_udeg, "spatial_unit": self.location.spatial_unit},
            "data_class": schema.CLASS_NAMES[self.data_class],
            "install_date": self.install_date,
            "design_life_years": self.design_life_years,
            "status": self.status,
            "tags": list(self.tags),
            "technician": self.technician,
            "signed": self.signature is not None,
            "key_epoch": self.key_epoch,
            "suite": self.suite,
        }


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    line: int
    device_id: str | None
    outcome: str  # added | updated | unchanged | rekeyed | rejected
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ImportReport:
    outcomes: tuple[ImportOutcome, ...]

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def rejected(self) -> int:
        return self.count("rejected")


class _Invalid(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_trusted_technicians(path: Path) -> dict[str, Ed25519PublicKey]:
    """``{"technician name": "<Ed25519 public key, 64 hex>"}``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RegistryError(f"{path}: cannot read trusted technician keys: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a JSON object name -> public key hex")
    keys: dict[str, Ed25519PublicKey] = {}
    for name, hexkey in data.items():
        if not isinstance(hexkey, str) or not _HEX64.match(hexkey):
            raise RegistryError(f"{path}: {name}: expected 64 hex characters")
        keys[name] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(hexkey))
    return keys


def signed_bytes(record: Mapping[str, Any]) -> bytes:
    """The bytes a technician signs: the record without "signature", canonical JSON (sorted, compact)."""
    body = {k: v for k, v in record.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _str(rec: Mapping[str, Any], key: str, max_len: int = 256) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or len(v) > max_len:
        raise _Invalid(f"{key}: expected a string of at most {max_len} characters")
    return v


def _int(rec: Mapping[str, Any], key: str, lo: int, hi: int, optional: bool = False) -> int | None:
    v = rec.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Invalid(f"{key}: expected an integer")
    if not lo <= v <= hi:
        raise _Invalid(f"{key}: {v} outside {lo}..{hi}")
    return v


def parse_record(rec: Any, trusted: Mapping[str, Ed25519PublicKey] | None) -> DeviceRecord:
    """Validate one provisioning record. Raises _Invalid with a reason that never contains the key."""
    if not isinstance(rec, dict):
        raise _Invalid("record is not a JSON object")
    unknown = sorted(set(rec) - _RECORD_KEYS)
    if unknown:
        raise _Invalid(f"unknown key {unknown[0]}")
    dev = rec.get("device_id")
    if not isinstance(dev, str) or not _HEX16.match(dev):
        raise _Invalid("device_id: expected 16 lowercase hex characters")
    key = rec.get("root_key")
    if not isinstance(key, str) or not _HEX64.match(key):
        raise _Invalid("root_key: expected 64 hex characters")
    kind = _str(rec, "kind", 32)
    kid = schema.kind_id_by_name(kind)
    if kid is None or schema.is_downlink_kind(kid):
        raise _Invalid(f"kind: {kind!r} is not a report kind of the schema registry")
    loc = rec.get("location")
    if not isinstance(loc, dict):
        raise _Invalid("location: expected an object")
    unknown = sorted(set(loc) - _LOCATION_KEYS)
    if unknown:
        raise _Invalid(f"location.{unknown[0]}: unknown key (lat/lon are integers lat_udeg/lon_udeg)")
    location = Location(
        address=_str(loc, "address", 512),
        lat_udeg=_int(loc, "lat_udeg", -90_000_000, 90_000_000, optional=True),
        lon_udeg=_int(loc, "lon_udeg", -180_000_000, 180_000_000, optional=True),
        spatial_unit=_str(loc, "spatial_unit", 128) if "spatial_unit" in loc else "",
    )
    dc = rec.get("data_class")
    if dc not in schema.CLASS_NAMES:
        raise _Invalid(f"data_class: expected one of {', '.join(schema.CLASS_NAMES)}")
    install = _str(rec, "install_date", 10)
    try:
        if not _DATE.match(install):
            raise ValueError
        datetime.date.fromisoformat(install)
    except ValueError:
        raise _Invalid("install_date: expected YYYY-MM-DD") from None
    life = _int(rec, "design_life_years", 1, 100)
    tags = rec.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and len(t) <= 64 for t in tags) or len(tags) > 64:
        raise _Invalid("tags: expected a list of at most 64 strings")
    technician = rec.get("technician")
    if technician is not None and (not isinstance(technician, str) or len(technician) > 128):
        raise _Invalid("technician: expected a string")
    signature = rec.get("signature")
    if signature is not None and (not isinstance(signature, str) or len(signature) > 1024):
        raise _Invalid("signature: expected a string")
    suite = rec.get("suite", "intl")
    if not isinstance(suite, str) or suite not in suites.IDS:
        raise _Invalid("suite: expected one of intl, sm")
    if trusted is not None:
        if technician is None or signature is None:
            raise _Invalid("signature: required (trusted technician keys are configured)")
        pub = trusted.get(technician)
        if pub is None:
            raise _Invalid("technician: not in the trusted technician list")
        try:
            pub.verify(bytes.fromhex(signature), signed_bytes(rec))
        except (ValueError, InvalidSignature):
            raise _Invalid("signature: does not verify with the technician's key") from None
    assert life is not None
    return DeviceRecord(
        device_id=bytes.fromhex(dev), root_key=bytes.fromhex(key), key_epoch=0, kind=kind, location=location,
        data_class=schema.CLASS_NAMES.index(dc), install_date=install, design_life_years=life, status=ACTIVE,
        tags=tuple(tags), technician=technician, signature=signature, suite=suite)


def _row_to_record(row: sqlite3.Row | tuple[Any, ...], root_key: bytes) -> DeviceRecord:
    (dev, _key, epoch, kind, address, lat, lon, unit, dc, install, life, status, tags, tech, sig, suite) = row
    return DeviceRecord(
        device_id=bytes(dev), root_key=root_key, key_epoch=epoch, kind=kind,
        location=Location(address, lat, lon, unit), data_class=dc, install_date=install,
        design_life_years=life, status=status, tags=tuple(json.loads(tags)), technician=tech, signature=sig,
        suite=suite)


_COLUMNS = ("device_id, root_key, key_epoch, kind, address, lat_udeg, lon_udeg, spatial_unit, data_class, "
            "install_date, design_life_years, status, tags, technician, signature, suite")


def _same_metadata(a: DeviceRecord, b: DeviceRecord) -> bool:
    return (a.kind, a.location, a.data_class, a.install_date, a.design_life_years, a.tags, a.technician,
            a.signature) == (b.kind, b.location, b.data_class, b.install_date, b.design_life_years, b.tags,
                             b.technician, b.signature)


class Registry:
    """Synchronous access to the registry database (the daemon calls it from a worker thread).

    ``kek``: the key-encryption key root keys are (or are to be) wrapped under; a plaintext registry is
    migrated on open. Without one, an encrypted registry opens only with ``metadata_only`` (records then
    carry an empty ``root_key``: for listings and device attributes, never for the radio path).
    """

    def __init__(self, path: Path, kek: keywrap.Kek | None = None, *, metadata_only: bool = False) -> None:
        self.path = path
        self.kek = kek
        self.metadata_only = metadata_only
        self.conn = connect(path)
        try:
            self.conn.executescript(SCHEMA)
            self._add_columns()
            self._open_keys()
        except BaseException:
            self.conn.close()
            raise

    @property
    def encrypted(self) -> bool:
        return self._check_blob() is not None

    def _check_blob(self) -> bytes | None:
        row = self.conn.execute("SELECT value FROM keystore WHERE name='check'").fetchone()
        return bytes(row[0]) if row else None

    def _open_keys(self) -> None:
        check = self._check_blob()
        if self.kek is None:
            if check is not None and not self.metadata_only:
                raise RegistryError(f"registry {self.path}: root keys are encrypted at rest and no key-encryption "
                                    "key is configured (keys.kek_file or keys.pkcs11.kek_label)")
            return
        if check is None:
            self._migrate(self.kek)
            return
        try:
            keywrap.unwrap(self.kek, _CHECK_ID, check)
        except keywrap.KekError as e:
            raise RegistryError(f"registry {self.path}: root keys are not wrapped under the configured "
                                f"key-encryption key: {e}") from None

    def _add_columns(self) -> None:
        """Schema migration in place: a registry.db made by an older gateway gains the newer columns (every
        existing device gets the column's default, e.g. suite 'intl'), in one transaction."""
        have = {row[1] for row in self.conn.execute("PRAGMA table_info(devices)")}
        missing = [(name, decl) for name, decl in _ADDED_COLUMNS if name not in have]
        if not missing:
            return
        with Transaction(self.conn) as conn:
            for name, decl in missing:
                conn.execute(f"ALTER TABLE devices ADD COLUMN {name} {decl}")
        _log.info("registry schema migrated", added=",".join(name for name, _ in missing))

    def _migrate(self, kek: keywrap.Kek) -> None:
        """Plaintext registry -> wrapped root keys, in one transaction; then wipe the old pages."""
        self.conn.execute("PRAGMA secure_delete=ON")
        n = 0
        with Transaction(self.conn) as conn:
            rows = conn.execute("SELECT device_id, root_key FROM devices").fetchall()
            for dev, key in rows:
                key = bytes(key)
                if len(key) != ROOT_KEY_BYTES:
                    raise RegistryError(f"registry {self.path}: device {bytes(dev).hex()}: root key column holds "
                                        f"{len(key)} bytes, neither a plaintext key nor known to this registry")
                conn.execute("UPDATE devices SET root_key=? WHERE device_id=?",
                             (keywrap.wrap(kek, bytes(dev), key), dev))
                n += 1
            for dev, key in conn.execute("SELECT device_id, root_key FROM pending_keys").fetchall():
                conn.execute("UPDATE pending_keys SET root_key=? WHERE device_id=?",
                             (keywrap.wrap(kek, bytes(dev) + _PENDING_TAG, bytes(key)), dev))
            conn.execute("INSERT INTO keystore(name, value) VALUES ('check', ?)",
                         (keywrap.wrap(kek, _CHECK_ID, os.urandom(ROOT_KEY_BYTES)),))
        # the old plaintext pages: out of the WAL, then out of the file's free pages
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _log.info("registry root keys encrypted at rest", devices=n, kek=keywrap.describe(kek))

    def rewrap(self, new_kek: keywrap.Kek) -> int:
        """KEK rotation: every root key re-wrapped under ``new_kek`` in one transaction (the old KEK must be
        the one this registry was opened with); then the old blobs are wiped from the file. Returns the
        number of devices. Keys, epochs and the generation stay as they were."""
        if self.kek is None or self.metadata_only:
            raise RegistryError(f"registry {self.path}: re-wrapping needs the current key-encryption key")
        self.conn.execute("PRAGMA secure_delete=ON")
        n = 0
        with Transaction(self.conn) as conn:
            for dev, stored in conn.execute("SELECT device_id, root_key FROM devices").fetchall():
                key = self._root_key(bytes(dev), bytes(stored))
                conn.execute("UPDATE devices SET root_key=? WHERE device_id=?",
                             (keywrap.wrap(new_kek, bytes(dev), key), dev))
                n += 1
            for dev, stored in conn.execute("SELECT device_id, root_key FROM pending_keys").fetchall():
                key = self._root_key(bytes(dev) + _PENDING_TAG, bytes(stored))
                conn.execute("UPDATE pending_keys SET root_key=? WHERE device_id=?",
                             (keywrap.wrap(new_kek, bytes(dev) + _PENDING_TAG, key), dev))
            conn.execute("INSERT OR REPLACE INTO keystore(name, value) VALUES ('check', ?)",
                         (keywrap.wrap(new_kek, _CHECK_ID, os.urandom(ROOT_KEY_BYTES)),))
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _log.info("registry root keys re-wrapped", devices=n, old=keywrap.describe(self.kek),
                  new=keywrap.describe(new_kek))
        self.kek = new_kek
        return n

    def _root_key(self, device_id: bytes, stored: bytes) -> bytes:
        if self.kek is None:
            if len(stored) == ROOT_KEY_BYTES:
                return stored
            if self.metadata_only:
                return b""
            raise RegistryError(f"registry {self.path}: device {device_id.hex()}: root key is encrypted and no "
                                "key-encryption key is configured")
        try:
            return keywrap.unwrap(self.kek, device_id, stored)
        except keywrap.KekError as e:
            raise RegistryError(f"registry {self.path}: device {device_id.hex()}: root key {e}") from None

    def _stored_key(self, device_id: bytes, root_key: bytes) -> bytes:
        return root_key if self.kek is None else keywrap.wrap(self.kek, device_id, root_key)

    def _record(self, row: sqlite3.Row | tuple[Any, ...]) -> DeviceRecord:
        return _row_to_record(row, self._root_key(bytes(row[0]), bytes(row[1])))

    def close(self) -> None:
        self.conn.close()

    def shrink_memory(self) -> None:
        """Give back the connection's page cache (a whole-table read, such as the daemon's snapshot, fills it
        with every page; the daemon reads the table again only when the registry changes)."""
        self.conn.execute("PRAGMA shrink_memory")

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generation(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0])

    def get(self, device_id: bytes) -> DeviceRecord | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM devices WHERE device_id=?", (device_id,)).fetchone()
        return self._record(row) if row else None

    def all(self) -> Iterator[DeviceRecord]:
        for row in self.conn.execute(f"SELECT {_COLUMNS} FROM devices ORDER BY device_id"):
            yield self._record(row)

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM devices").fetchone()[0])

    def import_lines(self, lines: Iterable[str], *, now_ms: int, rekey: bool = False,
                     trusted: Mapping[str, Ed25519PublicKey] | None = None) -> ImportReport:
        """Import provisioning records in one transaction; bad lines are rejected with a reason."""
        if self.metadata_only:
            raise RegistryError(f"registry {self.path}: opened for metadata only; importing needs the "
                                "key-encryption key")
        outcomes: list[ImportOutcome] = []
        seen: set[bytes] = set()
        changed = False
        with Transaction(self.conn) as conn:
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                dev_hex: str | None = None
                try:
                    if len(line) > MAX_LINE:
                        raise _Invalid("line too long")
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        raise _Invalid("not valid JSON") from None
                    if isinstance(obj, dict) and isinstance(obj.get("device_id"), str):
                        dev_hex = obj["device_id"][:16]
                    rec = parse_record(obj, trusted)
                    dev_hex = rec.device_id.hex()
                    if rec.device_id in seen:
                        raise _Invalid("device_id appears twice in this file")
                    seen.add(rec.device_id)
                    outcome = self._upsert(conn, rec, now_ms, rekey)
                except _Invalid as e:
                    outcomes.append(ImportOutcome(lineno, dev_hex, "rejected", e.reason))
                    _log.warning("import rejected", line=lineno, device=dev_hex or "-", reason=e.reason)
                    continue
                if outcome != "unchanged":
                    changed = True
                outcomes.append(ImportOutcome(lineno, dev_hex, outcome))
            if changed:
                conn.execute("UPDATE meta SET value=value+1 WHERE key='generation'")
        report = ImportReport(tuple(outcomes))
        _log.info("import done", added=report.count("added"), updated=report.count("updated"),
                  rekeyed=report.count("rekeyed"), unchanged=report.count("unchanged"), rejected=report.rejected)
        return report

    def _upsert(self, conn: sqlite3.Connection, rec: DeviceRecord, now_ms: int, rekey: bool) -> str:
        old = self.get(rec.device_id)
        epoch = 0
        outcome = "added"
        if old is not None:
            if old.status == REVOKED:
                raise _Invalid("device is revoked; provision a new device id")
            if old.root_key != rec.root_key or old.suite != rec.suite:
                if not rekey:
                    what = ("root key" if old.root_key != rec.root_key
                            else f"suite ({rec.suite}, registered {old.suite})")
                    raise _Invalid(f"{what} differs from the registered one (use --rekey to replace it)")
                epoch, outcome = old.key_epoch + 1, "rekeyed"
                conn.execute("DELETE FROM pending_keys WHERE device_id=?", (rec.device_id,))  # re-provisioned
            elif _same_metadata(old, rec):
                return "unchanged"
            else:
                epoch, outcome = old.key_epoch, "updated"
        loc = rec.location
        conn.execute(
            f"INSERT OR REPLACE INTO devices({_COLUMNS}, updated_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.device_id, self._stored_key(rec.device_id, rec.root_key), epoch, rec.kind, loc.address,
             loc.lat_udeg, loc.lon_udeg, loc.spatial_unit, rec.data_class, rec.install_date,
             rec.design_life_years, ACTIVE, json.dumps(list(rec.tags)), rec.technician, rec.signature, rec.suite,
             now_ms))
        return outcome

    # ------------------------------------------------------------------ over-the-air re-key (docs/keys.md)

    def pending(self, device_id: bytes) -> PendingKey | None:
        row = self.conn.execute("SELECT epoch, seed, root_key FROM pending_keys WHERE device_id=?",
                                (device_id,)).fetchone()
        if row is None:
            return None
        return PendingKey(device_id, int(row[0]), bytes(row[1]),
                          self._root_key(device_id + _PENDING_TAG, bytes(row[2])))

    def all_pending(self) -> dict[bytes, PendingKey]:
        rows = self.conn.execute("SELECT device_id FROM pending_keys").fetchall()
        out = {}
        for (dev,) in rows:
            p = self.pending(bytes(dev))
            if p is not None:
                out[bytes(dev)] = p
        return out

    def begin_rekey(self, device_id: bytes, *, now_ms: int, seed: bytes | None = None) -> PendingKey:
        """Step 1 of the re-key: draw a seed and store the pending root key of ``key_epoch + 1`` (wrapped
        like the root key). Idempotent: a re-key already pending for that epoch is returned unchanged, so a
        re-sent ``rekey`` carries the same seed. RegistryError for an unknown or revoked device."""
        if self.metadata_only:
            raise RegistryError(f"registry {self.path}: opened for metadata only; a re-key needs the "
                                "key-encryption key")
        from lifeline.protocols import rekey

        with Transaction(self.conn) as conn:
            dev = self.get(device_id)
            if dev is None:
                raise RegistryError(f"device {device_id.hex()} is not registered")
            if not dev.active:
                raise RegistryError(f"device {device_id.hex()} is revoked")
            old = self.pending(device_id)
            if old is not None and old.epoch == dev.key_epoch + 1:
                return old
            if dev.key_epoch + 1 > rekey.MAX_EPOCH:
                raise RegistryError(f"device {device_id.hex()}: key epoch exhausted; re-provision it on site")
            seed = os.urandom(rekey.SEED_LEN) if seed is None else seed
            epoch = dev.key_epoch + 1
            new_root = rekey.pending_root(dev.suite_id, dev.root_key, device_id, epoch, seed)
            conn.execute("INSERT OR REPLACE INTO pending_keys(device_id, epoch, seed, root_key, created_ms) "
                         "VALUES (?,?,?,?,?)",
                         (device_id, epoch, seed, self._stored_key(device_id + _PENDING_TAG, new_root), now_ms))
            conn.execute("UPDATE meta SET value=value+1 WHERE key='generation'")
        _log.info("re-key pending", device=device_id, epoch=epoch)
        return PendingKey(device_id, epoch, seed, new_root)

    def commit_rekey(self, device_id: bytes, epoch: int, *, now_ms: int) -> bool:
        """Step 3: the node confirmed ``epoch`` under the pending key. In one transaction the pending key
        becomes the root key, ``key_epoch`` becomes ``epoch`` (counters of the new epoch start afresh:
        they are kept per epoch) and the pending row is gone. False (nothing changed) unless a re-key to
        exactly ``epoch`` is pending for an active device."""
        with Transaction(self.conn) as conn:
            dev = self.get(device_id)
            p = self.pending(device_id)
            if dev is None or not dev.active or p is None or p.epoch != epoch or epoch != dev.key_epoch + 1:
                return False
            conn.execute("UPDATE devices SET root_key=?, key_epoch=?, updated_ms=? WHERE device_id=?",
                         (self._stored_key(device_id, p.root_key), epoch, now_ms, device_id))
            conn.execute("DELETE FROM pending_keys WHERE device_id=?", (device_id,))
            conn.execute("UPDATE meta SET value=value+1 WHERE key='generation'")
        _log.info("re-key committed", device=device_id, epoch=epoch)
        return True

    def revoke(self, device_id: bytes, *, now_ms: int) -> bool:
        """Mark a device revoked; False if it is not registered. Idempotent."""
        with Transaction(self.conn) as conn:
            cur = conn.execute("UPDATE devices SET status='revoked', updated_ms=? WHERE device_id=? "
                               "AND status != 'revoked'", (now_ms, device_id))
            if cur.rowcount:
                conn.execute("UPDATE meta SET value=value+1 WHERE key='generation'")
                _log.info("device revoked", device=device_id)
                return True
        return self.get(device_id) is not None
