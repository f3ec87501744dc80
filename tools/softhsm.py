"""A private SoftHSM2 token store for tests: its own config and token directory in a temp dir.

SoftHSM2 reads ``SOFTHSM2_CONF`` when the library is initialised (``C_Initialize``) and lists only the
tokens that existed then, so :func:`make_softhsm` creates every token up front and the ``softhsm`` pytest
fixture (tools/pytest_plugin.py) sets ``SOFTHSM2_CONF`` for the whole session before anything loads the
module. Tokens are initialised with ``softhsm2-util`` (Debian package ``softhsm2``, installed by
tools/bootstrap.sh); subprocesses get :meth:`SoftHsm.env`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MODULE_CANDIDATES = (
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/local/lib/softhsm/libsofthsm2.so"),
)
SO_PIN = "55443322"


def find_module() -> Path:
    for p in MODULE_CANDIDATES:
        if p.exists():
            return p
    raise RuntimeError("SoftHSM2 is not installed (libsofthsm2.so not found): run tools/bootstrap.sh setup, "
                       "it installs the Debian package softhsm2")


@dataclass
class SoftHsm:
    root: Path
    conf: Path
    module: Path
    pins: dict[str, str] = field(default_factory=dict)  # token label -> user PIN

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def pin_file(self, label: str) -> Path:
        """A 0600 file with the token's user PIN."""
        path = self.root / f"{label}.pin"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, (self.pins[label] + "\n").encode())
            os.close(fd)
        return path

    def init_token(self, label: str, pin: str) -> None:
        util = shutil.which("softhsm2-util")
        if util is None:
            raise RuntimeError("softhsm2-util not found: run tools/bootstrap.sh setup (Debian package softhsm2)")
        r = subprocess.run([util, "--init-token", "--free", "--label", label, "--so-pin", SO_PIN, "--pin", pin],
                           env=self.env(), capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"softhsm2-util --init-token {label}: {r.stderr.strip() or r.stdout.strip()}")
        self.pins[label] = pin


def make_softhsm(root: Path, tokens: dict[str, str]) -> SoftHsm:
    """A token store in ``root`` with ``tokens`` (label -> user PIN) initialised."""
    (root / "tokens").mkdir(parents=True, exist_ok=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
                    "slots.removable = false\n", encoding="utf-8")
    hsm = SoftHsm(root, conf, find_module())
    for label, pin in tokens.items():
        hsm.init_token(label, pin)
    return hsm
