"""Take a node out of service: wipe its keys and configuration, erase its filesystem, revoke it.

1. Over the raw REPL: the device id is read from the MAC, /config.json is overwritten and removed, the
   app and the node's state files are removed.
2. In download mode: the ``vfs`` and ``nvs`` partitions (read from the board's own partition table) are
   erased with ROM FLASH_BEGIN, so no copy of the old key survives in a stale LittleFS block.
3. The board is restarted (MicroPython formats a fresh, empty filesystem).
4. Revocation: a signed revocation record is appended to the revocations file, and with a registry
   path the device is revoked in the gateway's registry directly (``Registry.revoke``); otherwise run
   ``lifeline gateway devices revoke <id>`` on the gateway.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.provisioning import records
from lifeline.provisioning.audit import AuditLog
from lifeline.provisioning.errors import ProvisionError
from lifeline.provisioning.flasher import Flasher
from lifeline.provisioning.flow import has_reset_lines
from lifeline.provisioning.identity import eui64_from_mac
from lifeline.provisioning.installer import CONFIG_PATH, Installer
from lifeline.provisioning.rawrepl import RawRepl

_PT = 0x8000


@dataclass(frozen=True, slots=True)
class DecommissionResult:
    device_id: str
    erased: tuple[str, ...]
    registry_revoked: bool | None  # None: no registry given


def _partitions(fl: Flasher) -> list[tuple[str, int, int, int]]:
    esp = fl._loader()
    table = bytes(esp.read_flash_slow(_PT, 0xC00, None))
    out = []
    for i in range(0, len(table), 32):
        row = table[i : i + 32]
        if row[:2] != b"\xaa\x50":
            break
        ptype, subtype = row[2], row[3]
        offset = int.from_bytes(row[4:8], "little")
        size = int.from_bytes(row[8:12], "little")
        label = row[12:28].rstrip(b"\0").decode("ascii", "replace")
        out.append((label, ptype * 256 + subtype, offset, size))
    return out


def decommission(port: str, *, technician_key: Ed25519PrivateKey, audit: AuditLog, revocations: Path,
                 reason: str, registry: Path | None = None, reset_lines: bool | None = None) -> DecommissionResult:
    lines = has_reset_lines(port) if reset_lines is None else reset_lines
    repl = RawRepl.open(port, timeout=15.0, chunk_delay=0.01 if lines else 0.0)
    repl.enter()
    try:
        inst = Installer(repl)
        facts = inst.facts()
        dev = eui64_from_mac(facts.mac).hex()
        inst.overwrite_and_remove(CONFIG_PATH)
        inst.wipe_app()
        repl.send_only("import machine\nmachine.bootloader()")
    finally:
        repl.port.close()
    fl = Flasher(port, reset_lines=lines)
    erased: list[str] = []
    try:
        info = fl.connect()
        if info.device_id.hex() != dev:
            raise ProvisionError("board_changed", "a different board answers in download mode")
        for label, code, offset, size in _partitions(fl):
            if code in (0x0181, 0x0102):  # data/fat (MicroPython's vfs), data/nvs
                fl.erase(offset, offset + size)
                erased.append(label)
        if not erased:
            raise ProvisionError("no_partitions", "the board's partition table lists no vfs/nvs partition to erase")
        fl.run_app()
    finally:
        fl.close()
    rec = records.revocation(dev, reason, audit.technician, technician_key)
    fd = os.open(revocations, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    revoked: bool | None = None
    if registry is not None:
        from lifeline.gateway.registry import Registry

        with Registry(registry, metadata_only=True) as reg:
            revoked = reg.revoke(bytes.fromhex(dev), now_ms=int(time.time() * 1000))
    registry_note = "not given" if revoked is None else ("revoked" if revoked else "unknown device")
    audit.write("decommission", device_id=dev, result="done", reason=reason,
                message=f"erased {', '.join(erased)}; registry {registry_note}")
    return DecommissionResult(dev, tuple(erased), revoked)
