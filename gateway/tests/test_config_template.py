"""The annotated config (init's starter, the package's conffile, the docs reference) covers every key of
the config schema, validates, and means exactly the defaults; docs/operations.md holds the current one."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from lifeline.gateway import config as cfgmod
from lifeline.gateway import config_template as tpl
from lifeline.gateway.config import ConfigError, parse

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# config dataclass -> template section (GatewayConfig's own fields are the sections)
SECTION_OF = {
    cfgmod.GatewaySection: "gateway", cfgmod.BufferConfig: "buffer", cfgmod.DedupeConfig: "dedupe",
    cfgmod.ForwarderConfig: "forwarder", cfgmod.UplinkConfig: "uplink", cfgmod.UplinkEndpoint: "uplink.endpoints",
    cfgmod.DownlinkConfig: "downlinks", cfgmod.MetricsConfig: "metrics", cfgmod.StatusPageConfig: "status_page",
    cfgmod.PipelineConfig: "pipeline", cfgmod.IngressSpec: "ingress", cfgmod.RulesConfig: "rules",
    cfgmod.KeysConfig: "keys", cfgmod.Pkcs11Config: "keys.pkcs11",
}
SUBTABLES = {("buffer", "ttl_s"), ("uplink", "endpoints"), ("ingress", "options"), ("keys", "pkcs11")}


def _keys(section: str) -> set[str]:
    return {k.name for s in tpl.SECTIONS if s.name == section for k in s.keys}


def test_every_schema_key_is_in_the_template() -> None:
    top = {f.name for f in dataclasses.fields(cfgmod.GatewayConfig)} - {"source"}
    assert top == {s.name.split(".")[0] for s in tpl.SECTIONS}
    for cls, section in SECTION_OF.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert section.split(".")[0] in top
        missing = {f for f in fields if f not in _keys(section) and (section, f) not in SUBTABLES}
        assert not missing, f"[{section}] keys without a template entry: {missing}"
        extra = _keys(section) - fields
        assert not extra, f"[{section}] template keys the schema does not have: {extra}"
    assert _keys("buffer.ttl_s") == set(cfgmod.PRIORITY_KEYS)


def test_starter_validates_and_means_the_defaults(tmp_path: Path) -> None:
    text = tpl.starter("gw-0042", key_file=tmp_path / "k.key", token_file=tmp_path / "t.token",
                       state_dir=tmp_path / "state")
    cfg = parse(text, "starter")
    plain = parse(f'[gateway]\nid = "gw-0042"\nkey_file = "{tmp_path / "k.key"}"\nstate_dir = "{tmp_path / "state"}"\n'
                  f'[status_page]\ntoken_file = "{tmp_path / "t.token"}"\n', "plain")
    assert dataclasses.replace(cfg, source="x") == dataclasses.replace(plain, source="x")
    assert cfg.gateway.registry_db == tmp_path / "state" / "registry.db"  # relative, follows state_dir
    assert f'state_dir = "{tmp_path / "state"}"' in text and '(default "/var/lib/lifeline")' in text
    assert cfg.uplink.endpoints == () and cfg.ingress == ()  # examples only, commented out
    for line in text.splitlines():  # every value line has its comment
        if re.match(r"^(# )?[a-z_]+ = ", line):
            assert " # " in line.removeprefix("# "), line


def test_commented_keys_are_real_keys() -> None:
    """Uncommenting every example line of the starter and the reference still validates."""
    for text in (tpl.starter("gw-1"), tpl.reference()):
        uncommented = re.sub(r"^# (?=\[|[a-z_]+ = )", "", text, flags=re.M)
        assert uncommented != text
        cfg = parse(uncommented, "uncommented")
        assert cfg.uplink.endpoints[0].username == "gateway" and cfg.ingress[0].options["port"] == 1700
        assert cfg.gateway.trusted_technicians == Path("/etc/lifeline/technicians.json")


def test_package_config_needs_an_id() -> None:
    text = tpl.starter(None, token_file=tpl.DEFAULT_TOKEN_FILE)
    with pytest.raises(ConfigError) as e:
        parse(text, "/etc/lifeline/gateway.toml")
    assert (e.value.key, e.value.reason) == ("gateway.id", "required key missing")
    cfg = parse(text.replace('# id = "gw-0001"', 'id = "gw-7"'), "edited")
    assert cfg.gateway.id == "gw-7" and cfg.status_page.token_file == tpl.DEFAULT_TOKEN_FILE


def test_reference_shows_examples_and_values_that_validate() -> None:
    cfg = parse(tpl.reference(), "reference")
    assert cfg.gateway.id == tpl.EXAMPLE_ID
    assert [e.name for e in cfg.uplink.endpoints] == ["primary"] and cfg.uplink.endpoints[0].port == 8883
    assert [(s.type, s.name) for s in cfg.ingress] == [("lora-udp", "lora0")]
    assert tpl.defaults()["forwarder"]["batch_max"] == cfg.forwarder.batch_max == 512


def test_operations_doc_has_the_current_reference() -> None:
    block = tpl.doc_block(DOC.read_text(encoding="utf-8"))
    assert block is not None, "docs/operations.md lost its <!-- gateway-config:begin/end --> block"
    assert block == "```toml\n" + tpl.reference() + "```\n", \
        "docs/operations.md is stale: run python -m lifeline.gateway.config_template"
    assert tpl.update_doc("a\n" + tpl.DOC_BEGIN + "old\n" + tpl.DOC_END + "\nb") == (
        "a\n" + tpl.DOC_BEGIN + "```toml\n" + tpl.reference() + "```\n" + tpl.DOC_END + "\nb")
