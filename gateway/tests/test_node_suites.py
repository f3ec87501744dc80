"""Per-node frame crypto suites at the gateway: the registry's suite column (and its in-place migration),
[gateway] node_suites, and the pipeline's verdicts for intl and sm nodes side by side."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lifeline.gateway.config import ConfigError
from lifeline.gateway.devices import DeviceInfo, KeyCache
from lifeline.gateway.registry import SCHEMA, Registry
from lifeline.gateway.testing import TestNode, make_config, start_harness
from lifeline.protocols import crypto, frame, schema, suites

NOW = 1_700_000_000_000
INTL = TestNode(bytes.fromhex("3000000000000001"), "smoke")
SM = TestNode(bytes.fromhex("3000000000000002"), "smoke", suite="sm")
SM_TILT = TestNode(bytes.fromhex("3000000000000003"), "manhole_tilt", suite="sm")


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    for n in (INTL, SM, SM_TILT):
        n.fcnt = 0


def _hmac_sha256_sealed(node: TestNode, header_suite: int) -> bytes:
    """A frame whose header names ``header_suite`` but whose MIC is HMAC-SHA256 under the node's root key
    with suite-1 keys: what a node (or a forger) using the other suite's algorithm would send."""
    intl = frame.derive_keys(node.root_key, node.device_id, frame.SUITE_INTL)
    good = frame.encode(intl, node.device_id, 40, 1000, schema.K_WATER_LEVEL, {1: 5})
    msg = bytes((0x10 | header_suite,)) + good[1:-8]
    return msg + crypto.hmac_sha256(intl.mic_up, msg)[:8]


async def test_intl_and_sm_nodes_side_by_side(tmp_path: Path) -> None:
    h = await start_harness(tmp_path, [INTL, SM, SM_TILT])
    try:
        await h.hear(INTL.smoke(0))
        await h.hear(SM.smoke(1))  # smoke is sensitive: SM4-CTR encrypted, HMAC-SM3 MIC
        await h.hear(SM_TILT.uplink(schema.K_TILT, {1: 12, 2: 0, 15: 3300}))
        assert SM.smoke(0)[0] == 0x12 and INTL.smoke(0)[0] == 0x11
        h.clock.advance(1000)
        await h.gw.forward_all()
        recs = sorted(h.records(), key=lambda r: r.device_id)
        assert [(r.device_id, r.kind, r.fields) for r in recs] == [
            (INTL.device_id, 1, {1: 0, 5: 215, 15: 3000}), (SM.device_id, 1, {1: 1, 5: 215, 15: 3000}),
            (SM_TILT.device_id, 2, {1: 12, 2: 0, 15: 3300})]
        assert h.rejects() == {}
    finally:
        await h.stop()


async def test_forged_wrong_suite_and_other_algorithm_are_rejected_with_reasons(tmp_path: Path) -> None:
    h = await start_harness(tmp_path, [INTL, SM])
    try:
        good = SM.smoke(0, fcnt=10)
        await h.hear(good[:-1] + bytes((good[-1] ^ 1,)))  # forged HMAC-SM3 MIC -> bad_mic
        # the sm node's root key used with suite 1 (header says intl): the device is sm -> wrong_suite
        as_intl = TestNode(SM.device_id, "smoke", root_key=SM.root_key)
        await h.hear(as_intl.smoke(0, fcnt=11))
        # header says sm, MIC made with HMAC-SHA256: verified as HMAC-SM3 -> bad_mic
        await h.hear(_hmac_sha256_sealed(SM, frame.SUITE_SM))
        # an intl device sent an sm frame -> wrong_suite
        as_sm = TestNode(INTL.device_id, "smoke", root_key=INTL.root_key, suite="sm")
        await h.hear(as_sm.smoke(0, fcnt=12))
        await h.hear(b"\x13" + good[1:])  # suite 3 does not exist -> bad_suite
        assert h.rejects() == {"bad_mic": 2, "wrong_suite": 2, "bad_suite": 1}, h.rejects()
        metrics = h.gw.metrics.render()
        assert 'lifeline_gateway_rejects_total{reason="wrong_suite",radio="lora-udp"} 2' in metrics
        await h.hear(good)  # the genuine frame still goes through afterwards
        assert h.gw.stats.accepted.total() == 1
    finally:
        await h.stop()


async def test_node_suites_config_refuses_a_suite_before_the_device_lookup(tmp_path: Path) -> None:
    h = await start_harness(tmp_path, [INTL, SM], gateway_keys={"node_suites": ["intl"]})
    try:
        await h.hear(SM.smoke(0))
        await h.hear(INTL.smoke(0))
        stranger = TestNode(bytes.fromhex("30000000000000ff"), "smoke", suite="sm")
        await h.hear(stranger.smoke(0))  # not even registered: the policy answers first
        assert h.rejects() == {"suite_not_allowed": 2}, h.rejects()
        assert h.gw.stats.accepted.total() == 1
    finally:
        await h.stop()


def test_downlink_keys_of_an_sm_device_write_its_suite() -> None:
    cache = KeyCache(4)
    info = DeviceInfo(SM.device_id, SM.root_key, 0, schema.SENSITIVE, "active", frame.SUITE_SM)
    down = frame.encode(cache.downlink_keys(info), SM.device_id, 5, 0, schema.C_TIME_SYNC, {1: 5}, frame.FLAG_DOWN)
    assert down[0] == 0x12
    assert SM.decode_downlink(down).fields == {1: 5}
    keys = cache.get(info)
    assert keys.suite == frame.SUITE_SM and keys.mic_up == SM.keys.mic_up and keys.enc == SM.keys.enc
    # the same device re-registered intl (a rekey) gets other keys, not the cached sm ones
    again = cache.get(DeviceInfo(SM.device_id, SM.root_key, 0, schema.SENSITIVE, "active", frame.SUITE_INTL))
    assert again.suite == frame.SUITE_INTL and again.mic_up != keys.mic_up


@pytest.mark.parametrize(("value", "reason"), [
    ([], "non-empty array"), ("sm", "non-empty array"), (["intl", "aes"], "'aes' is not one of intl, sm"),
    (["sm", "sm"], "twice"), ([2], "2 is not one of"),
])
def test_node_suites_invalid_values_refuse_to_start(tmp_path: Path, value: object, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(tmp_path, gateway_keys={"node_suites": value})
    assert info.value.key == "gateway.node_suites"
    assert reason in info.value.reason
    assert str(tmp_path / "gateway.toml") in str(info.value)


def test_node_suites_default_and_values(tmp_path: Path) -> None:
    assert make_config(tmp_path / "a").gateway.node_suites == ("intl", "sm")
    assert make_config(tmp_path / "b", gateway_keys={"node_suites": ["sm"]}).gateway.node_suites == ("sm",)


def _old_registry(path: Path) -> None:
    """A registry.db as gateways before suites made it: the same schema without the suite column."""
    old = SCHEMA.replace(",\n  suite TEXT NOT NULL DEFAULT 'intl' CHECK (suite IN ('intl', 'sm'))", "")
    assert "suite" not in old
    conn = sqlite3.connect(path)
    conn.executescript(old)
    conn.execute(
        "INSERT INTO devices(device_id, root_key, key_epoch, kind, address, lat_udeg, lon_udeg, spatial_unit, "
        "data_class, install_date, design_life_years, status, tags, technician, signature, updated_ms) "
        "VALUES (?, ?, 3, 'smoke', 'a', NULL, NULL, '', 2, '2025-01-01', 10, 'active', '[]', NULL, NULL, 1)",
        (INTL.device_id, INTL.root_key))
    conn.commit()
    conn.close()


def test_registry_without_suite_column_is_migrated_in_place(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    _old_registry(db)
    with Registry(db) as reg:
        old = reg.get(INTL.device_id)
        assert old is not None and old.suite == "intl" and old.key_epoch == 3 and old.root_key == INTL.root_key
        report = reg.import_lines([json.dumps(SM.record())], now_ms=NOW)
        assert report.count("added") == 1
        assert reg.get(SM.device_id).suite == "sm"  # type: ignore[union-attr]
        assert reg.get(SM.device_id).public_dict()["suite"] == "sm"  # type: ignore[union-attr]
    with Registry(db) as reg:  # a second open finds nothing to migrate and keeps the data
        assert [(d.device_id, d.suite) for d in reg.all()] == [(INTL.device_id, "intl"), (SM.device_id, "sm")]
    cols = [r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(devices)")]
    assert cols.count("suite") == 1


def test_registry_suite_is_validated_and_fixed_at_provisioning(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry.db") as reg:
        report = reg.import_lines([json.dumps(SM.record(suite="SM4")), json.dumps(SM.record(suite=2)),
                                   json.dumps(SM.record())], now_ms=NOW)
        assert [o.outcome for o in report.outcomes] == ["rejected", "rejected", "added"]
        assert report.outcomes[0].reason == "suite: expected one of intl, sm"
        changed = reg.import_lines([json.dumps(SM.record(suite="intl"))], now_ms=NOW)
        assert changed.outcomes[0].outcome == "rejected" and "suite (intl, registered sm)" in changed.outcomes[0].reason
        rekeyed = reg.import_lines([json.dumps(SM.record(suite="intl"))], now_ms=NOW, rekey=True)
        assert rekeyed.outcomes[0].outcome == "rekeyed"
        dev = reg.get(SM.device_id)
        assert dev is not None and dev.suite == "intl" and dev.key_epoch == 1 and dev.suite_id == suites.INTL
