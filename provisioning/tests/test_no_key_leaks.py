"""No key material in logs, errors, status output, metrics or audit records (issue 12, "must show").

One real run: a ``lifeline gateway run`` subprocess (debug logging) with its registry encrypted under a KEK
file and its batch signing key in a SoftHSM2 token (PIN from a file), over a real Mosquitto; a board
provisioned on the emulator (real MicroPython firmware) and imported through the gateway CLI; frames from
that node, forged and garbage frames, a replay, an unknown device; error paths (a wrong KEK, a wrong PIN, a
re-key without --rekey). Then every log line, ``gateway status --json``, the status page, the Prometheus
page, the provisioning audit log and every command's output are searched for every key the run used (root
key, derived keys, KEK, signing key, token PIN, technician key, status token) as raw bytes, hex (both cases,
and an 8-byte prefix) and base64 (standard and URL-safe, with and without padding). The batches themselves
are checked at a platform sink against the token's public key.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.gateway import statuspage
from lifeline.gateway.metrics import parse_text
from lifeline.protocols import frame, keys, schema
from lifeline.provisioning import records
from lifeline.provisioning.cli import provision
from lifeline.sim_devices.esp32_emulator import Esp32Emulator
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.nbiot_sim import NbiotNodeSim
from lifeline.tools.platform_sink import PlatformSink
from lifeline.tools.softhsm import SoftHsm

pytestmark = pytest.mark.micropython

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
TOKEN = "lifeline-spare"
GW = "gw-leak"


def forms(secret: bytes) -> dict[str, bytes]:
    """The ways a key could show up in text."""
    h = secret.hex()
    b64 = base64.b64encode(secret)
    url = base64.urlsafe_b64encode(secret)
    return {"raw": secret, "hex": h.encode(), "HEX": h.upper().encode(), "hex-prefix": h[:16].encode(),
            "base64": b64, "base64-unpadded": b64.rstrip(b"="), "base64url": url.rstrip(b"=")}


def leaks(secrets: dict[str, bytes], artifacts: dict[str, bytes]) -> list[str]:
    """``secret/form in artifact`` for every occurrence (never the secret itself)."""
    found = []
    for sname, secret in secrets.items():
        for fname, needle in forms(secret).items():
            for aname, data in artifacts.items():
                if needle in data:
                    found.append(f"{sname}/{fname} in {aname}")
    return found


def test_the_search_finds_every_form() -> None:
    """The search itself can fail: a key planted in each form is found, a clean text is clean."""
    key = os.urandom(32)
    texts = {
        "raw": b"x" + key + b"y",
        "hex": f"key={key.hex()}".encode(),
        "HEX": f"KEY {key.hex().upper()}".encode(),
        "hex-prefix": f"key starts {key.hex()[:16]}...".encode(),
        "base64": b"k=" + base64.b64encode(key),
        "base64-unpadded": b"k=" + base64.b64encode(key).rstrip(b"="),
        "base64url": b"k=" + base64.urlsafe_b64encode(key).rstrip(b"="),
    }
    for form, text in texts.items():
        assert any(f"k/{form} in t" == x for x in leaks({"k": key}, {"t": text})), form
    assert leaks({"k": key}, {"t": b"nothing to see " + os.urandom(64).hex().encode()}) == []


class Run:
    """Commands of this run; their output is kept as artifacts."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.artifacts: dict[str, bytes] = {}

    def cli(self, name: str, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run([LIFELINE, *args], capture_output=True, timeout=120, env=self.env, check=False)
        self.artifacts[f"{name} (stdout)"] = r.stdout
        self.artifacts[f"{name} (stderr)"] = r.stderr
        if expect is not None:
            assert r.returncode == expect, f"{name}: exit {r.returncode}: {r.stderr.decode(errors='replace')}"
        return r


@pytest.fixture
def gateway_proc() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def _wait(pred: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.05)


def test_no_key_material_anywhere_after_a_real_run(
    tmp_path: Path, emulator: Esp32Emulator, firmware: object, tech_key: Ed25519PrivateKey,
    mosquitto: MosquittoBroker, softhsm: SoftHsm, gateway_proc: list[subprocess.Popen[bytes]],
) -> None:
    run = Run(softhsm.env())
    state, etc = tmp_path / "state", tmp_path / "etc"
    etc.mkdir()
    label = f"gw-sign-{uuid.uuid4().hex[:8]}"

    # --- keys: a KEK file, a signing key moved into the token, a PIN file, a status token, a technician key
    run.cli("kekgen", "gateway", "kekgen", "--out", str(etc / "registry.kek"))
    signing = keys.generate()
    keys.save_private_key(signing, etc / "old-gateway.key")
    pin_file = softhsm.pin_file(TOKEN)
    trusted = etc / "technicians.json"
    trusted.write_text(json.dumps({"alice": keys.public_key_hex(tech_key)}))
    statuspage.create_token_file(etc / "status.token")
    config = etc / "gateway.toml"
    config.write_text("\n".join([
        "[gateway]", f'id = "{GW}"', f'state_dir = "{state}"', f'key_file = "{etc / "unused.key"}"',
        f'trusted_technicians = "{trusted}"', 'log_level = "debug"',
        "[keys]", f'kek_file = "{etc / "registry.kek"}"',
        "[keys.pkcs11]", f'module = "{softhsm.module}"', f'token_label = "{TOKEN}"', f'pin_file = "{pin_file}"',
        f'signing_key_label = "{label}"',
        "[buffer]", "maintenance_s = 1", "[metrics]", 'listen = "127.0.0.1"', "port = 0",
        "[status_page]", 'listen = "127.0.0.1"', "port = 0", f'token_file = "{etc / "status.token"}"',
        "[uplink]", "keepalive_s = 5", "connect_timeout_s = 2", "publish_timeout_s = 3",
        "[[uplink.endpoints]]", 'name = "platform"', f'host = "{mosquitto.host}"', f"port = {mosquitto.port}",
        "[[ingress]]", 'type = "nbiot-mqtt"', 'name = "nb0"', "[ingress.options]", f'host = "{mosquitto.host}"',
        f"port = {mosquitto.port}", f'client_id = "{GW}-nb0"', "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
    ]) + "\n")
    r = run.cli("token-keys", "gateway", "token-keys", "--config", str(config), "--import-key",
                str(etc / "old-gateway.key"), "--json")
    assert json.loads(r.stdout)["signing_key"] == "imported"
    (etc / "old-gateway.key").unlink()  # as docs/keys.md says: the key now lives in the token only
    run.cli("check-config", "gateway", "check-config", str(config))

    # --- the gateway and a platform sink that trusts the token's public key
    log = tmp_path / "gateway.log"
    with log.open("ab") as out:
        gateway_proc.append(subprocess.Popen([LIFELINE, "gateway", "run", "--config", str(config)], stdout=out,
                                             stderr=out, stdin=subprocess.DEVNULL, env=run.env))
    _wait(lambda: (state / "metrics.addr").exists() or gateway_proc[0].poll() is not None, 30, "the gateway")
    assert gateway_proc[0].poll() is None, log.read_text()
    sink = PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / "platform.db",
                        trust={GW: signing.public_key()}).start()
    try:
        # --- provisioning on the emulated board, imported into the gateway by the provisioning tool
        tech_file = etc / "alice.pem"
        keys.save_private_key(tech_key, tech_file)
        fw = Path(getattr(firmware, "path"))  # noqa: B009 - the fixture's FirmwareImage
        work = tmp_path / "run"
        result = CliRunner().invoke(provision, [
            "device", "--port", str(emulator.path), "--firmware", str(fw), "--kind", "smoke", "--address",
            "Flat 3, 12 Elm Road", "--lat", "52.370216", "--lon", "4.895168", "--data-class", "sensitive",
            "--install-date", "2026-11-20", "--technician", "alice", "--technician-key", str(tech_file),
            "--workdir", str(work), "--json", "--gateway", f"nbiot://{mosquitto.host}:{mosquitto.port}",
            "--gateway-import", f"{LIFELINE} gateway devices import {{records}} --config {config}"])
        run.artifacts["provision device (output)"] = result.output.encode()
        assert result.exit_code == 0, result.output
        (rec,) = list(records.read(work / "records.jsonl"))
        dev, root = bytes.fromhex(rec["device_id"]), bytes.fromhex(rec["root_key"])

        # --- frames: good ones, a forged MIC, garbage, a replay, an unknown device
        node = NbiotNodeSim(mosquitto.host, mosquitto.port, dev, root, fcnt=100).connect()
        stranger_key = os.urandom(32)
        stranger = NbiotNodeSim(mosquitto.host, mosquitto.port, bytes.fromhex("0badc0de0badc0de"), stranger_key)
        stranger.connect()
        try:
            sent = [node.send(schema.K_SMOKE, {1: 0, 5: 210 + i, 15: 3000}) for i in range(3)]
            forged = bytearray(node.encode(schema.K_SMOKE, {1: 1, 5: 999, 15: 3000}))
            forged[-1] ^= 0x01
            node.publish_raw(bytes(forged))
            node.publish_raw(b"\x00garbage\xff" * 3)
            node.publish_raw(sent[0])  # replay
            stranger.send(schema.K_SMOKE, {1: 0, 5: 200, 15: 3000})
        finally:
            node.disconnect()
            stranger.disconnect()
        sink.wait_for(lambda s: len({(d, f) for d, f in s.record_keys() if d == dev}) >= 4, 30,
                      "the test frame and three readings at the platform, verified with the token's key")
        assert sink.rejects() == []

        addr = (state / "metrics.addr").read_text().strip()

        def metrics() -> bytes:
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=5) as resp:
                return bytes(resp.read())

        _wait(lambda: sum(v for _, v in parse_text(metrics().decode()).get("lifeline_gateway_rejects_total", []))
              >= 3, 30, "three rejected frames counted")
        run.artifacts["metrics"] = metrics()
        status_addr = (state / "status.addr").read_text().strip()
        token = (etc / "status.token").read_text().strip()
        for path in ("/", "/status.json"):
            req = urllib.request.Request(f"http://{status_addr}{path}", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                run.artifacts[f"status page {path}"] = resp.read()
        run.cli("status --json", "gateway", "status", "--config", str(config), "--json")
        run.cli("status", "gateway", "status", "--config", str(config))
        run.cli("devices list", "gateway", "devices", "list", "--config", str(config), "--json")

        # --- error paths
        rekey = dict(rec, root_key=os.urandom(32).hex())
        (tmp_path / "rekey.jsonl").write_text(json.dumps(rekey) + "\n")
        run.cli("import without --rekey", "gateway", "devices", "import", str(tmp_path / "rekey.jsonl"),
                "--config", str(config), expect=1)
        run.cli("kekgen other", "gateway", "kekgen", "--out", str(etc / "other.kek"))
        run.cli("import with another KEK", "gateway", "devices", "import", str(work / "records.jsonl"), "--db",
                str(state / "registry.db"), "--kek-file", str(etc / "other.kek"), expect=3)
        wrong_pin = etc / "wrong.pin"
        wrong_pin.write_text("Wrong-PIN-000000\n")
        wrong_pin.chmod(0o600)
        bad_pin_cfg = etc / "bad-pin.toml"
        bad_pin_cfg.write_text(config.read_text().replace(str(pin_file), str(wrong_pin)))
        r = run.cli("run with a wrong PIN", "gateway", "run", "--config", str(bad_pin_cfg), expect=None)
        assert r.returncode != 0 and b"PIN was refused" in r.stderr
        bad_kek_cfg = etc / "bad-kek.toml"
        bad_kek_cfg.write_text(config.read_text().replace(str(etc / "registry.kek"), str(etc / "other.kek")))
        r = run.cli("run with a wrong KEK", "gateway", "run", "--config", str(bad_kek_cfg), expect=None)
        assert r.returncode != 0 and str(etc / "other.kek").encode() in r.stderr
    finally:
        sink.stop()
        gw = gateway_proc[0]
        gw.send_signal(signal.SIGTERM)
        gw.wait(30)

    run.artifacts["gateway log"] = log.read_bytes()
    run.artifacts["provisioning audit log"] = (work / "audit.jsonl").read_bytes()
    assert b"registry root keys encrypted at rest" in run.artifacts["gateway log"]
    assert b"frame rejected reason=bad_mic" in run.artifacts["gateway log"]
    assert b"bad_mic" in run.artifacts["metrics"] and b"unknown_device" in run.artifacts["metrics"]
    assert b"\"event\"" in run.artifacts["provisioning audit log"]

    k = frame.derive_keys(root, dev)
    seed = signing.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    pem_body = b"".join(keys.private_pem(signing).splitlines()[1:-1])
    secrets = {
        "root key": root, "MIC key (up)": k.mic_up, "MIC key (down)": k.mic_down, "encryption key": k.enc,
        "unknown device's root key": stranger_key,
        "KEK": bytes.fromhex((etc / "registry.kek").read_text().split()[2]),
        "other KEK": bytes.fromhex((etc / "other.kek").read_text().split()[2]),
        "signing key": seed, "signing key PEM": pem_body,
        "token PIN": softhsm.pins[TOKEN].encode(), "wrong PIN": b"Wrong-PIN-000000",
        "technician key": tech_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                 serialization.NoEncryption()),
        "status token": token.encode(),
    }
    found = leaks(secrets, run.artifacts)
    assert not found, "key material leaked: " + "; ".join(found)
    assert len(run.artifacts) >= 20
    shutil.rmtree(etc)  # the secrets of this run go with it
