"""Gateway signing keys of both suites on disk: SM2 keys 0600 like Ed25519 ones, the configured suite must
match the key, public keys of either suite load from raw, hex and PEM, and `lifeline gateway keygen
--suite sm` writes a key the gateway config accepts."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lifeline.gateway import config as C
from lifeline.protocols import keys, sm2

LIFELINE = str(Path(sys.executable).with_name("lifeline"))


def test_sm2_key_file_round_trip_0600(tmp_path: Path) -> None:
    key = keys.generate_for("sm")
    path = keys.save_private_key(key, tmp_path / "gw.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = keys.load_signing_key(path, "sm")
    assert isinstance(again, sm2.SM2PrivateKey)
    assert keys.public_key_raw(again) == keys.public_key_raw(key) and len(keys.public_key_raw(key)) == 65
    assert keys.suite_of(again) == "sm"
    path.chmod(0o640)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_signing_key(path)
    assert info.value.reason == "insecure_permissions"


def test_the_configured_suite_must_match_the_key(tmp_path: Path) -> None:
    sm_path = keys.save_private_key(keys.generate_for("sm"), tmp_path / "sm.key")
    ed_path = keys.save_private_key(keys.generate_for("intl"), tmp_path / "ed.key")
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_signing_key(sm_path, "intl")
    assert info.value.reason == "wrong_suite" and "--suite intl" in str(info.value)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_signing_key(ed_path, "sm")
    assert info.value.reason == "wrong_suite"
    # the Ed25519-only loader (technician keys) refuses an SM2 file with a reason, not a traceback
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(sm_path)
    assert info.value.reason in ("bad_key", "not_ed25519")


def test_garbage_key_files_are_refused_plainly(tmp_path: Path) -> None:
    for i, data in enumerate((b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")):
        p = tmp_path / f"k{i}"
        p.write_bytes(data)
        p.chmod(0o600)
        with pytest.raises(keys.KeyFileError) as info:
            keys.load_signing_key(p)
        assert info.value.reason == "bad_key"


def test_public_keys_of_both_suites_load_from_every_form() -> None:
    for suite in ("intl", "sm"):
        key = keys.generate_for(suite)
        raw = keys.public_key_raw(key)
        for form in (raw, raw.hex(), raw.hex() + "\n", keys.public_key_pem(key), keys.public_key_pem(key).decode()):
            assert keys.public_key_raw(keys.load_verify_key(form)) == raw
    with pytest.raises(keys.KeyFileError):
        keys.load_verify_key(b"\x04" + bytes(64))
    with pytest.raises(keys.KeyFileError):
        keys.load_verify_key("zz")


def test_config_suite_is_validated() -> None:
    cfg = C.parse('[gateway]\nid = "gw-1"\nsuite = "sm"\n', "gw.toml")
    assert cfg.gateway.suite == "sm"
    assert C.parse('[gateway]\nid = "gw-1"\n', "gw.toml").gateway.suite == "intl"
    with pytest.raises(C.ConfigError) as info:
        C.parse('[gateway]\nid = "gw-1"\nsuite = "sm2"\n', "gw.toml")
    assert "gateway.suite" in str(info.value) and "gw.toml" in str(info.value)


def test_keygen_suite_sm_cli(tmp_path: Path) -> None:
    out = tmp_path / "gateway.key"
    r = subprocess.run([LIFELINE, "gateway", "keygen", "--suite", "sm", "--out", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pub = bytes.fromhex(r.stdout.strip())
    assert len(pub) == 65 and pub[0] == 4
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = keys.load_signing_key(out, "sm")
    assert keys.public_key_raw(key) == pub
    assert "PRIVATE" not in r.stdout and "PRIVATE" not in r.stderr
