"""The systemd unit: accepted by systemd-analyze verify, and hardened the way operations.md says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "lifeline-gateway.service"


def _parse(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
            continue
        key, _, value = line.partition("=")
        sections[current].setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_directives() -> None:
    unit = _parse(UNIT.read_text(encoding="utf-8"))
    svc = unit["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["Type"] == "notify"
    assert int(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure"
    assert one["StateDirectory"] == "lifeline"
    assert one["User"] == "lifeline" or one.get("DynamicUser") == "yes"
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("CapabilityBoundingSet", ""), ("UMask", "0077")):
        assert one[key] == value, key
    assert one["ExecStart"].endswith("gateway run --config /etc/lifeline/gateway.toml")
    assert "3" in one["RestartPreventExitStatus"].split()  # config errors are not retried
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: run tools/bootstrap.sh setup"
    lifeline = Path(sys.executable).with_name("lifeline")
    assert lifeline.exists()
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/lifeline", str(lifeline)),
                    encoding="utf-8")
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # verify only warns about unknown keys or bad values; any output is a finding
    findings = [ln for ln in r.stderr.splitlines() if UNIT.name in ln or "Unknown" in ln or "Failed" in ln]
    assert findings == [], r.stderr

    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notfy").replace("[Install]", "Bogus=1\n[Install]"))
    r = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "notfy" in r.stderr and "Bogus" in r.stderr  # the check above can fail
