"""The gateway's Debian package, built by `lifeline package deb` (tools/build_deb.py) and taken apart with
dpkg-deb: control fields, file list with owners and modes, the conffile, the maintainer scripts (syntax,
argument handling, what they may touch), the unit (systemd-analyze verify), and make-venv building a
working virtualenv from the bundled wheels.

The module's package is built with ``--no-deps-wheels`` (project wheel only, ~3 s). The full package
(every dependency as a wheel, what the script builds by default) is built once in the slow test, which
installs it offline (pip --no-index) with the package's own make-venv and runs the CLI from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from lifeline.gateway.config import ConfigError, parse

ROOT = Path(__file__).resolve().parents[2]
LIFELINE = Path(sys.executable).with_name("lifeline")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SCRIPTS = ("postinst", "prerm", "postrm")


def _run(*cmd: str | Path, env: dict[str, str] | None = None, check: bool = True,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _isolated_pip_env(**extra: str) -> dict[str, str]:
    """This machine's pip settings (extra indexes, find-links) must not help an 'offline' install."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, **extra)
    return env


def _build(out: Path, *args: str) -> dict[str, Any]:
    r = _run(LIFELINE, "package", "deb", "--out", out, "--json", *args)
    result: dict[str, Any] = json.loads(r.stdout)
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the .deb, its tree extracted with dpkg-deb -R) for arm64, project wheel only."""
    out = tmp_path_factory.mktemp("deb")
    result = _build(out, "--arch", "arm64", "--no-deps-wheels")
    deb = Path(result["deb"])
    assert deb.name == f"lifeline-gateway_{VERSION}-1_arm64.deb" and deb.stat().st_size == result["size_bytes"]
    assert result["offline"] is False and result["wheels"] == [f"lifeline-{VERSION}-py3-none-any.whl"]
    tree = out / "tree"
    _run("dpkg-deb", "-R", deb, tree)
    return deb, tree


def test_control_fields(built: tuple[Path, Path]) -> None:
    deb, _ = built
    info = _run("dpkg-deb", "--info", deb).stdout
    fields = dict(re.findall(r"^ ([A-Z][A-Za-z-]+): (.*)$", info, re.M))
    assert fields["Package"] == "lifeline-gateway" and fields["Version"] == f"{VERSION}-1"
    assert fields["Architecture"] == "arm64" and int(fields["Installed-Size"]) > 100
    depends = [d.strip() for d in fields["Depends"].split(",")]
    assert {"python3-venv", "adduser", "systemd", "python3 (>= 3.11)"} <= set(depends)
    assert not any("<<" in d for d in depends)  # no binary wheels: any python3 >= 3.11 will do
    for name in ("conffiles", "md5sums", *SCRIPTS):
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*?\s+{name}\b", info, re.M), name
    assert _run("dpkg-deb", "--field", deb, "Package").stdout.strip() == "lifeline-gateway"


def test_file_list_owners_and_modes(built: tuple[Path, Path]) -> None:
    deb, _ = built
    entries: dict[str, tuple[str, str, str]] = {}
    for line in _run("dpkg-deb", "--contents", deb).stdout.splitlines():
        mode, owner, _size, _date, _time, path, *rest = line.split()
        entries[path.removeprefix(".")] = (mode, owner, " ".join(rest))
    assert {owner for _, owner, _ in entries.values()} == {"root/root"}  # --root-owner-group
    expect = {
        "/etc/lifeline/gateway.toml": "-rw-r-----",
        "/lib/systemd/system/lifeline-gateway.service": "-rw-r--r--",
        "/usr/lib/lifeline/make-venv": "-rwxr-xr-x",
        f"/opt/lifeline/wheels/lifeline-{VERSION}-py3-none-any.whl": "-rw-r--r--",
        "/usr/share/doc/lifeline-gateway/copyright": "-rw-r--r--",
        "/usr/bin/lifeline": "lrwxrwxrwx",
    }
    for path, mode in expect.items():
        assert entries[path][0] == mode, (path, entries.get(path))
    assert entries["/usr/bin/lifeline"][2] == "-> /opt/lifeline/venv/bin/lifeline"
    assert not any(p.startswith("/usr/local") or p.startswith("/var/") for p in entries)
    assert "/opt/lifeline/wheels/OFFLINE" not in entries and "/etc/lifeline/gateway.key" not in entries
    for path, (mode, _, _) in entries.items():
        if mode.startswith("d"):
            assert mode == "drwxr-xr-x", path


def test_project_wheel(built: tuple[Path, Path]) -> None:
    _, tree = built
    with zipfile.ZipFile(tree / f"opt/lifeline/wheels/lifeline-{VERSION}-py3-none-any.whl") as z:
        names = set(z.namelist())
        entry = z.read(f"lifeline-{VERSION}.dist-info/entry_points.txt").decode()
    for module in ("gateway/daemon.py", "gateway/statuspage.py", "gateway/config_template.py", "tools/cli.py",
                   "protocols/keys.py"):
        assert f"lifeline/{module}" in names, module
    assert not [n for n in names if "/tests/" in n or n.endswith(".pyc") or "node_modules" in n]
    assert "lifeline = lifeline.tools.cli:main" in entry


def test_conffile_and_config(built: tuple[Path, Path]) -> None:
    _, tree = built
    assert (tree / "DEBIAN/conffiles").read_text() == "/etc/lifeline/gateway.toml\n"
    text = (tree / "etc/lifeline/gateway.toml").read_text()
    with pytest.raises(ConfigError) as e:  # the operator must set the id before the daemon starts
        parse(text, "/etc/lifeline/gateway.toml")
    assert e.value.key == "gateway.id"
    cfg = parse(text.replace('# id = "gw-0001"', 'id = "gw-0001"'), "edited")
    assert cfg.gateway.key_file == Path("/etc/lifeline/gateway.key")
    assert cfg.gateway.state_dir == Path("/var/lib/lifeline")
    assert cfg.status_page.token_file == Path("/etc/lifeline/status.token")
    for line in (tree / "DEBIAN/md5sums").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        assert hashlib.md5((tree / rel).read_bytes()).hexdigest() == digest, rel


def test_maintainer_scripts(built: tuple[Path, Path]) -> None:
    _, tree = built
    shells = [s for s in ("sh", "dash", "bash") if shutil.which(s)]
    for name in (*SCRIPTS, "../usr/lib/lifeline/make-venv"):
        path = tree / "DEBIAN" / name
        assert path.stat().st_mode & 0o777 == 0o755, name
        text = path.read_text()
        assert text.startswith("#!/bin/sh\n") and "\nset -e\n" in text, name
        for sh in shells:
            r = _run(sh, "-n", path, check=False)
            assert r.returncode == 0, (sh, name, r.stderr)
    for name in SCRIPTS:  # an unknown argument fails loudly, touching nothing
        r = _run("sh", tree / "DEBIAN" / name, "bogus-action", check=False)
        assert r.returncode == 1 and "unknown argument 'bogus-action'" in r.stderr, name
    # arguments that must be no-ops
    for name, arg in (("postinst", "abort-upgrade"), ("prerm", "failed-upgrade"), ("postrm", "upgrade"),
                      ("postrm", "abort-install")):
        r = _run("sh", tree / "DEBIAN" / name, arg, check=False)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), (name, arg)

    postinst = (tree / "DEBIAN/postinst").read_text()
    assert "adduser --system --group" in postinst and "getent passwd lifeline" in postinst
    assert "install -d -m 0700 /var/lib/lifeline" in postinst
    assert "chown lifeline:lifeline /var/lib/lifeline" in postinst
    assert "gateway init --dir /etc/lifeline --owner lifeline" in postinst
    assert "/usr/lib/lifeline/make-venv" in postinst and "dpkg-statoverride --list" in postinst
    # the conffile's content is dpkg's: postinst changes its owner and mode, never writes it
    conf_lines = [ln.strip() for ln in postinst.splitlines() if "$CONF" in ln or "gateway.toml" in ln]
    assert conf_lines and all(re.match(r'(CONF=|if \[ -e "\$CONF" \]|chown root:lifeline "\$CONF"|'
                                       r'chmod 0640 "\$CONF"|echo )', ln) for ln in conf_lines), conf_lines
    assert not re.search(r">\s*\"?(\$CONF|/etc/lifeline/gateway\.toml)", postinst)
    prerm = (tree / "DEBIAN/prerm").read_text()
    assert 'systemctl stop "$UNIT"' in prerm and 'systemctl disable "$UNIT"' in prerm
    postrm = (tree / "DEBIAN/postrm").read_text()
    assert "rm -rf /opt/lifeline/venv" in postrm
    # purge never deletes the registry, the buffer or the signing key
    assert not [ln for ln in postrm.splitlines() if "rm " in ln and ("/var/lib" in ln or "gateway.key" in ln)]


def test_unit_file(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, tree = built
    unit = (tree / "lib/systemd/system/lifeline-gateway.service").read_text()
    repo = (ROOT / "gateway/systemd/lifeline-gateway.service").read_text()
    assert "ExecStart=/usr/bin/lifeline gateway run --config /etc/lifeline/gateway.toml" in unit
    assert "/usr/local" not in unit
    same = [ln.replace("/usr/local/bin/lifeline", "/usr/bin/lifeline") for ln in repo.splitlines()]
    assert [ln for ln in unit.splitlines() if not ln.startswith("#")] == [ln for ln in same if not ln.startswith("#")]
    copy = tmp_path / "lifeline-gateway.service"
    copy.write_text(unit.replace("/usr/bin/lifeline", str(LIFELINE)))
    r = _run("systemd-analyze", "verify", copy, check=False, timeout=60)
    assert r.returncode == 0 and "lifeline-gateway.service" not in r.stderr, r.stderr


def test_make_venv_builds_and_keeps_the_old_one_on_failure(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, tree = built
    make_venv = tree / "usr/lib/lifeline/make-venv"
    wheels = tree / "opt/lifeline/wheels"
    venv = tmp_path / "venv"
    # this package carries no dependency wheels: install the project alone (PIP_NO_DEPS is pip's --no-deps)
    env = _isolated_pip_env(PIP_NO_DEPS="1")
    _run("sh", make_venv, venv, wheels, env=env)
    r = _run(venv / "bin/python", "-c", "import lifeline.gateway.config_template as t; print(t.EXAMPLE_ID)")
    assert r.stdout.strip() == "gw-0001" and (venv / "bin/lifeline").is_file()
    marker = venv / "marker"
    marker.write_text("old venv")

    broken = tmp_path / "broken-wheels"
    broken.mkdir()
    (broken / f"lifeline-{VERSION}-py3-none-any.whl").write_bytes(b"not a zip file")
    (broken / "OFFLINE").touch()
    r = _run("sh", make_venv, venv, broken, env=env, check=False)
    assert r.returncode == 1 and "keeping the previous one" in r.stderr
    assert marker.read_text() == "old venv" and not (tmp_path / "venv.old").exists()

    r = _run("sh", make_venv, venv, tmp_path, env=env, check=False)
    assert r.returncode == 3 and "no lifeline wheel" in r.stderr and marker.exists()
    assert _run("sh", make_venv, env=env, check=False).returncode == 2


@pytest.mark.slow
def test_full_package_installs_offline(tmp_path: Path) -> None:
    """The default build bundles every dependency: make-venv installs with pip --no-index and no other
    source of wheels, and the installed CLI initialises and checks a gateway."""
    result = _build(tmp_path / "out")
    assert result["offline"] is True and len(result["wheels"]) > 10
    deb = Path(result["deb"])
    info = _run("dpkg-deb", "--info", deb).stdout
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"python3 (<< {sys.version_info[0]}.{sys.version_info[1] + 1})" in info and f"(>= {py})" in info
    tree = tmp_path / "tree"
    _run("dpkg-deb", "-R", deb, tree)
    assert (tree / "opt/lifeline/wheels/OFFLINE").is_file()
    target = Path("/usr/bin/python3")
    probe = _run(target, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')", check=False)
    assert probe.stdout.strip() == py, f"the package's python3 {probe.stdout.strip()} is not the build's {py}"
    venv = tmp_path / "venv"
    _run("sh", tree / "usr/lib/lifeline/make-venv", venv, tree / "opt/lifeline/wheels", env=_isolated_pip_env())
    lifeline = venv / "bin/lifeline"
    etc = tmp_path / "etc"
    _run(lifeline, "gateway", "init", "--dir", etc, "--id", "gw-deb", "--state-dir", tmp_path / "state")
    r = _run(lifeline, "gateway", "check-config", etc / "gateway.toml", "--json")
    assert json.loads(r.stdout)["ok"] is True
    assert _run(lifeline, "--version").stdout.strip().endswith(VERSION)
