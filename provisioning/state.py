"""Which steps are finished, per device: the file that makes provisioning idempotent and resumable.

``{"version": 1, "devices": {"<device id>": {"steps": {"flash": {"done": true, "firmware": "<sha256>"},
...}, "row": 3, "result": "passed"}}, "rows": {"3": "<device id>"}}``. Written atomically (tmp + rename)
after every step, so a crash or a pulled cable loses at most the step in progress. No secrets: the
root keys live only in the records file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lifeline.provisioning.errors import EnvironmentProblem

STEPS = ("flash", "install", "config", "register", "selftest", "finalize", "label")


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"version": 1, "devices": {}, "rows": {}}
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise EnvironmentProblem("state_unreadable", f"cannot read the state file {path}: {exc}") from None
            if isinstance(loaded, dict) and isinstance(loaded.get("devices"), dict):
                self.data = loaded
                self.data.setdefault("rows", {})

    def _device(self, device_id: str) -> dict[str, Any]:
        devices: dict[str, Any] = self.data["devices"]
        return devices.setdefault(device_id, {"steps": {}})  # type: ignore[no-any-return]

    def done(self, device_id: str, step: str, **match: Any) -> bool:
        entry = self.data["devices"].get(device_id, {}).get("steps", {}).get(step)
        if not isinstance(entry, dict) or not entry.get("done"):
            return False
        return all(entry.get(k) == v for k, v in match.items())

    def mark(self, device_id: str, step: str, **info: Any) -> None:
        self._device(device_id)["steps"][step] = {"done": True, **info}
        self.save()

    def fail(self, device_id: str, step: str, reason: str) -> None:
        self._device(device_id)["steps"][step] = {"done": False, "reason": reason}
        self.save()

    def reset(self, device_id: str) -> None:
        self.data["devices"].pop(device_id, None)
        self.save()

    def set_result(self, device_id: str, result: str) -> None:
        self._device(device_id)["result"] = result
        self.save()

    def result(self, device_id: str) -> str | None:
        r = self.data["devices"].get(device_id, {}).get("result")
        return r if isinstance(r, str) else None

    def bind_row(self, row: int, device_id: str) -> None:
        self.data["rows"][str(row)] = device_id
        self._device(device_id)["row"] = row
        self.save()

    def row_device(self, row: int) -> str | None:
        v = self.data["rows"].get(str(row))
        return v if isinstance(v, str) else None

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
