"""Keys in a PKCS#11 token (SoftHSM2): Ed25519 batch signatures made inside the token verify here and with
an independent COSE implementation (pycose); the registry KEK as a token AES key; PIN and key errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from lifeline.gateway import hsm
from lifeline.gateway import kek as keywrap
from lifeline.gateway.config import Pkcs11Config
from lifeline.gateway.daemon import StartupError
from lifeline.gateway.keystore import KeyStoreError, open_keys
from lifeline.gateway.registry import Registry, RegistryError
from lifeline.gateway.testing import MemoryPublisher, TestNode, config_text, start_harness
from lifeline.protocols import batch, keys
from lifeline.tools.softhsm import SoftHsm

TOKEN = "lifeline-test"
ROOT = Path(__file__).resolve().parents[2]
COSE_PY = ROOT / ".venv-cose" / "bin" / "python"

PYCOSE_VERIFY = r'''
import json, sys
from pycose.messages import Sign1Message
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
job = json.load(sys.stdin)
out = []
for item in job["verify"]:
    try:
        msg = Sign1Message.decode(bytes.fromhex(item))
        msg.key = OKPKey(crv=Ed25519, x=bytes.fromhex(job["public_key"]))
        out.append(bool(msg.verify_signature()))
    except Exception as exc:
        out.append(type(exc).__name__)
json.dump(out, sys.stdout)
'''


def pycose_verify(public_key_hex: str, messages: list[bytes], tmp_path: Path) -> list[object]:
    assert COSE_PY.exists(), f"{COSE_PY} missing: run tools/bootstrap.sh setup (it creates .venv-cose)"
    script = tmp_path / "verify.py"
    script.write_text(PYCOSE_VERIFY)
    r = subprocess.run([str(COSE_PY), str(script)], input=json.dumps(
        {"public_key": public_key_hex, "verify": [m.hex() for m in messages]}), capture_output=True, text=True,
        timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _cfg(softhsm: SoftHsm, **labels: str | None) -> Pkcs11Config:
    return Pkcs11Config(module=softhsm.module, token_label=TOKEN, pin_file=softhsm.pin_file(TOKEN),
                        signing_key_label=labels.get("signing_key_label"), kek_label=labels.get("kek_label"))


def _admin(softhsm: SoftHsm) -> hsm.Token:
    return hsm.Token(softhsm.module, TOKEN, softhsm.pins[TOKEN], rw=True)


def test_token_signed_batches_verify_here_and_with_pycose(softhsm: SoftHsm, tmp_path: Path) -> None:
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    admin = _admin(softhsm)
    try:
        pub = admin.generate_signing_key("sign-batches")
        priv = admin.session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC_EDWARDS,
                                     label="sign-batches")
        assert priv[Attribute.SENSITIVE] and not priv[Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.PKCS11Error):  # the private value never leaves the token
            priv[Attribute.VALUE]
    finally:
        admin.close()

    token = hsm.Token.from_config(_cfg(softhsm, signing_key_label="sign-batches"))
    try:
        signer = token.signer("sign-batches")
        assert keys.public_key_hex(signer.public_key()) == keys.public_key_hex(pub)
        assert "sign-batches" in repr(signer) and softhsm.pins[TOKEN] not in repr(signer) + repr(token)
        bs = batch.BatchSigner(signer, "gw-hsm")
        node = TestNode(bytes.fromhex("00000000000000aa"))
        rec = batch.BatchRecord(device_id=node.device_id, fcnt=1, node_time=5, rx_ms=1_700_000_000_000, kind=1,
                                fields={1: 0, 5: 215, 15: 3000}, data_class=1, receptions=(), flags=0,
                                record_type=0, priority=2)
        signed = [bs.sign([rec] * n, lane=0, created_ms=1_700_000_000_000 + n) for n in range(1, 6)]
        chain = [batch.verify(s.data, pub) for s in signed]
        assert [b.seq for b in chain] == [0, 1, 2, 3, 4]
        tampered = bytearray(signed[0].data)
        tampered[-3] ^= 0x04
        with pytest.raises(batch.BatchError):
            batch.verify(bytes(tampered), pub)
        answers = pycose_verify(keys.public_key_hex(pub), [s.data for s in signed] + [bytes(tampered)], tmp_path)
        assert answers == [True] * 5 + [False]
    finally:
        token.close()


def test_token_kek_wraps_registry_keys(softhsm: SoftHsm, tmp_path: Path) -> None:
    admin = _admin(softhsm)
    try:
        admin.generate_kek("registry-kek-1")
        admin.generate_kek("registry-kek-2")
    finally:
        admin.close()
    token = hsm.Token.from_config(_cfg(softhsm, kek_label="registry-kek-1"))
    try:
        kek = token.kek("registry-kek-1")
        nodes = [TestNode(bytes.fromhex("00000000000001%02x" % i)) for i in range(3)]
        db = tmp_path / "registry.db"
        with Registry(db, kek) as reg:
            assert reg.import_lines([json.dumps(n.record()) for n in nodes], now_ms=1).count("added") == 3
        raw = b"".join(Path(str(db) + s).read_bytes() for s in ("", "-wal") if Path(str(db) + s).exists())
        assert not any(n.root_key in raw for n in nodes)
        with Registry(db, kek) as reg:
            assert sorted(d.root_key for d in reg.all()) == sorted(n.root_key for n in nodes)
        # a blob of the token key is a standard AES-256-GCM blob: same format as a file KEK's (suite intl)
        blob = keywrap.wrap(kek, nodes[0].device_id, nodes[0].root_key)
        assert blob[0] == keywrap.WRAP_INTL
        with pytest.raises(RegistryError, match="registry-kek-2"):
            Registry(db, token.kek("registry-kek-2"))
        with pytest.raises(hsm.TokenError, match="no AES SECRET_KEY labelled 'nope'"):
            token.kek("nope")
    finally:
        token.close()


def test_pin_and_token_errors_name_the_place_never_the_pin(softhsm: SoftHsm, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("99999999\n")
    wrong.chmod(0o600)
    cfg = _cfg(softhsm, signing_key_label="x")
    with pytest.raises(hsm.TokenError) as e:
        hsm.Token.from_config(Pkcs11Config(cfg.module, TOKEN, wrong, "x", None))
    assert "PIN was refused" in str(e.value) and TOKEN in str(e.value) and "99999999" not in str(e.value)
    loose = tmp_path / "loose.pin"
    loose.write_text(softhsm.pins[TOKEN])
    loose.chmod(0o644)
    with pytest.raises(hsm.TokenError, match=f"token PIN file {loose} has mode 0644"):
        hsm.Token.from_config(Pkcs11Config(cfg.module, TOKEN, loose, "x", None))
    with pytest.raises(hsm.TokenError, match="token 'no-such-token': no such token"):
        hsm.Token.from_config(Pkcs11Config(cfg.module, "no-such-token", cfg.pin_file, "x", None))
    with pytest.raises(hsm.TokenError, match="cannot load the module"):
        hsm.Token.from_config(Pkcs11Config(tmp_path / "missing.so", TOKEN, cfg.pin_file, "x", None))
    token = hsm.Token.from_config(cfg)
    try:
        with pytest.raises(hsm.TokenError, match="no EC_EDWARDS PRIVATE_KEY labelled 'absent'"):
            token.signer("absent")
    finally:
        token.close()


async def test_gateway_signs_with_the_token_and_unwraps_with_the_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    admin = _admin(softhsm)
    try:
        pub = admin.generate_signing_key("gw-sign")
        admin.generate_kek("gw-kek")
    finally:
        admin.close()
    state = tmp_path / "state"
    pkcs = {"module": str(softhsm.module), "token_label": TOKEN, "pin_file": str(softhsm.pin_file(TOKEN)),
            "signing_key_label": "gw-sign", "kek_label": "gw-kek"}
    node = TestNode(bytes.fromhex("00000000000002aa"))
    pubr = MemoryPublisher()
    h = await start_harness(state, [node], publisher=pubr, sections={"keys.pkcs11": pkcs})
    try:
        assert h.gw.gateway_keys.describe() == {
            "registry_keys": f"AES-256-GCM (PKCS#11 module {softhsm.module}, token '{TOKEN}', key 'gw-kek')",
            "signing_key": f"PKCS#11 token '{TOKEN}', key 'gw-sign'"}
        from lifeline.gateway.metrics import parse_text
        from lifeline.gateway.statusinfo import summarise

        assert summarise(parse_text(h.gw.metrics.render()))["keys"] == {
            "registry": {"where": "pkcs11", "cipher": "AES-256-GCM"}, "signing": {"where": "pkcs11", "cipher": "intl"}}
        await h.hear(node.smoke(alarm_state=1))
        await h.hear(node.smoke())
        h.clock.advance(60_000)
        while await h.gw.forwarder.step() == 0:
            await h.gw.forwarder.wait_inflight()
        await h.gw.forwarder.wait_inflight()
        ups = [p for t, p in pubr.published if "/up/" in t]
        assert sum(len(batch.verify(p, pub).records) for p in ups) == 2
        with pytest.raises(batch.BatchError):  # not signed by the file key start_harness also wrote
            batch.verify(next(p for t, p in pubr.published if "/up/" in t), h.key.public_key())
    finally:
        await h.stop()
    # a wrong PIN: the daemon refuses to start, naming the token, not the PIN
    bad_pin = tmp_path / "bad.pin"
    bad_pin.write_text("00000000\n")
    bad_pin.chmod(0o600)
    with pytest.raises(StartupError) as e:
        await start_harness(state, (), sections={"keys.pkcs11": {**pkcs, "pin_file": str(bad_pin)}})
    assert "PIN was refused" in str(e.value) and "00000000" not in str(e.value)


def test_open_keys_from_config(softhsm: SoftHsm, tmp_path: Path) -> None:
    from lifeline.gateway.config import parse

    state = tmp_path / "s"
    text = config_text(state, sections={"keys.pkcs11": {
        "module": str(softhsm.module), "token_label": TOKEN, "pin_file": str(softhsm.pin_file(TOKEN)),
        "signing_key_label": "never-made"}})
    with pytest.raises(KeyStoreError, match="no EC_EDWARDS PRIVATE_KEY labelled 'never-made'"):
        open_keys(parse(text))
    admin = _admin(softhsm)
    try:
        admin.generate_signing_key("suite-check")
    finally:
        admin.close()
    sm = config_text(state, extra="", sections={"keys.pkcs11": {
        "module": str(softhsm.module), "token_label": TOKEN, "pin_file": str(softhsm.pin_file(TOKEN)),
        "signing_key_label": "suite-check"}}).replace("[gateway]\n", '[gateway]\nsuite = "sm"\n', 1)
    with pytest.raises(KeyStoreError, match=re.escape("is of suite intl, but gateway.suite is sm")):
        open_keys(parse(sm))
    assert os.environ["SOFTHSM2_CONF"] == str(softhsm.conf)


def test_token_keys_cli_creates_imports_and_keeps(softhsm: SoftHsm, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from lifeline.gateway.cli import gateway

    def config(sign_label: str, kek_label: str) -> Path:
        path = tmp_path / f"{sign_label}.toml"
        path.write_text(config_text(tmp_path / "state", sections={"keys.pkcs11": {
            "module": str(softhsm.module), "token_label": TOKEN, "pin_file": str(softhsm.pin_file(TOKEN)),
            "signing_key_label": sign_label, "kek_label": kek_label}}))
        return path

    cfg = config("cli-sign", "cli-kek")
    r = CliRunner().invoke(gateway, ["token-keys", "--config", str(cfg), "--json"])
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)
    assert (first["signing_key"], first["kek"]) == ("created", "created")
    r = CliRunner().invoke(gateway, ["token-keys", "--config", str(cfg), "--json"])
    again = json.loads(r.output)
    assert (again["signing_key"], again["kek"], again["public_key"]) == ("present", "present", first["public_key"])

    pem = tmp_path / "old-gateway.key"
    old = keys.generate()
    keys.save_private_key(old, pem)
    r = CliRunner().invoke(gateway, ["token-keys", "--config", str(config("cli-moved", "cli-kek")),
                                     "--import-key", str(pem)])
    assert r.exit_code == 0, r.output
    assert "signing_key: imported" in r.output and keys.public_key_hex(old) in r.output
    token = hsm.Token.from_config(_cfg(softhsm, signing_key_label="cli-moved"))
    try:  # the token signs exactly as the file key did (Ed25519 is deterministic)
        assert token.signer("cli-moved").sign(b"sig structure") == old.sign(b"sig structure")
    finally:
        token.close()


def test_bench_keys_reports_every_figure(tmp_path: Path) -> None:
    """`lifeline bench --only keys` (its own process: SoftHSM2 reads its config once per process)."""
    import sys

    lifeline = str(Path(sys.executable).with_name("lifeline"))
    r = subprocess.run([lifeline, "bench", "--only", "keys", "--quick", "--json"], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    figures = {f["name"]: f for f in json.loads(r.stdout)["figures"]}
    assert set(figures) == {"sign_file_ed25519", "sign_pkcs11_ed25519", "unwrap_file_aes256gcm",
                            "unwrap_file_sm4gcm", "unwrap_pkcs11_aes256gcm", "registry_load_plaintext",
                            "registry_load_file_aes256gcm", "registry_load_pkcs11_aes256gcm"}
    assert all(f["value"] > 0 for f in figures.values())
    assert figures["registry_load_file_aes256gcm"]["baseline"] == "registry_load_plaintext"


def test_rewrap_from_a_kek_file_to_a_token_kek(softhsm: SoftHsm, tmp_path: Path) -> None:
    """File KEK -> token KEK: the config names the token key, `token-keys` makes it, `rewrap --kek-file OLD`."""
    from click.testing import CliRunner

    from lifeline.gateway.cli import gateway

    state = tmp_path / "state"
    old = tmp_path / "registry.kek"
    keywrap.generate_file(old)
    nodes = [TestNode(bytes.fromhex("00000000000003%02x" % i)) for i in range(3)]
    with Registry(state / "registry.db", keywrap.load_file(old)) as reg:
        reg.import_lines([json.dumps(n.record()) for n in nodes], now_ms=1)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(config_text(state, sections={"keys.pkcs11": {
        "module": str(softhsm.module), "token_label": TOKEN, "pin_file": str(softhsm.pin_file(TOKEN)),
        "kek_label": "moved-kek"}}))
    r = CliRunner().invoke(gateway, ["token-keys", "--config", str(cfg)])
    assert r.exit_code == 0 and "kek: created" in r.output, r.output
    r = CliRunner().invoke(gateway, ["devices", "rewrap", "--config", str(cfg), "--kek-file", str(old)])
    assert r.exit_code == 0, r.output
    assert "3 root key(s) now wrapped under AES-256-GCM (PKCS#11 module" in r.output and "'moved-kek'" in r.output
    token = hsm.Token.from_config(_cfg(softhsm, kek_label="moved-kek"))
    try:
        with Registry(state / "registry.db", token.kek("moved-kek")) as reg:
            assert sorted(d.root_key for d in reg.all()) == sorted(n.root_key for n in nodes)
    finally:
        token.close()
    with pytest.raises(RegistryError, match="not wrapped under"):
        Registry(state / "registry.db", keywrap.load_file(old))
    r = CliRunner().invoke(gateway, ["devices", "rewrap", "--config", str(cfg)])
    assert r.exit_code == 2 and "give --new-kek-file" in r.output


async def test_a_token_that_goes_away_stops_the_gateway_with_a_reason(softhsm: SoftHsm, tmp_path: Path) -> None:
    """The session is lost (HSM restarted, token pulled): the stage that signs fails, the daemon stops
    (exit 1, systemd restarts it and it logs in again) and says which token, never the PIN."""
    import asyncio
    import contextlib

    admin = _admin(softhsm)
    try:
        admin.generate_signing_key("goes-away")
    finally:
        admin.close()
    node = TestNode(bytes.fromhex("00000000000004aa"))
    pkcs = {"module": str(softhsm.module), "token_label": TOKEN, "pin_file": str(softhsm.pin_file(TOKEN)),
            "signing_key_label": "goes-away"}
    h = await start_harness(tmp_path / "state", [node], run_forwarder=True, fast_alarms=True,
                            sections={"keys.pkcs11": pkcs})
    try:
        h.gw.gateway_keys.token.session.close()  # what a vanished token looks like from here
        with contextlib.suppress(RuntimeError):  # flush: "gateway failed while flushing"
            await h.hear(node.smoke(alarm_state=2))
        await asyncio.wait_for(h.gw.failed.wait(), 20)
        failure = h.gw.failure
        assert isinstance(failure, hsm.TokenError), repr(failure)
        assert f"token '{TOKEN}'" in str(failure) and "goes-away" in str(failure)
        assert softhsm.pins[TOKEN] not in str(failure)
    finally:
        await h.crash()
