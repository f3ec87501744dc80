"""Shared fixtures: a small MicroPython-shaped firmware image, a technician key, flow options on the emulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import keys
from lifeline.provisioning import firmware_image
from lifeline.provisioning.audit import AuditLog
from lifeline.provisioning.flow import Options
from lifeline.provisioning.nodeconfig import DeviceSpec, Location
from lifeline.provisioning.state import StateFile
from lifeline.sim_devices.esp32_emulator import Esp32Emulator, make_firmware_image

IMAGE_SIZE = 300_000


@pytest.fixture(scope="session")
def image_bytes() -> bytes:
    return make_firmware_image(IMAGE_SIZE)


@pytest.fixture
def firmware(tmp_path: Path, image_bytes: bytes) -> firmware_image.FirmwareImage:
    path = tmp_path / "ESP32_GENERIC-v1.27.0.bin"
    path.write_bytes(image_bytes)
    return firmware_image.load(path)


@pytest.fixture
def tech_key() -> Ed25519PrivateKey:
    return keys.generate()


@pytest.fixture
def spec() -> DeviceSpec:
    return DeviceSpec(kind="smoke", radio="lora", region="EU868", interval_s=900,
                      location=Location("Flat 3, 12 Elm Road", 52_370_216, 4_895_168, "district-7"),
                      data_class="sensitive", install_date="2026-11-20", design_life_years=10, tags=("pilot",))


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Esp32Emulator]:
    with Esp32Emulator(workdir=tmp_path / "board") as emu:
        yield emu
        assert emu.failures == []


@pytest.fixture
def make_options(tmp_path: Path, firmware: firmware_image.FirmwareImage,
                 tech_key: Ed25519PrivateKey) -> Callable[..., Options]:
    work = tmp_path / "run"
    work.mkdir(exist_ok=True)
    state = StateFile(work / "state.json")

    def make(port: str, **kw: Any) -> Options:
        base: dict[str, Any] = {
            "port": port, "firmware": firmware, "records_path": work / "records.jsonl", "state": state,
            "audit": AuditLog(work / "audit.jsonl", "alice"), "technician_key": tech_key,
            "labels_dir": work / "labels",
        }
        base.update(kw)
        return Options(**base)

    return make
