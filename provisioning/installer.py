"""File operations on a MicroPython board through the raw REPL, and the facts the flow needs from it.

The statements sent are few and fixed (the emulator runs them under the real MicroPython): write a file
as ``tmp`` in base64 chunks decoded on the board with ``binascii.a2b_base64`` and rename it into place
(LittleFS renames atomically), read back a SHA-256 of a file, list, stat, remove, mkdir. File contents
never appear in what is printed or logged; the board prints only hashes, sizes and names.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from lifeline.provisioning.errors import ProvisionError
from lifeline.provisioning.rawrepl import DeviceException, ExecResult, RawRepl

CONFIG_PATH = "/config.json"
CHUNK_BYTES = 2048  # raw bytes per exec (2.7 KiB of base64): small against the ESP32's ~100 KiB heap
ENOSPC = 28
EMULATOR_MARK = "emulator"

Progress = Callable[[str, int, int], None]


def _quiet(what: str, done: int, total: int) -> None:
    return None


class InstallError(ProvisionError):
    """Installing or checking files on the board failed."""


@dataclass(frozen=True, slots=True)
class BoardFacts:
    machine: str  # os.uname()[4]
    version: str  # os.uname()[3]
    mac: bytes  # machine.unique_id()
    free_bytes: int
    provisioned_id: str | None  # device_id in an existing /config.json (never the key), else None
    has_config: bool

    @property
    def emulated(self) -> bool:
        return EMULATOR_MARK in self.machine.lower()


_FACTS = """\
import os, json, machine, binascii
_u = os.uname()
_s = os.statvfs('/')
_r = {'machine': _u[4], 'version': _u[3], 'mac': binascii.hexlify(machine.unique_id()).decode(),
      'free': _s[0] * _s[3], 'config': False, 'id': None}
try:
    _f = open('/config.json')
    _t = _f.read()
    _f.close()
    _r['config'] = True
    try:
        _r['id'] = json.loads(_t).get('device_id')
    except Exception:
        pass
    del _t
except OSError:
    pass
print(json.dumps(_r))
del _u, _s, _r
"""

_SHA = """\
import hashlib, binascii
def _sha(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return ''
    h = hashlib.sha256()
    while True:
        b = f.read(1024)
        if not b:
            break
        h.update(b)
    f.close()
    return binascii.hexlify(h.digest()).decode()
"""


class Installer:
    def __init__(self, repl: RawRepl, progress: Progress = _quiet) -> None:
        self.repl = repl
        self.progress = progress
        self._sha_defined = False

    def facts(self) -> BoardFacts:
        out = self._exec(_FACTS, "reading the board").stdout.strip().splitlines()
        try:
            d = json.loads(out[-1])
            return BoardFacts(str(d["machine"]), str(d["version"]), bytes.fromhex(d["mac"]), int(d["free"]),
                              d["id"] if isinstance(d["id"], str) else None, bool(d["config"]))
        except (ValueError, KeyError, IndexError, TypeError):
            raise InstallError("bad_board_reply", "the board's reply to the facts query was not understood") from None

    def _exec(self, code: str, doing: str, path: str = "") -> ExecResult:
        try:
            return self.repl.exec(code)
        except DeviceException as exc:
            if exc.errno == ENOSPC:
                raise InstallError(
                    "filesystem_full",
                    f"the board's filesystem is full (OSError ENOSPC) while {doing}{' ' + path if path else ''}; "
                    "the bundle does not fit: check the partition table of the firmware image (vfs size) or "
                    "remove old files (--force wipes the app)",
                ) from None
            raise InstallError("device_error", f"the board failed while {doing}: {exc.traceback.strip()}") from None

    def _mkdirs(self, paths: list[str]) -> None:
        dirs: list[str] = []
        for p in paths:
            for parent in reversed(PurePosixPath(p).parents):
                s = str(parent)
                if s != "/" and s not in dirs:
                    dirs.append(s)
        if not dirs:
            return
        code = ("import os\nfor _d in %r:\n    try:\n        os.mkdir(_d)\n    except OSError as _e:\n"
                "        if _e.args[0] != 17:\n            raise\n" % (dirs,))
        self._exec(code, "creating directories")

    def write_file(self, path: str, data: bytes) -> None:
        tmp = path + ".tmp"
        self._exec(f"import binascii\n_f = open({tmp!r}, 'wb')\n_w = _f.write\n_d = binascii.a2b_base64\n",
                   "opening", tmp)
        for i in range(0, len(data), CHUNK_BYTES):
            b64 = base64.b64encode(data[i : i + CHUNK_BYTES]).decode()
            self._exec(f"_w(_d(b'{b64}'))", "writing", path)
        self._exec(f"_f.close()\nimport os\nos.rename({tmp!r}, {path!r})\ndel _f, _w, _d", "closing", path)

    def sha256(self, path: str) -> str | None:
        if not self._sha_defined:
            self._exec(_SHA, "defining the hash helper")
            self._sha_defined = True
        out = self._exec(f"print(_sha({path!r}))", "hashing", path)
        text = out.stdout.strip()
        return text or None

    def install(self, files: Mapping[str, bytes], *, what: str = "install") -> int:
        """Write every file (skipping those whose hash already matches), then verify all by hash read-back.
        Returns the number of files written."""
        paths = sorted(files)
        self._mkdirs(paths)
        total = sum(len(files[p]) for p in paths)
        done = written = 0
        for p in paths:
            data = files[p]
            if self.sha256(p) != hashlib.sha256(data).hexdigest():
                self.write_file(p, data)
                written += 1
            done += len(data)
            self.progress(what, done, total)
        for p in paths:
            got = self.sha256(p)
            if got != hashlib.sha256(files[p]).hexdigest():
                raise InstallError("verify_mismatch",
                                   f"{p} on the board does not match what was written (hash differs)")
        return written

    def remove(self, paths: list[str]) -> None:
        code = ("import os\nfor _p in %r:\n    try:\n        os.remove(_p)\n    except OSError:\n        pass\n"
                % (paths,))
        self._exec(code, "removing files")

    def wipe_app(self) -> None:
        """Remove the config, the node's state files and the app (everything but /boot.py)."""
        code = """\
import os
def _rm(d):
    for e in os.ilistdir(d):
        p = (d.rstrip('/') + '/' + e[0])
        if e[1] == 0x4000:
            _rm(p)
            os.rmdir(p)
        elif p != '/boot.py':
            os.remove(p)
_rm('/')
"""
        self._exec(code, "wiping the app and configuration")

    def overwrite_and_remove(self, path: str, size_hint: int = 4096) -> None:
        """Overwrite a file's content with zeros before removing it (the flash erase afterwards is what
        really destroys the old blocks; this keeps a short-lived copy from surviving a failed erase)."""
        code = (f"try:\n    _f = open({path!r}, 'r+b')\n    _f.write(bytes({size_hint}))\n    _f.close()\n"
                f"except OSError:\n    pass\nimport os\ntry:\n    os.remove({path!r})\nexcept OSError:\n    pass\n")
        self._exec(code, "wiping", path)
