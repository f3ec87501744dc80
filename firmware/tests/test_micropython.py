"""The firmware under real MicroPython 1.27: every module compiles with mpy-cross and imports, a full
report cycle runs for every node kind (frames checked on CPython), and one wake fits the RAM budget."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from lifeline.firmware import manifest
from lifeline.protocols import fastpath, frame
from lifeline.sim_devices import fw_memory
from lifeline.tools import mpy_compile, mpy_runtime

FW = Path(__file__).resolve().parents[1]
KINDS = ("smoke", "tilt", "water_level", "water_meter", "gas_meter", "electricity_meter")
# modules that need the real chip (machine, esp32) or run only as device entry points
HARDWARE_ONLY = {"hal/esp32.py", "main.py", "boot.py"}


def _device_modules() -> list[str]:
    return [f for f in manifest.FILES if f not in HARDWARE_ONLY]


def test_manifest_lists_every_firmware_module() -> None:
    on_disk = {p.relative_to(FW).as_posix() for p in FW.rglob("*.py")
               if "tests" not in p.relative_to(FW).parts and p.name != "manifest.py"}
    assert set(manifest.FILES) == on_disk
    for kind in manifest.KIND_FILES:
        for radio in manifest.RADIO_FILES:
            for device in (True, False):
                assert set(manifest.files_for(kind, radio, device)) <= set(manifest.FILES)


def test_every_firmware_module_compiles_with_mpy_cross() -> None:
    files = mpy_runtime.device_files(("protocols", "firmware"))
    sources = {p: b for p, b in files.items() if p.startswith("/lib/lifeline/firmware/")}
    assert len(sources) == len(manifest.FILES)
    out = mpy_compile.compile_tree(sources)
    assert all(v[:2] == b"M\x06" for v in out.values())


def test_device_code_stays_in_the_micropython_subset() -> None:
    banned_imports = {"typing", "dataclasses", "__future__", "abc", "enum"}
    hw = {"machine", "esp32", "network", "bluetooth"}
    for rel in manifest.FILES:
        tree = ast.parse((FW / rel).read_text(), rel)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            assert not set(names) & banned_imports, (rel, names)
            if not rel.startswith("hal/"):
                assert not set(names) & hw, f"{rel} imports hardware module {names}: only hal/ may"


def test_every_module_imports_on_cpython() -> None:
    import importlib

    for rel in _device_modules():
        name = "lifeline.firmware." + rel[:-3].replace("/", ".").removesuffix(".__init__")
        importlib.import_module(name.removesuffix(".__init__"))


@pytest.mark.micropython
def test_every_module_imports_under_micropython() -> None:
    names = ["lifeline.firmware." + f[:-3].replace("/", ".") for f in _device_modules()
             if not f.endswith("__init__.py")]
    script = "".join(f"import {n}\n" for n in names) + "print('imported', %d)\n" % len(names)
    out = mpy_runtime.run(script, mpy_runtime.device_files(("protocols", "firmware")))
    assert out.stdout.strip() == f"imported {len(names)}"


@pytest.mark.micropython
def test_report_cycle_for_every_kind_under_micropython_decodes_on_cpython() -> None:
    script = """
import json
from lifeline.firmware import simnode
out = {}
for kind in %r:
    sn = simnode.SimNode(kind)
    slept = []
    for _ in range(3):
        slept.append(sn.wake())
        sn.sleep(900000)
    out[kind] = [slept, [f.hex() for f in sn.air.frames], sn.dev_id.hex(), sn.root_key.hex()]
print(json.dumps(out))
""" % (KINDS,)
    files = mpy_compile.compile_tree(mpy_runtime.device_files(("protocols", "firmware")))
    res = json.loads(mpy_runtime.run(script, files, timeout=120).stdout.strip().splitlines()[-1])
    schema_kind = {"smoke": 1, "tilt": 2, "water_level": 3, "water_meter": 4, "gas_meter": 5, "electricity_meter": 6}
    for kind, (slept, frames_hex, dev_hex, key_hex) in res.items():
        keys = frame.derive_keys(bytes.fromhex(key_hex), bytes.fromhex(dev_hex))
        decoded = [frame.decode(bytes.fromhex(h), keys) for h in frames_hex]
        kinds = [d.header.kind for d in decoded]
        assert kinds.count(schema_kind[kind]) == 3, (kind, kinds)  # one report per 15-minute wake
        assert kinds.count(7) == 1  # heartbeat on the first wake
        fcnts = [d.header.fcnt for d in decoded]
        assert fcnts == sorted(set(fcnts))
        assert all(s > 0 for s in slept)



@pytest.mark.micropython
def test_sm_node_takes_its_suite_from_the_config_under_micropython() -> None:
    """A node whose config says "suite": "sm" seals every frame with HMAC-SM3 (and SM4-CTR for the meter)
    under real MicroPython (.mpy): the frames verify with the suite-2 keys on CPython (OpenSSL fast path),
    and the suite-1 keys of the same root key find the suite wrong."""
    script = """
import json
from lifeline.firmware import simnode
sn = simnode.SimNode("water_meter", config_extra={"suite": "sm"})
for _ in range(2):
    sn.wake()
    sn.sleep(900000)
print(json.dumps([[f.hex() for f in sn.air.frames], sn.dev_id.hex(), sn.root_key.hex()]))
"""
    files = mpy_compile.compile_tree(mpy_runtime.device_files(("protocols", "firmware")))
    frames_hex, dev_hex, key_hex = json.loads(mpy_runtime.run(script, files, timeout=120).stdout.strip()
                                              .splitlines()[-1])
    root, dev = bytes.fromhex(key_hex), bytes.fromhex(dev_hex)
    sm = fastpath.derive_keys(root, dev, frame.SUITE_SM)
    data = [bytes.fromhex(h) for h in frames_hex]
    assert data and {d[0] for d in data} == {0x12}
    decoded = [fastpath.decode(d, sm) for d in data]
    assert [f.header.kind for f in decoded].count(4) == 2 and all(f.header.encrypted for f in decoded
                                                                    if f.header.kind == 4)
    with pytest.raises(frame.FrameError, match="wrong_suite"):
        frame.decode(data[0], frame.derive_keys(root, dev))


@pytest.mark.micropython
@pytest.mark.parametrize("kind", KINDS)
def test_one_wake_fits_the_ram_budget(kind: str) -> None:
    fig = fw_memory.measure(kind)
    assert fig.frames == 1  # the measured wake is a report wake
    assert 0 < fig.cycle_alloc < 200_000
    assert fig.firmware_in_use <= fw_memory.BUDGET_IN_USE, fig


@pytest.mark.micropython
def test_ble_node_cycle_under_micropython() -> None:
    from lifeline.firmware.radios import ble

    script = """
import json
from lifeline.firmware import simnode
sn = simnode.SimNode("water_level", "ble")
sn.wake()
print(json.dumps([[a.hex() for _, a, _, _ in sn.hal.ble().adverts], sn.dev_id.hex(), sn.root_key.hex()]))
"""
    files = mpy_compile.compile_tree(mpy_runtime.device_files(("protocols", "firmware")))
    adverts, dev_hex, key_hex = json.loads(mpy_runtime.run(script, files).stdout.strip().splitlines()[-1])
    keys = frame.derive_keys(bytes.fromhex(key_hex), bytes.fromhex(dev_hex))
    ads = [bytes.fromhex(a) for a in adverts]
    frames = [ble.reassemble(ads[i:i + 2]) for i in range(0, len(ads), 20)]
    assert [frame.decode(f, keys).header.kind for f in frames] == [3, 7]
