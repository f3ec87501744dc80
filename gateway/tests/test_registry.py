"""Device registry: import/list/revoke through the CLI, 0600 files, keys never printed or logged."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.gateway.cli import gateway
from lifeline.gateway.registry import Registry, signed_bytes
from lifeline.gateway.testing import TestNode

NOW = 1_700_000_000_000


def _nodes() -> list[TestNode]:
    return [TestNode(bytes.fromhex("a0b1c2d3e4f5a6%02x" % i), kind=k)
            for i, k in enumerate(("smoke", "manhole_tilt", "water_meter"))]


def _write(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(gateway, list(args))
    return r.exit_code, r.output


def test_import_list_revoke_and_secrecy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "state" / "registry.db"
    nodes = _nodes()
    src = _write(tmp_path / "prov.jsonl", [n.record() for n in nodes])
    code, out = _run("devices", "import", str(src), "--db", str(db))
    assert code == 0, out
    assert "3 added" in out

    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    for side in ("-wal", "-shm"):
        p = Path(str(db) + side)
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db.parent).st_mode) == 0o700

    code, out_json = _run("devices", "list", "--db", str(db), "--json")
    assert code == 0
    listed = json.loads(out_json)
    assert [d["device_id"] for d in listed] == sorted(n.hex for n in nodes)
    assert listed[0]["location"]["lat_udeg"] == 31230416
    assert listed[0]["data_class"] == "sensitive" and listed[0]["status"] == "active"
    code, out_table = _run("devices", "list", "--db", str(db))
    assert code == 0 and nodes[0].hex in out_table

    code, out = _run("devices", "revoke", nodes[1].hex, "--db", str(db))
    assert code == 0 and "revoked" in out
    with Registry(db) as reg:
        assert reg.get(nodes[1].device_id).status == "revoked"  # type: ignore[union-attr]
        assert reg.get(nodes[0].device_id).active  # type: ignore[union-attr]
        rec = reg.get(nodes[0].device_id)
        assert rec is not None and rec.root_key == nodes[0].root_key
        assert nodes[0].root_key.hex() not in repr(rec) and "root_key" not in repr(rec)

    # no key material anywhere a human or a log collector could see it
    everything = out + out_json + out_table + caplog.text + "".join(r.getMessage() for r in caplog.records)
    for n in nodes:
        assert n.root_key.hex() not in everything
        assert n.root_key.hex().upper() not in everything


def test_revoke_unknown_device_fails(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    Registry(db).close()
    code, _ = _run("devices", "revoke", "0011223344556677", "--db", str(db))
    assert code == 1
    code, _ = _run("devices", "revoke", "xyz", "--db", str(db))
    assert code == 2


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"device_id": "ABCDEF0123456789"}, "device_id"),
        ({"root_key": "00" * 31}, "root_key"),
        ({"kind": "toaster"}, "kind"),
        ({"kind": "ack"}, "kind"),  # a downlink command kind is not a device kind
        ({"data_class": "secret"}, "data_class"),
        ({"install_date": "2025-13-01"}, "install_date"),
        ({"design_life_years": 2.5}, "design_life_years"),
        ({"location": {"address": "x", "lat": 31.2}}, "location.lat"),
        ({"location": {"address": "x", "lat_udeg": 31.23}}, "lat_udeg"),
        ({"location": {"address": "x", "lat_udeg": 91_000_000}}, "lat_udeg"),
        ({"tags": "a,b"}, "tags"),
        ({"colour": "red"}, "unknown key colour"),
    ],
)
def test_bad_records_rejected_with_reason_and_no_key(tmp_path: Path, change: dict[str, object], reason: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    node = _nodes()[0]
    good = TestNode(bytes.fromhex("0000000000000001"))
    src = _write(tmp_path / "p.jsonl", [node.record(**change), good.record(), "{not json", "[1, 2]"])
    code, out = _run("devices", "import", str(src), "--db", str(tmp_path / "r.db"), "--json")
    assert code == 1
    res = json.loads(out)
    assert res["counts"]["added"] == 1 and res["counts"]["rejected"] == 3
    first = res["records"][0]
    assert first["outcome"] == "rejected" and reason in first["reason"]
    assert res["records"][2]["reason"] == "not valid JSON"
    assert node.root_key.hex() not in out + caplog.text


def test_reimport_unchanged_updated_rekeyed(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    node = _nodes()[0]
    with Registry(db) as reg:
        assert reg.import_lines([json.dumps(node.record())], now_ms=NOW).count("added") == 1
        gen = reg.generation()
        assert reg.import_lines([json.dumps(node.record())], now_ms=NOW).count("unchanged") == 1
        assert reg.generation() == gen  # nothing changed, nothing to reload
        assert reg.import_lines([json.dumps(node.record(tags=["x"]))], now_ms=NOW).count("updated") == 1
        new_key = node.record(root_key="11" * 32)
        rep = reg.import_lines([json.dumps(new_key), json.dumps(new_key)], now_ms=NOW)
        assert rep.outcomes[0].outcome == "rejected" and "--rekey" in rep.outcomes[0].reason
        rep = reg.import_lines([json.dumps(new_key)], now_ms=NOW, rekey=True)
        assert rep.count("rekeyed") == 1
        rec = reg.get(node.device_id)
        assert rec is not None and rec.key_epoch == 1 and rec.root_key == bytes.fromhex("11" * 32)
        assert reg.generation() > gen
        reg.revoke(node.device_id, now_ms=NOW)
        rep = reg.import_lines([json.dumps(node.record())], now_ms=NOW, rekey=True)
        assert rep.rejected == 1 and "revoked" in rep.outcomes[0].reason
        dup = reg.import_lines([json.dumps(_nodes()[1].record())] * 2, now_ms=NOW)
        assert dup.outcomes[1].reason == "device_id appears twice in this file"


def test_technician_signatures_verified_when_configured(tmp_path: Path) -> None:
    tech = Ed25519PrivateKey.generate()
    rogue = Ed25519PrivateKey.generate()
    trusted = tmp_path / "technicians.json"
    from lifeline.protocols import keys

    trusted.write_text(json.dumps({"t1": keys.public_key_hex(tech)}), encoding="utf-8")
    nodes = _nodes()

    def signed(rec: dict[str, object], k: Ed25519PrivateKey) -> dict[str, object]:
        return {**rec, "signature": k.sign(signed_bytes(rec)).hex()}

    good = signed(nodes[0].record(), tech)
    forged = signed(nodes[1].record(), rogue)
    tampered = {**signed(nodes[2].record(), tech), "kind": "smoke"}
    unsigned = TestNode(bytes.fromhex("0000000000000009")).record()
    src = _write(tmp_path / "p.jsonl", [good, forged, tampered, unsigned])
    code, out = _run("devices", "import", str(src), "--db", str(tmp_path / "r.db"), "--trusted", str(trusted),
                     "--json")
    assert code == 1
    outcomes = [(r["outcome"], r["reason"]) for r in json.loads(out)["records"]]
    assert outcomes[0] == ("added", "")
    assert outcomes[1][0] == outcomes[2][0] == "rejected" and "does not verify" in outcomes[1][1]
    assert "required" in outcomes[3][1]
    with Registry(tmp_path / "r.db") as reg:
        rec = reg.get(nodes[0].device_id)
        assert rec is not None and rec.technician == "t1" and rec.signature == good["signature"]
    # without a trusted list, signature/technician are stored unverified
    code, _ = _run("devices", "import", str(_write(tmp_path / "q.jsonl", [forged])), "--db", str(tmp_path / "s.db"))
    assert code == 0


def test_list_without_registry_is_an_environment_error(tmp_path: Path) -> None:
    code, _ = _run("devices", "list", "--db", str(tmp_path / "none.db"))
    assert code == 3
