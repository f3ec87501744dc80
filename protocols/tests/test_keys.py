"""Gateway Ed25519 key files: 0600 from the first byte, atomic replace, loose permissions refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lifeline.protocols import keys


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_round_trip_and_mode_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    key = keys.generate()
    old = os.umask(0)
    try:
        path = keys.save_private_key(key, tmp_path / "gateway.key")
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    loaded = keys.load_private_key(path)
    assert keys.public_key_raw(loaded) == keys.public_key_raw(key)
    assert os.listdir(tmp_path) == ["gateway.key"]  # no temporary left behind


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "gateway.key"
    first = keys.generate()
    keys.save_private_key(first, path)
    with pytest.raises(FileExistsError):
        keys.save_private_key(keys.generate(), path)
    assert keys.public_key_raw(keys.load_private_key(path)) == keys.public_key_raw(first)
    second = keys.generate()
    keys.save_private_key(second, path, overwrite=True)
    assert keys.public_key_raw(keys.load_private_key(path)) == keys.public_key_raw(second)
    assert mode(path) == 0o600


def test_a_failed_write_leaves_neither_a_partial_key_nor_a_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.key"
    old_key = keys.generate()
    keys.save_private_key(old_key, path)

    def disk_full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        keys.save_private_key(keys.generate(), path, overwrite=True)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["gateway.key"]
    assert keys.public_key_raw(keys.load_private_key(path)) == keys.public_key_raw(old_key)


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_load_refuses_group_or_other_access_without_leaking_the_key(tmp_path: Path, loose: int) -> None:
    key = keys.generate()
    path = keys.save_private_key(key, tmp_path / "gateway.key")
    os.chmod(path, loose)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(path)
    assert info.value.reason == "insecure_permissions"
    message = str(info.value)
    assert f"{loose:04o}" in message and "chmod 600" in message and str(path) in message
    pem = keys.private_pem(key).decode()
    body = "".join(pem.splitlines()[1:-1])
    assert body not in message and "PRIVATE KEY" not in message


def test_load_errors_have_reasons(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(tmp_path / "absent.key")
    assert info.value.reason == "missing"

    garbage = tmp_path / "garbage.key"
    fd = os.open(garbage, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(garbage)
    assert info.value.reason == "bad_key"

    ec_path = tmp_path / "ec.key"
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(ec_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, ec_pem)
    os.close(fd)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(ec_path)
    assert info.value.reason == "not_ed25519"

    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(tmp_path)
    assert info.value.reason in ("not_a_file", "unreadable")


def test_load_does_not_follow_a_symlink(tmp_path: Path) -> None:
    real = keys.save_private_key(keys.generate(), tmp_path / "real.key")
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_private_key(link)
    assert info.value.reason == "unreadable"


class Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def test_read_private_file_bounds_the_size_and_raises_the_callers_error(tmp_path: Path) -> None:
    """The one reader of 0600 files (keys, KEK, PIN, status-page token): a size bound, the caller's
    exception type, never the content in a message."""
    secret = b"s3cret-pin"
    path = keys.write_private_file(tmp_path / "token.pin", secret)
    assert keys.read_private_file(path, "PIN file", max_bytes=len(secret), error=Refused) == secret
    with pytest.raises(Refused) as info:
        keys.read_private_file(path, "PIN file", max_bytes=len(secret) - 1, error=Refused)
    assert info.value.reason == "too_large"
    assert str(info.value) == f"PIN file {path} is larger than {len(secret) - 1} bytes"
    big = keys.write_private_file(tmp_path / "big.key", b"k" * (keys.MAX_KEY_FILE + 1))
    with pytest.raises(keys.KeyFileError) as kinfo:
        keys.load_signing_key(big)
    assert kinfo.value.reason == "too_large"
    os.chmod(path, 0o640)
    with pytest.raises(Refused) as info:
        keys.read_private_file(path, "PIN file", error=Refused)
    assert info.value.reason == "insecure_permissions" and "0640" in str(info.value)
    assert secret.decode() not in str(info.value)
    link = tmp_path / "link.pin"
    link.symlink_to(path)
    os.chmod(path, 0o600)
    with pytest.raises(Refused) as info:
        keys.read_private_file(link, "PIN file", error=Refused)
    assert info.value.reason == "unreadable"


def test_public_key_exports_round_trip() -> None:
    key = keys.generate()
    raw = keys.public_key_raw(key)
    assert len(raw) == 32
    assert keys.public_key_hex(key) == raw.hex()
    pem = keys.public_key_pem(key)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    for form in (raw, raw.hex(), pem, pem.decode()):
        assert keys.public_key_raw(keys.load_public_key(form)) == raw
    assert keys.public_key_raw(key.public_key()) == raw
    for bad in ("zz", b"\x00" * 31, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"):
        with pytest.raises(keys.KeyFileError):
            keys.load_public_key(bad)
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(keys.KeyFileError) as info:
        keys.load_public_key(ec_pub)
    assert info.value.reason == "not_ed25519"
