"""Config validation: every error names the file, the dotted key and the reason; unknown keys refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifeline.gateway import config as C
from lifeline.gateway.cli import gateway
from lifeline.gateway.testing import config_text

MINIMAL = '[gateway]\nid = "gw-1"\n'


def _err(text: str) -> C.ConfigError:
    with pytest.raises(C.ConfigError) as ei:
        C.parse(text, "/etc/lifeline/gateway.toml")
    return ei.value


def test_minimal_config_gets_documented_defaults() -> None:
    cfg = C.parse(MINIMAL, "x.toml")
    assert cfg.gateway.id == "gw-1"
    assert cfg.gateway.state_dir == Path("/var/lib/lifeline")
    assert cfg.gateway.buffer_db == Path("/var/lib/lifeline/buffer.db")
    assert cfg.dedupe.window_ms == 2000 and cfg.dedupe.collect_ms == 200
    assert cfg.buffer.ttl_s == (30 * 86400, 14 * 86400, 7 * 86400)
    assert cfg.metrics.listen == "127.0.0.1"
    assert cfg.uplink.endpoints == () and cfg.ingress == ()


def test_full_config_round_trip() -> None:
    text = MINIMAL + """
[buffer]
quota_mb = 64
ttl_s = { alarm = 864000, event = 86400, periodic = 3600 }
[[uplink.endpoints]]
name = "backup"
host = "mqtt2.city.example"
priority = 5
[[uplink.endpoints]]
name = "primary"
host = "mqtt.city.example"
tls_ca = "/etc/lifeline/ca.pem"
tls_cert = "/etc/lifeline/gw.pem"
tls_key = "/etc/lifeline/gw.key"
[[ingress]]
type = "lora-udp"
name = "lora0"
options = { port = 1700 }
"""
    cfg = C.parse(text, "x.toml")
    assert [e.name for e in cfg.uplink.endpoints] == ["primary", "backup"]  # sorted by priority
    assert cfg.uplink.endpoints[0].client_id == "lifeline-gw-1-primary"
    assert cfg.buffer.ttl_s == (864000, 86400, 3600)
    assert cfg.ingress[0].options["port"] == 1700
    with pytest.raises(TypeError):
        cfg.ingress[0].options["port"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[gateway]\n", "gateway.id", "required key missing"),
        (MINIMAL + "colour = 1\n", "gateway.colour", "unknown key"),
        (MINIMAL + "[buffer]\nquota_mb = 0\n", "buffer.quota_mb", "below the minimum 1"),
        (MINIMAL + "[buffer]\nquota_mb = true\n", "buffer.quota_mb", "expected an integer"),
        (MINIMAL + "[buffer.ttl_s]\nalarms = 100\n", "buffer.ttl_s.alarms", "unknown key"),
        (MINIMAL + "[dedupe]\nwindow_ms = 100\ncollect_ms = 200\n", "dedupe.collect_ms", "must not exceed"),
        (MINIMAL + "[metrics]\nport = 70000\n", "metrics.port", "above the maximum"),
        ('[gateway]\nid = "a/b"\n', "gateway.id", "does not match"),
        (MINIMAL + "[[uplink.endpoints]]\nname = \"p\"\n", "uplink.endpoints[0].host", "required key missing"),
        (MINIMAL + '[[uplink.endpoints]]\nname = "p"\nhost = "h"\ntls_cert = "/c"\n', "uplink.endpoints[0].tls_key",
         "go together"),
        (MINIMAL + '[[ingress]]\ntype = "zigbee"\nname = "z"\n', "ingress[0].type", "is not one of"),
        (MINIMAL + '[[ingress]]\ntype = "ble"\nname = "a"\n[[ingress]]\ntype = "ble"\nname = "a"\n',
         "ingress[1].name", "duplicate"),
        (MINIMAL + "[uplink]\nendpoints = 3\n", "uplink.endpoints", "array of tables"),
        (MINIMAL + "[lora]\nx = 1\n", "lora", "unknown key"),
    ],
)
def test_errors_name_file_key_and_reason(text: str, key: str, reason: str) -> None:
    e = _err(text)
    assert e.file == "/etc/lifeline/gateway.toml"
    assert e.key == key
    assert reason in e.reason
    assert str(e).startswith(f"/etc/lifeline/gateway.toml: {key}: ")


def test_syntax_error_names_the_line() -> None:
    e = _err('[gateway]\nid = "gw"\n\nquota = = 3\n')
    assert e.line == 4
    assert str(e).startswith("/etc/lifeline/gateway.toml:4: ")
    assert "TOML syntax error" in e.reason


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(C.ConfigError, match="cannot read"):
        C.load(tmp_path / "missing.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(C.ConfigError, match="not UTF-8"):
        C.load(bad)


def test_check_config_cli_ok_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(config_text(tmp_path), encoding="utf-8")
    r = CliRunner().invoke(gateway, ["check-config", str(good)])
    assert r.exit_code == 0, r.output
    assert "ok" in r.output

    bad = tmp_path / "bad.toml"
    bad.write_text(config_text(tmp_path, extra="[buffer]\nquota_mbytes = 5\n"), encoding="utf-8")
    r = CliRunner().invoke(gateway, ["check-config", str(bad), "--json"])
    assert r.exit_code == 3
    out = json.loads(r.output)
    assert out["ok"] is False
    assert out["errors"] == [f"{bad}: buffer.quota_mbytes: unknown key"]


def test_check_config_validates_adapter_options(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text(config_text(tmp_path, extra='[[ingress]]\ntype = "lora-udp"\nname = "lora0"\n'
                                           '[ingress.options]\nport = 99999\n'), encoding="utf-8")
    r = CliRunner().invoke(gateway, ["check-config", str(f), "--json"])
    assert r.exit_code == 3
    [err] = json.loads(r.output)["errors"]
    assert err.startswith(f"{f}: ingress[0].options.port: ")


def test_check_config_builds_every_adapter_type(tmp_path: Path) -> None:
    extra = """
[[ingress]]
type = "lora-udp"
name = "lora0"
[[ingress]]
type = "lora-serial"
name = "lora1"
options = { port = "/dev/ttyUSB0" }
[[ingress]]
type = "nbiot-mqtt"
name = "nb0"
options = { host = "broker.local" }
[[ingress]]
type = "ble"
name = "ble0"
"""
    f = tmp_path / "gw.toml"
    f.write_text(config_text(tmp_path, extra=extra), encoding="utf-8")
    r = CliRunner().invoke(gateway, ["check-config", str(f), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ingress"] == ["lora-udp:lora0", "lora-serial:lora1", "nbiot-mqtt:nb0", "ble:ble0"]
    f.write_text(config_text(tmp_path, extra=extra.replace('host = "broker.local"', "hostname = 1")),
                 encoding="utf-8")
    r = CliRunner().invoke(gateway, ["check-config", str(f), "--json"])
    assert r.exit_code == 3
    [err] = json.loads(r.output)["errors"]
    assert err.startswith(f"{f}: ingress[2].options")


def test_operations_doc_config_block_is_valid_and_complete() -> None:
    import dataclasses
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    section = doc.split("### Configuration", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    text = block.group(1)
    cfg = C.parse(text, "operations.md")
    assert cfg.gateway.id == "gw-0001" and cfg.ingress[0].type == "lora-udp"
    # the documented defaults are the real defaults
    assert C.parse(MINIMAL, "x").buffer == cfg.buffer
    assert C.parse(MINIMAL, "x").forwarder == cfg.forwarder
    assert C.parse(MINIMAL, "x").pipeline == cfg.pipeline
    assert C.parse(MINIMAL, "x").downlinks == cfg.downlinks
    # every option appears in the reference (commented-out optional ones included)
    for section_cls in (C.GatewaySection, C.BufferConfig, C.DedupeConfig, C.ForwarderConfig, C.UplinkEndpoint,
                        C.UplinkConfig, C.DownlinkConfig, C.MetricsConfig, C.PipelineConfig):
        for f in dataclasses.fields(section_cls):
            if f.name not in ("endpoints", "ttl_s"):
                assert re.search(rf"^#? ?{f.name} = ", text, re.M), f"{section_cls.__name__}.{f.name}"


def test_uplink_backoff_and_failback_are_configurable(tmp_path: Path) -> None:
    from lifeline.gateway.config import ConfigError, parse

    base = f'[gateway]\nid = "gw-1"\nstate_dir = "{tmp_path}"\n'
    cfg = parse(base + "[uplink]\nbackoff_initial_s = 2\nbackoff_max_s = 120\nfailback_s = 300\n", "t.toml")
    assert (cfg.uplink.backoff_initial_s, cfg.uplink.backoff_max_s, cfg.uplink.failback_s) == (2, 120, 300)
    with pytest.raises(ConfigError) as info:
        parse(base + "[uplink]\nbackoff_initial_s = 20\nbackoff_max_s = 10\n", "t.toml")
    assert "uplink.backoff_max_s" in str(info.value)


def test_uplink_protocol_is_5_or_311_and_reaches_the_uplink() -> None:
    from lifeline.gateway.uplink import MqttUplink

    assert C.parse(MINIMAL, "x.toml").uplink.protocol == "5"
    cfg = C.parse(MINIMAL + '[uplink]\nprotocol = "3.1.1"\n[[uplink.endpoints]]\nname = "a"\nhost = "h"\n', "x.toml")
    assert cfg.uplink.protocol == "3.1.1"
    assert MqttUplink.from_config("gw-1", cfg.uplink).protocol == "3.1.1"
    e = _err(MINIMAL + '[uplink]\nprotocol = "3"\n')
    assert "uplink.protocol" in str(e) and "is not one of 5, 3.1.1" in str(e)
