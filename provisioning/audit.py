"""The provisioning audit log: one JSON line per event (who, when, which firmware, which device, result).

Only names, ids, hashes, step names, reasons and timings go in (an allow-list of fields); every
free-text field passes through :func:`lifeline.provisioning.errors.scrub`, so a key that reached a
message by mistake still does not reach the log. The file is appended to (O_APPEND) and fsynced per line.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifeline.provisioning.errors import EnvironmentProblem, scrub

_ALLOWED = {"event", "device_id", "row", "step", "result", "reason", "message", "firmware_sha256", "bundle_sha256",
            "chip", "mac", "baud", "seconds", "checks", "kind", "claim_code_sha256", "records_file", "port"}


_FREE_TEXT = {"message", "reason", "step", "result", "event", "kind", "port"}


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class AuditLog:
    def __init__(self, path: Path, technician: str, *, clock: Callable[[], str] = _utc_now) -> None:
        self.path = path
        self.technician = technician
        self.host = socket.gethostname()
        self._clock = clock

    def write(self, event: str, **fields: Any) -> None:
        entry: dict[str, Any] = {"ts": self._clock(), "technician": self.technician, "host": self.host,
                                 "event": event}
        for k, v in fields.items():
            if k not in _ALLOWED:
                raise ValueError(f"audit field {k!r} is not on the allow-list")
            entry[k] = scrub(v) if isinstance(v, str) and k in _FREE_TEXT else v
        line = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            raise EnvironmentProblem("audit_unwritable",
                                     f"cannot write the audit log {self.path}: {exc.strerror}") from None
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
