"""Self-test step 7 against a real gateway: the emulated board's test frame goes to the gateway daemon (a real
``lifeline gateway run`` subprocess with an nbiot-mqtt ingress) over a real Mosquitto, the gateway's ACK
comes back on the node's down topic and the board's firmware (real MicroPython) judges it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.gateway.testing_proc import LIFELINE, Endpoint, GatewayProcess, GatewaySpec
from lifeline.protocols import frame, keys, schema
from lifeline.provisioning import gateway_link, records, selftest
from lifeline.provisioning.cli import provision
from lifeline.provisioning.rawrepl import RawRepl
from lifeline.sim_devices.esp32_emulator import Esp32Emulator
from lifeline.tools.broker import MosquittoBroker

pytestmark = pytest.mark.micropython

DEV = "246f28fffea1b2c3"  # EUI-64 of the emulator's MAC


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: MosquittoBroker, tech_key: Ed25519PrivateKey) -> Iterator[GatewayProcess]:
    trusted = tmp_path / "trusted.json"
    trusted.write_text(json.dumps({"alice": keys.public_key_hex(tech_key)}))
    # an nbiot-mqtt ingress on ``mosquitto``, which is also its platform broker; registry reloads every second
    spec = GatewaySpec("gw-bench", endpoints=[Endpoint("platform", mosquitto.host, mosquitto.port)],
                       nbiot_broker=(mosquitto.host, mosquitto.port),
                       sections={"gateway": {"trusted_technicians": trusted}})
    gw = GatewayProcess(tmp_path / "gw", spec)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


def _provision(tmp_path: Path, emulator: Esp32Emulator, firmware: Path, tech_key: Ed25519PrivateKey,
               *extra: str) -> tuple[Result, dict[str, object]]:
    key_file = tmp_path / "alice.pem"
    if not key_file.exists():
        keys.save_private_key(tech_key, key_file)
    args = ["device", "--port", str(emulator.path), "--firmware", str(firmware), "--kind", "smoke",
            "--address", "Flat 3, 12 Elm Road", "--lat", "52.370216", "--lon", "4.895168", "--data-class",
            "sensitive", "--install-date", "2026-11-20", "--technician", "alice", "--technician-key", str(key_file),
            "--workdir", str(tmp_path / "run"), "--json", *extra]
    result = CliRunner().invoke(provision, args)
    out = json.loads(result.output.strip().splitlines()[-1])
    return result, out


def _checks(out: dict[str, object]) -> dict[str, tuple[str, str]]:
    st = out["selftest"]
    assert isinstance(st, dict)
    return {name: (status, reason) for name, status, reason in st["checks"]}


def test_the_gateway_acknowledges_the_test_frame_and_the_firmware_checks_the_ack(
    tmp_path: Path, emulator: Esp32Emulator, firmware: object, tech_key: Ed25519PrivateKey,
    gateway: GatewayProcess, mosquitto: MosquittoBroker,
) -> None:
    fw = Path(getattr(firmware, "path"))  # noqa: B009 - the fixture's FirmwareImage
    result, out = _provision(
        tmp_path, emulator, fw, tech_key, "--gateway", f"nbiot://{mosquitto.host}:{mosquitto.port}",
        "--gateway-import", f"{LIFELINE} gateway devices import {{records}} --config {gateway.config}")
    assert result.exit_code == 0, result.output
    assert out["result"] == "passed", out
    checks = _checks(out)
    assert checks["frame_verify"][0] == "pass"
    status, reason = checks["gateway_ack"]
    assert status == "pass", reason
    assert "the node's firmware verified the ack" in reason
    steps = {s[0]: s for s in out["steps"]}  # type: ignore[attr-defined]
    assert "gateway import: 1 added" in steps["register"][2]

    # the gateway really took the frame and answered it: one ACK to the nb0 adapter. A copy that arrived before
    # its registry reload (maintenance_s = 1) was refused as unknown; nothing else was refused
    assert gateway.metric_by("downlinks_total", "reason", adapter="nb0", kind="ack", result="sent") == {"": 1}
    assert set(gateway.metric_by("rejects_total", "reason")) <= {"unknown_device"}
    # the board's firmware accepted it: it stored the ACK's downlink counter as a node does
    stored = emulator.files()["/dfcnt"]  # firmware/storage.py record: magic, length, payload, check
    assert len(stored) == 12
    dfcnt = int.from_bytes(stored[4:8], "big")
    st = out["selftest"]
    assert isinstance(st, dict)
    fcnt = st["fcnt"]
    assert isinstance(fcnt, int)

    # what the board's firmware says about ACKs that must not pass (handed over the raw REPL as the flow does)
    (rec,) = list(records.read(tmp_path / "run" / "records.jsonl"))
    dev = bytes.fromhex(DEV)
    k = frame.derive_keys(bytes.fromhex(rec["root_key"]), dev)
    forged = frame.encode(frame.derive_keys(b"\x55" * 32, dev), dev, dfcnt + 1, 0, schema.C_ACK, {1: fcnt},
                          frame.FLAG_DOWN)
    other = frame.encode(k, dev, dfcnt + 2, 0, schema.C_ACK, {1: fcnt + 7}, frame.FLAG_DOWN)
    replayed = frame.encode(k, dev, dfcnt, 0, schema.C_ACK, {1: fcnt}, frame.FLAG_DOWN)
    with RawRepl.open(str(emulator.path), timeout=30) as repl:
        repl.enter()
        said = repl.exec(selftest.ack_source([forged, other, replayed], fcnt), timeout=60).stdout
    check = selftest.ack_check(said, downlinks=3, publishes=1, deadline_s=10, where="here", seconds=1.0)
    assert check.status == "fail"
    assert "downlink 1: bad_mic" in check.reason
    assert f"downlink 2: ack for counter {fcnt + 7}, the test frame was {fcnt}" in check.reason
    assert f"downlink 3: downlink counter {dfcnt} is not above the last one accepted" in check.reason
    assert selftest.is_ack_for(bytes.fromhex(rec["root_key"]), dev, fcnt)(replayed)  # host pre-check: shape only


def test_a_gateway_that_does_not_know_the_device_fails_the_self_test(
    tmp_path: Path, emulator: Esp32Emulator, firmware: object, tech_key: Ed25519PrivateKey,
    gateway: GatewayProcess, mosquitto: MosquittoBroker,
) -> None:
    fw = Path(getattr(firmware, "path"))  # noqa: B009
    result, out = _provision(tmp_path, emulator, fw, tech_key,
                             "--gateway", f"mqtt://{mosquitto.host}:{mosquitto.port}", "--gateway-timeout", "3")
    assert result.exit_code == 1, result.output
    assert out["result"] == "failed" and out["reason"] == "selftest_failed"
    status, reason = _checks(out)["gateway_ack"]
    assert status == "fail"
    assert reason.startswith(f"no ack within 3 s from the gateway behind nbiot://{mosquitto.host}:{mosquitto.port}")
    assert "imported" in reason
    # the frame did reach the gateway, which refused it for the reason the message points at
    assert gateway.metric_by("rejects_total", "reason").get("unknown_device", 0) >= 1
    assert gateway.metric_by("downlinks_total", "reason") == {}


def test_without_gateway_the_ack_step_is_skipped_not_passed(tmp_path: Path) -> None:
    out = json.dumps({"checks": [["config", True, ""], ["transmit", True, ""]], "acked": False})
    res = selftest.verify(out, device_id=bytes.fromhex(DEV), root_key=b"\x01" * 32, kind="smoke")
    ack = res.check("gateway_ack")
    assert ack is not None and ack.status == "skipped" and ack.reason.startswith("no gateway given")


@pytest.mark.parametrize(("url", "host", "port"), [
    ("nbiot://10.0.0.5:1884", "10.0.0.5", 1884), ("mqtt://broker.example", "broker.example", 1883),
    ("nbiot://[::1]:8883", "::1", 8883),
])
def test_gateway_urls(url: str, host: str, port: int) -> None:
    assert gateway_link.GatewayTarget.parse(url) == gateway_link.GatewayTarget(host, port)


@pytest.mark.parametrize("url", ["http://x:1", "nbiot://", "nbiot://h:0", "nbiot://h:99999", "h:1883"])
def test_bad_gateway_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(Exception, match="--gateway") as info:
        gateway_link.GatewayTarget.parse(url)
    assert getattr(info.value, "exit_code", None) == 2


def test_an_unreachable_node_broker_is_a_reason_not_a_traceback() -> None:
    from lifeline.tools.broker import free_port

    target = gateway_link.GatewayTarget("127.0.0.1", free_port())
    with pytest.raises(gateway_link.LinkError) as info:
        gateway_link.exchange(target, bytes.fromhex(DEV), b"\x00" * 20, lambda d: True, deadline_s=1)
    assert info.value.reason == "broker_unreachable"
