"""The real-daemon test helper's own pieces that need no daemon: the configuration a GatewaySpec writes is
one the gateway's loader accepts, with the defaults and the spec's overrides, and ``wait_until`` returns
once its condition holds and otherwise says what it waited for."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from lifeline.gateway.config import load
from lifeline.gateway.testing_proc import Endpoint, GatewaySpec, wait_until


def test_a_spec_writes_a_configuration_the_gateway_loads(tmp_path: Path) -> None:
    state = tmp_path / "state"
    rules = tmp_path / "rules.toml"
    spec = GatewaySpec(
        "gw-spec",
        endpoints=[Endpoint("n1", "127.0.0.1", 4001, priority=1),
                   Endpoint("n2", "127.0.0.1", 4002, priority=0, tls_ca=tmp_path / "ca.pem",
                            tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "c.key")],
        nbiot_broker=("127.0.0.1", 1884), lora_serial="/dev/ttyUSB7", lora_sf=7,
        sections={"gateway": {"suite": "sm", "trusted_technicians": tmp_path / "trusted.json"},
                  "uplink": {"publish_timeout_s": 8, "protocol": "3.1.1"},
                  "buffer": {"quota_mb": 5}, "rules": {"files": [rules]}})
    path = tmp_path / "gateway.toml"
    path.write_text(spec.config_text(state), encoding="utf-8")
    cfg = load(path)
    assert (cfg.gateway.id, cfg.gateway.suite, spec.suite) == ("gw-spec", "sm", "sm")
    assert cfg.gateway.state_dir == state and cfg.gateway.key_file == state / "gateway.key"
    assert cfg.gateway.trusted_technicians == tmp_path / "trusted.json"
    assert (cfg.metrics.listen, cfg.metrics.port) == ("127.0.0.1", 0)
    assert (cfg.buffer.maintenance_s, cfg.buffer.quota_mb) == (1, 5)  # a default kept beside an override
    up = cfg.uplink
    assert (up.keepalive_s, up.connect_timeout_s, up.publish_timeout_s, up.protocol) == (5, 2, 8, "3.1.1")
    assert sorted((e.name, e.port, e.priority, e.tls_ca, e.tls_key) for e in up.endpoints) == [
        ("n1", 4001, 1, None, None), ("n2", 4002, 0, tmp_path / "ca.pem", tmp_path / "c.key")]
    assert [(i.type, i.name) for i in cfg.ingress] == [("lora-serial", "lora0"), ("nbiot-mqtt", "nb0")]
    assert cfg.ingress[0].options["sf"] == 7 and cfg.ingress[0].options["port"] == "/dev/ttyUSB7"
    assert cfg.ingress[1].options["client_id"] == "gw-spec-nb0"
    assert cfg.rules.files == (rules,)


def test_a_spec_without_radios_or_endpoints_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(GatewaySpec("gw-bare").config_text(tmp_path / "state"), encoding="utf-8")
    cfg = load(path)
    assert cfg.uplink.endpoints == () and cfg.ingress == () and cfg.gateway.suite == "intl"


def test_wait_until_returns_when_the_condition_holds_and_explains_a_timeout() -> None:
    calls = itertools.count()
    wait_until(lambda: next(calls) >= 3, 30, "the third look", poll_s=0)
    assert next(calls) == 4
    with pytest.raises(AssertionError) as info:
        wait_until(lambda: False, 0.01, "a miracle", lambda: "log: nothing happened", poll_s=0.001)
    assert str(info.value) == "timed out after 0.01 s waiting for a miracle\nlog: nothing happened"
