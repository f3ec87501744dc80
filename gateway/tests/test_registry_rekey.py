"""Registry side of the over-the-air re-key (docs/keys.md): the pending key wrapped under the KEK like the
root key, the idempotent begin, the one-transaction switch, KEK rotation and re-provisioning, and the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifeline.gateway import kek as keywrap
from lifeline.gateway.cli import gateway
from lifeline.gateway.devices import DeviceInfo
from lifeline.gateway.registry import Registry, RegistryError
from lifeline.gateway.testing import TestNode
from lifeline.protocols import rekey, suites

NOW = 1_700_000_000_000


def _disk_bytes(db: Path) -> bytes:
    return b"".join(Path(str(db) + s).read_bytes() for s in ("", "-wal") if Path(str(db) + s).exists())


@pytest.mark.parametrize("suite", ["intl", "sm"])
def test_begin_then_commit_switches_key_and_epoch_in_one_step(tmp_path: Path, suite: str) -> None:
    keywrap.generate_file(tmp_path / "r.kek")
    kek = keywrap.load_file(tmp_path / "r.kek")
    db = tmp_path / "registry.db"
    node = TestNode(bytes.fromhex("c0ffee0000000001"), suite=suite)
    with Registry(db, kek) as reg:
        reg.import_lines([json.dumps(node.record())], now_ms=NOW)
        g0 = reg.generation()
        p = reg.begin_rekey(node.device_id, now_ms=NOW, seed=bytes(range(16)))
        assert p.epoch == 1 and reg.generation() == g0 + 1
        assert p.root_key == rekey.pending_root(suites.suite_id(suite), node.root_key, node.device_id, 1,
                                                bytes(range(16)))
        assert "root_key" not in repr(p) or p.root_key.hex() not in repr(p)
        # idempotent while pending: the same seed and key (a re-sent `rekey` must carry the same seed)
        again = reg.begin_rekey(node.device_id, now_ms=NOW + 1)
        assert (again.epoch, again.seed, again.root_key) == (1, p.seed, p.root_key)
        d = reg.get(node.device_id)
        assert d is not None and d.key_epoch == 0 and d.root_key == node.root_key  # not switched yet
        info = DeviceInfo.of(d, reg.pending(node.device_id))
        assert info.pending_epoch == 1 and info.pending_root == p.root_key and p.root_key.hex() not in repr(info)
        assert not reg.commit_rekey(node.device_id, 2, now_ms=NOW)  # wrong epoch: nothing changes
        assert reg.commit_rekey(node.device_id, 1, now_ms=NOW)
        d = reg.get(node.device_id)
        assert d is not None and d.key_epoch == 1 and d.root_key == p.root_key
        assert reg.pending(node.device_id) is None
        assert not reg.commit_rekey(node.device_id, 1, now_ms=NOW)  # a second confirm changes nothing
        # the next re-key starts from the new key
        p2 = reg.begin_rekey(node.device_id, now_ms=NOW)
        assert p2.epoch == 2 and p2.root_key != p.root_key
    raw = _disk_bytes(db)
    assert p.root_key not in raw and p2.root_key not in raw and node.root_key not in raw  # wrapped at rest


def test_pending_key_is_rewrapped_with_the_kek_and_dropped_on_reprovisioning(tmp_path: Path) -> None:
    keywrap.generate_file(tmp_path / "a.kek")
    keywrap.generate_file(tmp_path / "b.kek")
    a, b = keywrap.load_file(tmp_path / "a.kek"), keywrap.load_file(tmp_path / "b.kek")
    db = tmp_path / "registry.db"
    node = TestNode(bytes.fromhex("c0ffee0000000002"))
    with Registry(db) as reg:  # plaintext registry: migrated with its pending key
        reg.import_lines([json.dumps(node.record())], now_ms=NOW)
        p = reg.begin_rekey(node.device_id, now_ms=NOW)
    with Registry(db, a) as reg:
        assert reg.pending(node.device_id) == p
        reg.rewrap(b)
    with Registry(db, b) as reg:
        assert reg.pending(node.device_id) == p
        # a pending key is never usable as the root key and vice versa: the wrap binds its role
        row = reg.conn.execute("SELECT root_key FROM pending_keys").fetchone()
        with pytest.raises(keywrap.KekError):
            keywrap.unwrap(b, node.device_id, bytes(row[0]))
        fresh = TestNode(node.device_id, root_key=bytes(32))
        assert reg.import_lines([json.dumps(fresh.record())], now_ms=NOW, rekey=True).count("rekeyed") == 1
        assert reg.pending(node.device_id) is None
        assert not reg.commit_rekey(node.device_id, 1, now_ms=NOW)  # epoch 1 is now the re-provisioned key
    assert p.root_key not in _disk_bytes(db)


def test_begin_refuses_unknown_and_revoked_devices(tmp_path: Path) -> None:
    node = TestNode(bytes.fromhex("c0ffee0000000003"))
    with Registry(tmp_path / "registry.db") as reg:
        reg.import_lines([json.dumps(node.record())], now_ms=NOW)
        with pytest.raises(RegistryError, match="not registered"):
            reg.begin_rekey(bytes(8), now_ms=NOW)
        reg.revoke(node.device_id, now_ms=NOW)
        with pytest.raises(RegistryError, match="revoked"):
            reg.begin_rekey(node.device_id, now_ms=NOW)


def test_cli_devices_rekey(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    node = TestNode(bytes.fromhex("c0ffee0000000004"))
    with Registry(db) as reg:
        reg.import_lines([json.dumps(node.record())], now_ms=NOW)
    r = CliRunner().invoke(gateway, ["devices", "rekey", node.hex, "--db", str(db), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == {"device_id": node.hex, "pending_epoch": 1}
    assert node.root_key.hex() not in r.output
    r = CliRunner().invoke(gateway, ["devices", "rekey", "00" * 8, "--db", str(db)])
    assert r.exit_code == 1 and "not registered" in r.output
    r = CliRunner().invoke(gateway, ["devices", "rekey", "xyz", "--db", str(db)])
    assert r.exit_code == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT epoch FROM pending_keys").fetchall() == [(1,)]
