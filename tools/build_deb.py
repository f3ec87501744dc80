"""Build the gateway's Debian package (``lifeline-gateway_<version>_<arch>.deb``) for a Raspberry Pi.

    python tools/build_deb.py [--arch arm64] [--out dist] [--no-deps-wheels]
    lifeline package deb ...                      (the same command)

What the package holds (docs/operations.md, "Install from the Debian package"):

- ``/opt/lifeline/wheels/``: the project wheel and, by default, a wheel of every dependency; ``postinst``
  builds the virtualenv ``/opt/lifeline/venv`` from them with ``/usr/lib/lifeline/make-venv`` (offline:
  ``pip --no-index``). ``/usr/bin/lifeline`` links to the venv's entry point.
- ``/lib/systemd/system/lifeline-gateway.service``: gateway/systemd/lifeline-gateway.service, run from
  ``/usr/bin/lifeline``.
- ``/etc/lifeline/gateway.toml``: the annotated starter config (config_template), a conffile, mode 0640
  (postinst gives it to group lifeline); it has no ``gateway.id``, so the daemon refuses to start until
  the operator sets one.
- maintainer scripts: ``postinst`` (system user ``lifeline``, state dir, venv, signing key and status
  token via ``lifeline gateway init``, enable the unit; restart after an upgrade if it was running),
  ``prerm`` (stop; disable on removal), ``postrm`` (venv; on purge the token, never the registry/buffer).

Binary wheels are per CPU and per Python: the dependency wheels must match the Pi (arm64 = aarch64;
armhf = armv7l) and its ``python3`` (Debian 12: 3.11, Debian 13: 3.13). Build on the target (or an
arm64 machine) and ``--arch`` is the host's; on another machine give ``--arch arm64`` (and
``--python-version``) and pip downloads ``--platform`` wheels, ``--only-binary`` (for armhf most
dependencies have no PyPI wheels: build on the Pi or add an index that has them with ``--pip-arg``).
``--no-deps-wheels`` bundles the project wheel only (quick; the tests use it): such a package installs
its dependencies from the Python index configured on the target at ``postinst`` time, so it needs network.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lifeline-gateway"
MAINTAINER = "Lifeline maintainers <lifeline@example.invalid>"
SOURCE_PARTS = ("firmware", "gateway", "protocols", "provisioning", "hil_tests", "sim_devices", "tools")
SKIP = shutil.ignore_patterns("node_modules", "__pycache__", "*.pyc", "tests", ".mypy_cache", ".ruff_cache")
CONFIG = "etc/lifeline/gateway.toml"
UNIT = "lib/systemd/system/lifeline-gateway.service"
VENV = "/opt/lifeline/venv"
WHEELS = "/opt/lifeline/wheels"
MAKE_VENV = "/usr/lib/lifeline/make-venv"
# Debian architecture -> pip --platform tags (manylinux wheels for the Pi's glibc; Debian 12 has 2.36)
PLATFORMS: dict[str, tuple[str, ...]] = {
    "amd64": ("manylinux_2_36_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"),
    "arm64": ("manylinux_2_36_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64", "linux_aarch64"),
    "armhf": ("manylinux_2_36_armv7l", "manylinux_2_31_armv7l", "manylinux_2_17_armv7l", "linux_armv7l"),
}
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}


class BuildError(Exception):
    """The package cannot be built; the message says which step and why."""


@dataclass(frozen=True, slots=True)
class BuildResult:
    deb: Path
    version: str
    arch: str
    wheels: tuple[str, ...]
    offline: bool  # every dependency wheel is in the package
    size_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)


def host_arch() -> str:
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return _DEB_ARCH.get(platform.machine(), platform.machine())


def project_version() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return str(data["project"]["version"])


# ---------------------------------------------------------------------------------------------- files


POSTINST = r"""#!/bin/sh
# lifeline-gateway postinst: system user, state directory, virtualenv from the bundled wheels, signing
# key and status token (created if missing, never replaced), systemd unit. The config file is a conffile:
# this script changes its group and mode (unless a dpkg-statoverride says otherwise), never its content.
set -e

VENV=@VENV@
CONF=/etc/lifeline/gateway.toml
FLAG=/run/lifeline-gateway.restart-after-upgrade

case "$1" in
configure)
    install -d -m 0700 /var/lib/lifeline
    if ! getent passwd lifeline >/dev/null; then
        adduser --system --group --home /var/lib/lifeline --no-create-home lifeline
    fi
    chown lifeline:lifeline /var/lib/lifeline
    if [ -e "$CONF" ] && ! dpkg-statoverride --list "$CONF" >/dev/null 2>&1; then
        chown root:lifeline "$CONF"
        chmod 0640 "$CONF"
    fi
    @MAKE_VENV@ "$VENV" @WHEELS@
    if [ -z "$2" ]; then
        "$VENV/bin/lifeline" gateway init --dir /etc/lifeline --owner lifeline
    else
        "$VENV/bin/lifeline" gateway init --dir /etc/lifeline --owner lifeline >/dev/null
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    if [ -z "$2" ]; then
        # first install: enabled for the next boot, not started (it needs gateway.id, radios, uplink)
        systemctl enable lifeline-gateway.service >/dev/null 2>&1 || true
        echo "lifeline-gateway: set [gateway] id, [[ingress]] and [[uplink.endpoints]] in $CONF," \
             "then: systemctl start lifeline-gateway" >&2
    elif [ -e "$FLAG" ]; then
        rm -f "$FLAG"
        if [ -d /run/systemd/system ]; then
            systemctl start lifeline-gateway.service || true
        fi
    fi
    ;;
abort-upgrade|abort-remove|abort-deconfigure)
    ;;
*)
    echo "postinst called with unknown argument '$1'" >&2
    exit 1
    ;;
esac
exit 0
"""

PRERM = r"""#!/bin/sh
# lifeline-gateway prerm: stop the daemon cleanly (SIGTERM: readings in flight are committed, the outbox
# is kept); on removal also disable it. On upgrade, remember that it ran so postinst starts it again.
set -e

UNIT=lifeline-gateway.service
FLAG=/run/lifeline-gateway.restart-after-upgrade

case "$1" in
remove|deconfigure)
    if [ -d /run/systemd/system ]; then
        systemctl stop "$UNIT" || true
    fi
    systemctl disable "$UNIT" >/dev/null 2>&1 || true
    ;;
upgrade)
    if [ -d /run/systemd/system ] && systemctl is-active --quiet "$UNIT"; then
        touch "$FLAG"
        systemctl stop "$UNIT" || true
    fi
    ;;
failed-upgrade)
    ;;
*)
    echo "prerm called with unknown argument '$1'" >&2
    exit 1
    ;;
esac
exit 0
"""

POSTRM = r"""#!/bin/sh
# lifeline-gateway postrm: remove the virtualenv postinst built. Purge also removes the status token and
# the flag file; it keeps the signing key and /var/lib/lifeline (registry with device root keys, buffer
# with undelivered readings): delete those by hand once they are backed up or no longer needed.
set -e

case "$1" in
remove)
    rm -rf @VENV@ @VENV@.old
    rmdir /opt/lifeline 2>/dev/null || true
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    ;;
purge)
    rm -rf @VENV@ @VENV@.old
    rmdir /opt/lifeline 2>/dev/null || true
    rm -f /etc/lifeline/status.token /run/lifeline-gateway.restart-after-upgrade
    echo "lifeline-gateway: kept /etc/lifeline/gateway.key and /var/lib/lifeline (remove by hand)" >&2
    ;;
upgrade|failed-upgrade|abort-install|abort-upgrade|disappear)
    ;;
*)
    echo "postrm called with unknown argument '$1'" >&2
    exit 1
    ;;
esac
exit 0
"""

MAKE_VENV_SH = r"""#!/bin/sh
# make-venv VENV WHEELS: (re)build the Lifeline virtualenv from the wheels in WHEELS.
# With WHEELS/OFFLINE (the default package) pip uses nothing but those wheels (--no-index); without it
# (a --no-deps-wheels package) dependencies come from the Python index configured on this machine.
# The old venv is kept until the new one works, and restored if it does not.
set -e
venv=$1
wheels=$2
python=${LIFELINE_PYTHON:-/usr/bin/python3}
[ -n "$venv" ] && [ -d "$wheels" ] || { echo "usage: make-venv VENV WHEELS" >&2; exit 2; }
project=$(ls "$wheels"/lifeline-*.whl 2>/dev/null | head -n 1)
[ -n "$project" ] || { echo "make-venv: no lifeline wheel in $wheels" >&2; exit 3; }
index=--no-index
[ -e "$wheels/OFFLINE" ] || index=
old="$venv.old"
rm -rf "$old"
[ -d "$venv" ] && mv "$venv" "$old"
if "$python" -m venv "$venv" &&
   "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir $index \
       --find-links "$wheels" "$project"; then
    rm -rf "$old"
else
    echo "make-venv: could not build $venv; keeping the previous one" >&2
    rm -rf "$venv"
    [ -d "$old" ] && mv "$old" "$venv"
    exit 1
fi
"""

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: lifeline
Source: the Lifeline repository

Files: *
Copyright: the Lifeline authors
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
"""


def _script(text: str) -> str:
    return text.replace("@VENV@", VENV).replace("@WHEELS@", WHEELS).replace("@MAKE_VENV@", MAKE_VENV)


def packaged_unit() -> str:
    """The repository's unit with the package's paths."""
    text = (ROOT / "gateway" / "systemd" / "lifeline-gateway.service").read_text(encoding="utf-8")
    text = text.replace("/usr/local/bin/lifeline", "/usr/bin/lifeline")
    return text.replace("# Lifeline gateway daemon. Install to /etc/systemd/system/, then:",
                        "# Lifeline gateway daemon, installed by the lifeline-gateway package. Then:")


def packaged_config() -> str:
    from lifeline.gateway.config_template import DEFAULT_KEK_FILE, DEFAULT_TOKEN_FILE, starter

    return starter(None, token_file=DEFAULT_TOKEN_FILE, kek_file=DEFAULT_KEK_FILE)


def control(version: str, arch: str, installed_kib: int, python: str, offline: bool) -> str:
    major, minor = (int(x) for x in python.split(".")[:2])
    depends = [f"python3 (>= {major}.{minor})", "python3-venv", "adduser", "systemd"]
    if offline:  # binary wheels are built for one Python minor version
        depends.insert(1, f"python3 (<< {major}.{minor + 1})")
    return "\n".join([
        f"Package: {PACKAGE}",
        f"Version: {version}",
        f"Architecture: {arch}",
        f"Maintainer: {MAINTAINER}",
        f"Installed-Size: {installed_kib}",
        f"Depends: {', '.join(depends)}",
        "Recommends: bluez",
        "Section: net",
        "Priority: optional",
        "Description: Lifeline gateway daemon for city-lifeline sensor networks",
        " Receives sensor node frames over LoRa, NB-IoT and BLE, verifies, dedupes and",
        " durably buffers them (SQLite), signs them (COSE_Sign1, Ed25519) and forwards them",
        " over MQTT/TLS to the city platform. Runs as the systemd service lifeline-gateway.",
        f" Python dependencies are {'bundled as wheels' if offline else 'installed from the Python index'};"
        f" the virtualenv is built at installation in {VENV}.",
        "",
    ])


# ---------------------------------------------------------------------------------------------- build


def _run(cmd: Sequence[str], step: str, cwd: Path | None = None) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise BuildError(f"{step} failed (exit {r.returncode}): {' '.join(cmd)}\n{tail}")


def build_project_wheel(dest: Path, work: Path) -> Path:
    """The project wheel, built from a copy of the sources (the work tree gets no build/ litter)."""
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for part in SOURCE_PARTS:
        shutil.copytree(ROOT / part, src / part, ignore=SKIP)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--wheel-dir", str(dest), str(src)], "building the project wheel")
    wheels = sorted(dest.glob("lifeline-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one project wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


def fetch_dependency_wheels(project: Path, dest: Path, arch: str, python: str, pip_args: Sequence[str],
                            work: Path) -> None:
    """Every dependency of ``project`` as a wheel in ``dest``, for ``arch`` and ``python``.

    Natively, ``pip wheel`` (it builds wheels of sdist-only dependencies). For another platform, the pure
    Python wheels of the native set (built here, valid anywhere) go first, then ``pip download
    --only-binary`` fetches the platform's binary wheels for the rest."""
    native = arch == host_arch() and python == f"{sys.version_info[0]}.{sys.version_info[1]}"
    base = [sys.executable, "-m", "pip"]
    quiet = ["--quiet", "--disable-pip-version-check"]
    if native:
        _run([*base, "wheel", *quiet, "--prefer-binary", "--wheel-dir", str(dest), *pip_args, str(project)],
             f"building dependency wheels (Python {python})")
        return
    if arch not in PLATFORMS:
        raise BuildError(f"no pip platform tags known for --arch {arch} (known: {', '.join(PLATFORMS)})")
    here = work / "native-wheels"
    _run([*base, "wheel", *quiet, "--prefer-binary", "--wheel-dir", str(here), *pip_args, str(project)],
         "building the pure Python dependency wheels")
    for w in here.glob("*-none-any.whl"):
        if not w.name.startswith("lifeline-"):
            shutil.copy2(w, dest / w.name)
    tags = [t for tag in PLATFORMS[arch] for t in ("--platform", tag)]
    abi = "cp" + python.replace(".", "")
    _run([*base, "download", *quiet, "--only-binary=:all:", *tags, "--python-version", python,
          "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", "--find-links", str(dest),
          "--dest", str(dest), *pip_args, str(project)],
         f"downloading {arch} wheels for Python {python} (a dependency without a wheel for this platform: "
         "build on the target, or --pip-arg=--extra-index-url=URL of an index that has it)")


def _normalise_modes(root: Path, executables: set[str]) -> None:
    """0755 for directories and scripts, 0644 for everything else (whatever the build's umask was)."""
    scripts = executables | {f"DEBIAN/{s}" for s in ("postinst", "prerm", "postrm")}
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        p.chmod(0o755 if p.is_dir() or p.relative_to(root).as_posix() in scripts else 0o644)


def build(out_dir: Path, *, arch: str | None = None, version: str | None = None, python: str | None = None,
          deps: bool = True, pip_args: Sequence[str] = (), progress: bool = False) -> BuildResult:
    """Build the package into ``out_dir``; returns what was built. Raises BuildError."""
    import time

    arch = arch or host_arch()
    version = version or f"{project_version()}-1"
    python = python or f"{sys.version_info[0]}.{sys.version_info[1]}"
    if not re.fullmatch(r"[0-9][A-Za-z0-9.+~-]*", version):
        raise BuildError(f"--version {version!r} is not a Debian version")
    if not re.fullmatch(r"[a-z0-9-]+", arch):
        raise BuildError(f"--arch {arch!r} is not a Debian architecture name")
    if not re.fullmatch(r"3\.[0-9]{1,2}", python):
        raise BuildError(f"--python-version {python!r}: expected 3.N")
    if not (ROOT / "pyproject.toml").is_file():
        raise BuildError(f"no source checkout at {ROOT} (the package is built from the repository)")
    if shutil.which("dpkg-deb") is None:
        raise BuildError("dpkg-deb not found (apt-get install dpkg; tools/bootstrap.sh setup does)")
    seconds: dict[str, float] = {}
    status = None
    if progress:
        from rich.console import Console

        status = Console(stderr=True).status("building")
        status.start()

    def step(name: str) -> float:
        if status is not None:
            status.update(name)
        return time.monotonic()

    try:
        with tempfile.TemporaryDirectory(prefix="lifeline-deb-") as tmp:
            work = Path(tmp)
            stage = work / "root"
            wheels = stage / WHEELS.lstrip("/")
            wheels.mkdir(parents=True)
            t = step("building the project wheel")
            project = build_project_wheel(wheels, work)
            seconds["project_wheel"] = round(time.monotonic() - t, 2)
            if deps:
                t = step(f"fetching dependency wheels ({arch}, Python {python})")
                fetch_dependency_wheels(project, wheels, arch, python, pip_args, work)
                (wheels / "OFFLINE").write_text("every dependency is bundled: make-venv uses pip --no-index\n")
                seconds["dependency_wheels"] = round(time.monotonic() - t, 2)
            t = step("assembling the package tree")
            (stage / CONFIG).parent.mkdir(parents=True)
            (stage / CONFIG).write_text(packaged_config(), encoding="utf-8")
            (stage / UNIT).parent.mkdir(parents=True)
            (stage / UNIT).write_text(packaged_unit(), encoding="utf-8")
            mk = stage / MAKE_VENV.lstrip("/")
            mk.parent.mkdir(parents=True)
            mk.write_text(MAKE_VENV_SH, encoding="utf-8")
            (stage / "usr/bin").mkdir(parents=True)
            os.symlink(f"{VENV}/bin/lifeline", stage / "usr/bin/lifeline")
            doc = stage / "usr/share/doc" / PACKAGE
            doc.mkdir(parents=True)
            (doc / "copyright").write_text(COPYRIGHT, encoding="utf-8")
            shutil.copy2(ROOT / "docs" / "operations.md", doc / "operations.md")
            deb_dir = stage / "DEBIAN"
            deb_dir.mkdir()
            for name, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
                (deb_dir / name).write_text(_script(text), encoding="utf-8")
            (deb_dir / "conffiles").write_text(f"/{CONFIG}\n", encoding="utf-8")
            md5 = []
            size = 0
            for p in sorted(stage.rglob("*")):
                rel = p.relative_to(stage).as_posix()
                if rel.startswith("DEBIAN") or p.is_dir():
                    continue
                size += p.lstat().st_size
                if not p.is_symlink():
                    md5.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {rel}")
            (deb_dir / "md5sums").write_text("\n".join(md5) + "\n", encoding="utf-8")
            (deb_dir / "control").write_text(control(version, arch, (size + 1023) // 1024, python, deps),
                                             encoding="utf-8")
            _normalise_modes(stage, {MAKE_VENV.lstrip("/")})
            (stage / CONFIG).chmod(0o640)
            seconds["assemble"] = round(time.monotonic() - t, 2)
            t = step("dpkg-deb --build")
            out_dir.mkdir(parents=True, exist_ok=True)
            deb = out_dir / f"{PACKAGE}_{version}_{arch}.deb"
            # wheels are zip files already: gzip is as small as xz here, and much faster
            _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(stage), str(deb)], "dpkg-deb --build")
            seconds["dpkg_deb"] = round(time.monotonic() - t, 2)
            names = tuple(sorted(p.name for p in wheels.glob("*.whl")))
    finally:
        if status is not None:
            status.stop()
    return BuildResult(deb=deb, version=version, arch=arch, wheels=names, offline=deps,
                       size_bytes=deb.stat().st_size, seconds=seconds)


# ---------------------------------------------------------------------------------------------- CLI


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def package() -> None:
    """Build distributable packages of the gateway."""


@package.command("deb")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "dist",
              show_default=True, help="Where the .deb goes.")
@click.option("--arch", default=None, help="Debian architecture: arm64 (Pi 3/4/5, 64-bit OS), armhf, amd64. "
              "Default: this machine's; another one downloads --platform wheels.")
@click.option("--version", "version", default=None, help="Package version (default <project version>-1).")
@click.option("--python-version", "python", default=None,
              help="The target's python3 as 3.N (Debian 12: 3.11); default this interpreter's.")
@click.option("--no-deps-wheels", is_flag=True,
              help="Bundle only the project wheel (dependencies then come from the index at install time).")
@click.option("--pip-arg", "pip_args", multiple=True,
              help="Extra argument for pip (repeat), e.g. --pip-arg=--extra-index-url=URL.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def deb_cmd(out_dir: Path, arch: str | None, version: str | None, python: str | None, no_deps_wheels: bool,
            pip_args: tuple[str, ...], as_json: bool) -> None:
    """Build lifeline-gateway_<version>_<arch>.deb (exit 3 if a tool or a wheel is missing)."""
    try:
        r = build(out_dir, arch=arch, version=version, python=python, deps=not no_deps_wheels,
                  pip_args=pip_args, progress=not as_json)
    except BuildError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(3)
    if as_json:
        click.echo(json.dumps({"deb": str(r.deb), "version": r.version, "arch": r.arch, "wheels": list(r.wheels),
                               "offline": r.offline, "size_bytes": r.size_bytes, "seconds": r.seconds}))
    else:
        click.echo(f"{r.deb}  ({r.size_bytes / 1e6:.1f} MB, {len(r.wheels)} wheels"
                   f"{'' if r.offline else ', dependencies from the index at install time'})")


if __name__ == "__main__":
    package(["deb", *sys.argv[1:]])
