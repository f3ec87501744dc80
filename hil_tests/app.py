"""App: what was built and put on a node (pytest-embedded's ``App`` role): its identity and root key, its
``/config.json``, the registry record the gateway imports, and the update bundles a drill installs.

The root key is a secret: it is kept out of ``repr`` and never logged; it is needed here only to build
OTA bundles (their HMAC key is derived from it, docs/firmware.md section 8) and is read from the
provisioning records file (mode 0600) on a bench.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifeline.firmware import ota

# firmware kind -> schema report kind name (the registry's and the platform's name)
SCHEMA_KIND = {"smoke": "smoke", "tilt": "manhole_tilt", "water_level": "water_level", "water_meter": "water_meter",
               "gas_meter": "gas_meter", "electricity_meter": "electricity_meter"}

# The simulated build's app entry: what main.py does on the device, with the HAL handed in by the sim board.
SIM_GOOD_MAIN = b"""# Lifeline app (simulator build): one wake of the node
from lifeline.firmware import node as _fw
node_obj = _fw.Node(hal)
sleep_ms = node_obj.wake()
"""
SIM_CRASHING_MAIN = b"raise RuntimeError('app v%d crashes at import')\n"
DEVICE_CRASHING_NODE = b"raise RuntimeError('app v%d crashes at import')\n"


@dataclass(frozen=True)
class App:
    name: str
    kind: str  # firmware kind: smoke, tilt, water_level, water_meter, gas_meter, electricity_meter
    radio: str  # firmware radio: lora, nbiot, ble
    device_id: bytes
    root_key: bytes = field(repr=False)
    config: Mapping[str, Any] = field(repr=False)
    record: Mapping[str, Any] = field(repr=False)
    target: str = "sim"  # sim: the simulator's build; device: .mpy files for a real ESP32

    @property
    def schema_kind(self) -> str:
        return SCHEMA_KIND[self.kind]

    @property
    def interval_s(self) -> int:
        return int(self.config.get("interval", 900))

    @property
    def heartbeat_s(self) -> int:
        return int(self.config.get("heartbeat", 86400))

    @property
    def lora_sf(self) -> int:
        return int(self.config.get("lora", {}).get("sf", 9))

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any], config: Mapping[str, Any],
                    target: str = "sim") -> App:
        return cls(name=name, kind=str(config["kind"]), radio=str(config.get("radio", "lora")),
                   device_id=bytes.fromhex(str(record["device_id"])), root_key=bytes.fromhex(str(record["root_key"])),
                   config=dict(config), record=dict(record), target=target)

    @classmethod
    def from_records_file(cls, path: Path, device_id: str, config: Mapping[str, Any], name: str = "board") -> App:
        """A bench board: its record (with the key) from the provisioning records file."""
        from lifeline.provisioning import records

        rec = records.find(path, device_id)
        if rec is None:
            raise LookupError(f"{path}: no record for device {device_id}")
        return cls.from_record(name, rec, config, target="device")

    # ------------------------------------------------------------------------------ OTA bundles
    @property
    def ota_key(self) -> bytes:
        return bytes(ota.ota_key(self.root_key, self.device_id))

    def update_bundle(self, version: int, *, crashing: bool = False, key: bytes | None = None) -> bytes:
        """An app bundle for this node (docs/firmware.md 8): the working app, or one that crashes at import;
        authenticated with the node's OTA key, or with ``key`` (a bundle made for another device)."""
        if self.target == "sim":
            files = {"main.py": SIM_CRASHING_MAIN % version if crashing else SIM_GOOD_MAIN}
        else:
            from lifeline.provisioning import bundle

            b = bundle.build(self.schema_kind, self.radio, device=True)
            files = {path.lstrip("/"): data for path, data in b.lib.items()}
            if crashing:
                files.pop("lib/lifeline/firmware/node.mpy", None)
                files["lib/lifeline/firmware/node.py"] = DEVICE_CRASHING_NODE % version
        return bytes(ota.make_bundle(files, version, key if key is not None else self.ota_key))

    def public_config(self) -> dict[str, Any]:
        """The configuration without its secret (for reports and logs)."""
        return {k: v for k, v in self.config.items() if k != "root_key"}


def config_without_secret(text: str) -> dict[str, Any]:
    obj = json.loads(text)
    obj.pop("root_key", None)
    return dict(obj)
