"""Registry root keys encrypted at rest: wrap format, KEK files, in-place migration, refusal to start."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifeline.gateway import kek as keywrap
from lifeline.gateway.cli import gateway
from lifeline.gateway.config import ConfigError, parse
from lifeline.gateway.daemon import StartupError
from lifeline.gateway.registry import Registry, RegistryError
from lifeline.gateway.testing import TestNode, provision, start_harness

NOW = 1_700_000_000_000
DEV = bytes.fromhex("0011223344556677")


def _nodes(n: int = 3) -> list[TestNode]:
    return [TestNode(bytes.fromhex("c0ffee00000000%02x" % i)) for i in range(n)]


def _disk_bytes(db: Path) -> bytes:
    """Everything SQLite keeps for this database on disk (file, WAL, shared memory)."""
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(db) + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


@pytest.mark.parametrize("suite", ["intl", "sm"])
def test_wrap_binds_suite_kek_and_device(tmp_path: Path, suite: str) -> None:
    path = tmp_path / "r.kek"
    keywrap.generate_file(path, suite)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    kek = keywrap.load_file(path)
    key = os.urandom(32)
    blob = keywrap.wrap(kek, DEV, key)
    assert blob[0] == keywrap.SUITES[suite] and len(blob) == keywrap.OVERHEAD + 32
    assert key not in blob
    assert keywrap.unwrap(kek, DEV, blob) == key
    assert keywrap.wrap(kek, DEV, key) != blob  # fresh nonce each time
    with pytest.raises(keywrap.KekError, match="does not open"):
        keywrap.unwrap(kek, bytes(8), blob)  # another device's row
    tampered = bytearray(blob)
    tampered[20] ^= 1
    with pytest.raises(keywrap.KekError, match="does not open"):
        keywrap.unwrap(kek, DEV, bytes(tampered))
    keywrap.generate_file(tmp_path / "other.kek", suite)
    with pytest.raises(keywrap.KekError, match="does not open"):
        keywrap.unwrap(keywrap.load_file(tmp_path / "other.kek"), DEV, blob)
    other_suite = "sm" if suite == "intl" else "intl"
    keywrap.generate_file(tmp_path / "x.kek", other_suite)
    with pytest.raises(keywrap.KekError, match=f"wrapped under {suite}"):
        keywrap.unwrap(keywrap.load_file(tmp_path / "x.kek"), DEV, blob)


def test_sm4_gcm_kek_interoperates_with_an_independent_sm4_gcm() -> None:
    """The sm KEK is SM4 in GCM as OpenSSL computes it; cross-check against SM4-ECB + GHASH done here."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, nonce, aad, pt = bytes(range(16)), bytes(range(12)), b"aad", bytes(range(32))
    sealed = keywrap.MemoryKek(keywrap.WRAP_SM, key).seal(nonce, pt, aad)

    def e(block: bytes) -> bytes:
        enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
        return enc.update(block) + enc.finalize()

    def gmul(x: int, y: int) -> int:
        r, z = 0xE1 << 120, 0
        for i in range(127, -1, -1):
            if (y >> i) & 1:
                z ^= x
            x = (x >> 1) ^ r if x & 1 else x >> 1
        return z

    h = int.from_bytes(e(bytes(16)), "big")
    j0 = nonce + b"\x00\x00\x00\x01"
    ct = b""
    for i in range(0, len(pt), 16):
        ctr = nonce + (2 + i // 16).to_bytes(4, "big")
        ct += bytes(a ^ b for a, b in zip(pt[i:i + 16], e(ctr), strict=False))
    y = 0
    for block in (aad.ljust(16, b"\0"), ct[:16], ct[16:32],
                  (len(aad) * 8).to_bytes(8, "big") + (len(ct) * 8).to_bytes(8, "big")):
        y = gmul(y ^ int.from_bytes(block, "big"), h)
    tag = bytes(a ^ b for a, b in zip(y.to_bytes(16, "big"), e(j0), strict=True))
    assert sealed == ct + tag


@pytest.mark.parametrize(("content", "mode", "reason"), [
    (None, 0o600, "does not exist"),
    ("lifeline-kek intl " + "00" * 32, 0o644, "mode 0644"),
    ("hello", 0o600, "expected one line"),
    ("lifeline-kek rot13 " + "00" * 32, 0o600, "unknown suite"),
    ("lifeline-kek intl " + "00" * 16, 0o600, "is 32 bytes, this one is 16"),
    ("lifeline-kek sm zz" + "00" * 15, 0o600, "not hex"),
])
def test_bad_kek_file_is_refused_naming_the_file(tmp_path: Path, content: str | None, mode: int,
                                                  reason: str) -> None:
    path = tmp_path / "registry.kek"
    if content is not None:
        path.write_text(content + "\n")
        path.chmod(mode)
    with pytest.raises(keywrap.KekError) as e:
        keywrap.load_file(path)
    assert str(path) in str(e.value) and reason in str(e.value)
    assert "00" * 16 not in str(e.value)


def test_import_stores_only_wrapped_keys(tmp_path: Path) -> None:
    keywrap.generate_file(tmp_path / "r.kek")
    kek = keywrap.load_file(tmp_path / "r.kek")
    db = tmp_path / "registry.db"
    nodes = _nodes()
    with Registry(db, kek) as reg:
        report = reg.import_lines([json.dumps(n.record()) for n in nodes], now_ms=NOW)
        assert report.count("added") == 3
        assert reg.encrypted
        assert {d.device_id: d.root_key for d in reg.all()} == {n.device_id: n.root_key for n in nodes}
    raw = _disk_bytes(db)
    for n in nodes:
        assert n.root_key not in raw
    # re-key through the same path: the new key is wrapped too, the epoch moves on
    new = TestNode(nodes[0].device_id, root_key=os.urandom(32))
    with Registry(db, kek) as reg:
        assert reg.import_lines([json.dumps(new.record())], now_ms=NOW, rekey=True).count("rekeyed") == 1
        d = reg.get(new.device_id)
        assert d is not None and d.root_key == new.root_key and d.key_epoch == 1
    assert new.root_key not in _disk_bytes(db)


def test_plaintext_registry_is_migrated_in_place_and_wiped(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    nodes = _nodes(5)
    provision(db, nodes)  # today's plaintext registry
    with Registry(db) as reg:
        before = list(reg.all())
        generation = reg.generation()
        assert not reg.encrypted
    assert nodes[0].root_key in _disk_bytes(db)  # the check below can fail

    keywrap.generate_file(tmp_path / "r.kek", "sm")
    kek = keywrap.load_file(tmp_path / "r.kek")
    with Registry(db, kek) as reg:
        assert reg.encrypted
        assert list(reg.all()) == before
        assert reg.generation() == generation  # same keys: a running daemon need not reload
    raw = _disk_bytes(db)
    for n in nodes:
        assert n.root_key not in raw, "plaintext root key left in the database file after migration"
    with Registry(db, kek) as reg:  # idempotent: opening again neither re-migrates nor fails
        assert [d.root_key for d in reg.all()] == [d.root_key for d in before]


def test_wrong_or_missing_kek_is_refused_without_leaking(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    provision(db, _nodes())
    keywrap.generate_file(tmp_path / "right.kek")
    keywrap.generate_file(tmp_path / "wrong.kek")
    Registry(db, keywrap.load_file(tmp_path / "right.kek")).close()
    wrong = keywrap.load_file(tmp_path / "wrong.kek")
    with pytest.raises(RegistryError) as e:
        Registry(db, wrong)
    msg = str(e.value)
    assert str(db) in msg and str(tmp_path / "wrong.kek") in msg and "not wrapped under" in msg
    secret = (tmp_path / "wrong.kek").read_text().split()[2]
    assert secret not in msg and secret[:16] not in msg
    with pytest.raises(RegistryError, match="encrypted at rest and no key-encryption key"):
        Registry(db)
    with Registry(db, metadata_only=True) as reg:  # listings and rule attributes need no KEK
        listed = list(reg.all())
        assert len(listed) == 3 and all(d.root_key == b"" for d in listed)
        with pytest.raises(RegistryError, match="metadata only"):
            reg.import_lines([json.dumps(_nodes(1)[0].record())], now_ms=NOW)
        from lifeline.gateway.devices import DeviceInfo

        with pytest.raises(RegistryError, match="no root key in this registry view"):
            DeviceInfo.of(listed[0])  # a metadata-only record can never reach the radio path


def test_config_keys_section(tmp_path: Path) -> None:
    base = '[gateway]\nid = "gw-1"\n'
    cfg = parse(base + '[keys]\nkek_file = "/etc/lifeline/registry.kek"\n')
    assert cfg.keys.kek_file == Path("/etc/lifeline/registry.kek") and cfg.keys.pkcs11 is None
    cfg = parse(base + '[keys.pkcs11]\nmodule = "/m.so"\ntoken_label = "t"\npin_file = "/p"\n'
                'signing_key_label = "s"\n')
    assert cfg.keys.pkcs11 is not None and cfg.keys.pkcs11.signing_key_label == "s"
    with pytest.raises(ConfigError, match=re.escape("keys.pkcs11.kek_label: keys.kek_file and")):
        parse(base + '[keys]\nkek_file = "/k"\n[keys.pkcs11]\nmodule = "/m.so"\ntoken_label = "t"\n'
              'pin_file = "/p"\nkek_label = "k"\n')
    with pytest.raises(ConfigError, match="neither signing_key_label nor kek_label"):
        parse(base + '[keys.pkcs11]\nmodule = "/m.so"\ntoken_label = "t"\npin_file = "/p"\n')
    with pytest.raises(ConfigError, match=re.escape("keys.pkcs11.pin_file: required")):
        parse(base + '[keys.pkcs11]\nmodule = "/m.so"\ntoken_label = "t"\nkek_label = "k"\n')
    with pytest.raises(ConfigError, match=re.escape("keys.kek: unknown key")):
        parse(base + '[keys]\nkek = "x"\n')


async def test_daemon_migrates_then_runs_on_wrapped_keys(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    kek_file = tmp_path / "registry.kek"
    keywrap.generate_file(kek_file)
    nodes = _nodes(2)
    h = await start_harness(state, nodes, sections={"keys": {"kek_file": str(kek_file)}})
    try:
        assert h.gw.gateway_keys.describe()["registry_keys"] == f"AES-256-GCM (file {kek_file})"
        from lifeline.gateway.metrics import parse_text
        from lifeline.gateway.statusinfo import summarise

        assert summarise(parse_text(h.gw.metrics.render()))["keys"] == {
            "registry": {"where": "file", "cipher": "AES-256-GCM"}, "signing": {"where": "file", "cipher": "intl"}}
        await h.hear(nodes[0].smoke())
        await h.hear(nodes[1].smoke(alarm_state=1))
        assert h.rejects() == {}
        assert h.gw.stats.accepted.total() == 2
    finally:
        await h.stop()
    for n in nodes:
        assert n.root_key not in _disk_bytes(h.config.gateway.registry_db)


async def test_daemon_refuses_to_start_with_a_wrong_or_missing_kek(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    good, bad = tmp_path / "good.kek", tmp_path / "bad.kek"
    keywrap.generate_file(good)
    keywrap.generate_file(bad)
    nodes = _nodes(1)
    h = await start_harness(state, nodes, sections={"keys": {"kek_file": str(good)}})
    await h.stop()
    with pytest.raises(StartupError) as e:
        await start_harness(state, (), sections={"keys": {"kek_file": str(bad)}})
    assert str(bad) in str(e.value) and "not wrapped under" in str(e.value)
    assert bad.read_text().split()[2] not in str(e.value)
    with pytest.raises(StartupError, match=f"key-encryption key file {tmp_path / 'gone.kek'} does not exist"):
        await start_harness(state, (), sections={"keys": {"kek_file": str(tmp_path / "gone.kek")}})
    bad.chmod(0o640)
    with pytest.raises(StartupError, match="mode 0640"):
        await start_harness(state, (), sections={"keys": {"kek_file": str(bad)}})
    with pytest.raises(StartupError, match="no key-encryption key is configured"):
        await start_harness(state, ())
    h = await start_harness(tmp_path / "plain", ())  # no KEK, plaintext registry: runs, says so
    try:
        from lifeline.gateway.metrics import parse_text
        from lifeline.gateway.statusinfo import summarise

        keys_status = summarise(parse_text(h.gw.metrics.render()))["keys"]
        assert keys_status["registry"] == {"where": "plaintext", "cipher": "none"}
    finally:
        await h.stop()


def test_cli_kekgen_import_list(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kek_file = tmp_path / "registry.kek"
    run = CliRunner().invoke
    r = run(gateway, ["kekgen", "--out", str(kek_file), "--suite", "sm"])
    assert r.exit_code == 0 and "SM4-GCM" in r.output, r.output
    r = run(gateway, ["kekgen", "--out", str(kek_file)])
    assert r.exit_code == 1 and "refusing to overwrite" in r.output
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nid = "gw-1"\nstate_dir = "{state}"\n[keys]\nkek_file = "{kek_file}"\n')
    nodes = _nodes(2)
    src = tmp_path / "prov.jsonl"
    src.write_text("".join(json.dumps(n.record()) + "\n" for n in nodes))
    r = run(gateway, ["devices", "import", str(src), "--config", str(cfg)])
    assert r.exit_code == 0 and "2 added" in r.output, r.output
    db = state / "registry.db"
    assert nodes[0].root_key not in _disk_bytes(db)
    r = run(gateway, ["devices", "list", "--config", str(cfg), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 2
    other = tmp_path / "other.kek"
    keywrap.generate_file(other, "sm")
    r = run(gateway, ["devices", "import", str(src), "--db", str(db), "--kek-file", str(other)])
    assert r.exit_code == 3 and str(other) in r.output and "not wrapped under" in r.output
    r = run(gateway, ["devices", "revoke", nodes[0].hex, "--config", str(cfg)])
    assert r.exit_code == 0, r.output


def test_kek_rotation_rewraps_every_key(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    nodes = _nodes(4)
    old, new = tmp_path / "old.kek", tmp_path / "new.kek"
    keywrap.generate_file(old)
    keywrap.generate_file(new, "sm")  # a rotation may change the suite too
    with Registry(db, keywrap.load_file(old)) as reg:
        reg.import_lines([json.dumps(n.record()) for n in nodes], now_ms=NOW)
        before = list(reg.all())
    r = CliRunner().invoke(gateway, ["devices", "rewrap", "--db", str(db), "--kek-file", str(old),
                                     "--new-kek-file", str(new)])
    assert r.exit_code == 0 and "4 root key(s) now wrapped under SM4-GCM" in r.output, r.output
    with pytest.raises(RegistryError, match="not wrapped under"):
        Registry(db, keywrap.load_file(old))
    with Registry(db, keywrap.load_file(new)) as reg:
        assert list(reg.all()) == before
    raw = _disk_bytes(db)
    assert not any(n.root_key in raw for n in nodes)
    r = CliRunner().invoke(gateway, ["devices", "rewrap", "--db", str(db), "--new-kek-file", str(old)])
    assert r.exit_code == 3 and "no key-encryption key is configured (keys.kek_file or" in r.output
