"""`lifeline gateway init`: the starter config validates, the key and the token are 0600 and never
replaced, a second run creates only what is missing, and nothing secret is printed."""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path

from click.testing import CliRunner

from lifeline.gateway.cli import gateway
from lifeline.gateway.config import load
from lifeline.gateway.statuspage import load_token
from lifeline.protocols import keys


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _init(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(gateway, ["init", *args])
    return r.exit_code, r.output


def test_init_writes_config_key_and_token(tmp_path: Path) -> None:
    d, state = tmp_path / "etc", tmp_path / "state"
    code, out = _init("--dir", str(d), "--id", "gw-0042", "--state-dir", str(state))
    assert code == 0, out
    cfg_file, key_file, token_file = d / "gateway.toml", d / "gateway.key", d / "status.token"
    kek_file = d / "registry.kek"
    assert (_mode(cfg_file), _mode(key_file), _mode(token_file), _mode(state)) == (0o640, 0o600, 0o600, 0o700)
    assert _mode(kek_file) == 0o600
    cfg = load(cfg_file)  # round-trips through the validator
    assert cfg.gateway.id == "gw-0042" and cfg.gateway.key_file == key_file and cfg.gateway.state_dir == state
    assert cfg.status_page.token_file == token_file and cfg.status_page.listen == "127.0.0.1"
    assert cfg.keys.kek_file == kek_file  # a new gateway's registry is encrypted at rest from the start
    text = cfg_file.read_text()
    assert text.startswith("# Lifeline gateway configuration") and "# [[uplink.endpoints]]" in text
    key = keys.load_private_key(key_file)
    token = load_token(token_file)
    pem = key_file.read_text()
    assert keys.public_key_hex(key) in out  # the public half is for the platform operator
    assert token not in out and pem.splitlines()[1] not in out  # secrets are never printed
    assert kek_file.read_text().split()[2] not in out
    assert "Next steps:" in out and f"check-config {cfg_file}" in out and "systemctl enable --now" in out
    r = CliRunner().invoke(gateway, ["check-config", str(cfg_file)])
    assert r.exit_code == 0, r.output

    # again: everything kept, byte for byte
    before = {p: p.read_bytes() for p in (cfg_file, key_file, token_file, kek_file)}
    code, out = _init("--dir", str(d), "--id", "gw-other", "--json")
    assert code == 0, out
    res = json.loads(out)
    assert (res["config_written"], res["key_created"], res["token_created"]) == (False, False, False)
    assert res["gateway_id"] == "gw-0042" and res["public_key"] == keys.public_key_hex(key)
    assert set(res) == {"gateway_id", "config", "config_written", "key", "key_created", "public_key", "token",
                        "token_created", "state_dir", "status_url", "kek", "kek_created"}
    assert res["kek_created"] is False
    assert token not in out
    assert {p: p.read_bytes() for p in before} == before

    # --force rewrites the config only; a missing token is made again, the key stays
    token_file.unlink()
    code, out = _init("--dir", str(d), "--id", "gw-0043", "--state-dir", str(state), "--force")
    assert code == 0, out
    assert load(cfg_file).gateway.id == "gw-0043"
    assert key_file.read_bytes() == before[key_file]
    assert load_token(token_file) != token and "created " + str(token_file) in out


def test_init_refuses_bad_input_and_unsafe_files(tmp_path: Path) -> None:
    code, out = _init("--dir", str(tmp_path / "a"), "--id", "bad id!", "--state-dir", str(tmp_path / "s"))
    assert code == 2 and "does not match" in out
    assert not (tmp_path / "a" / "gateway.toml").exists()

    d = tmp_path / "b"
    d.mkdir()
    keys.save_private_key(keys.generate(), d / "gateway.key")
    (d / "gateway.key").chmod(0o644)  # someone loosened it: init says so, does not silently use it
    code, out = _init("--dir", str(d), "--id", "gw-1", "--state-dir", str(tmp_path / "s"))
    assert code == 3 and "chmod 600" in out

    code, out = _init("--dir", str(tmp_path / "c"), "--owner", "no-such-user-here")
    assert code == 2 and "no such user" in out


def test_init_keeps_an_operators_config_that_is_not_finished(tmp_path: Path) -> None:
    """The Debian package ships a config without gateway.id; init (from postinst) adds key and token."""
    from lifeline.gateway.config_template import starter

    d = tmp_path / "etc"
    d.mkdir()
    shipped = starter(None, token_file=d / "status.token", key_file=d / "gateway.key")
    (d / "gateway.toml").write_text(shipped)
    code, out = _init("--dir", str(d), "--state-dir", str(tmp_path / "state"))
    assert code == 0, out
    assert (d / "gateway.toml").read_text() == shipped
    assert _mode(d / "gateway.key") == 0o600 and load_token(d / "status.token")
    assert "gateway (not set)" in out


def test_init_owner(tmp_path: Path) -> None:
    """--owner gives the key, token and state dir to the daemon user (root only)."""
    nobody = pwd.getpwnam("nobody")
    d, state = tmp_path / "etc", tmp_path / "state"
    code, out = _init("--dir", str(d), "--id", "gw-9", "--state-dir", str(state), "--owner", "nobody")
    if os.geteuid() != 0:
        assert code == 3 and "needs root" in out
        return
    assert code == 0, out
    for p in (d / "gateway.key", d / "status.token", state):
        assert (p.stat().st_uid, p.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid), p
    cfg = (d / "gateway.toml").stat()
    assert (cfg.st_uid, cfg.st_gid, _mode(d / "gateway.toml")) == (0, nobody.pw_gid, 0o640)
