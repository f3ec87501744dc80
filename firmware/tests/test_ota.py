"""OTA of the app bundle: HMAC-authenticated, written to the spare slot, switched atomically, rolled back
when the new app does not confirm itself (an acknowledged report) within K boots."""

from __future__ import annotations

import contextlib

import pytest

from lifeline.firmware import bootsel, ota, storage
from lifeline.firmware.hal import sim
from lifeline.firmware.simnode import SimNode
from lifeline.protocols import schema

GOOD_APP = b"from lifeline.firmware import node\nsleep_ms = node.Node(hal).wake()\n"
CRASHING_APP = b"raise RuntimeError('new app crashes at import')\n"


def _key(sn: SimNode) -> bytes:
    return ota.ota_key(sn.root_key, sn.dev_id)


def boot(sn: SimNode) -> str:
    """One boot as on the device: boot.py selects the slot, then the slot's main runs (factory: /lib)."""
    slot = bootsel.select(sn.hal.fs)
    try:
        if slot == bootsel.FACTORY:
            sn.wake()
        else:
            code = storage.read(sn.hal.fs, slot + "/main.py")
            assert code is not None
            env = {"hal": sn.hal}
            exec(compile(code, slot + "/main.py", "exec"), env)
            sn.last_sleep_ms = env["sleep_ms"]
        sn.sleep()
        return "ok:" + slot
    except RuntimeError:
        sn.hal.resume(6, "power", 1000)  # panic reset: RTC memory kept, boot counter raised
        return "crash:" + slot


def test_bundle_roundtrip_and_tampering() -> None:
    key = bytes(32)
    files = {"main.py": GOOD_APP, "lib/lifeline/extra.py": b"X = 1\n"}
    blob = ota.make_bundle(files, 7, key)
    version, out = ota.parse_bundle(blob, key)
    assert version == 7 and dict(out) == files
    for bad, reason in (
        (ota.make_bundle(files, 7, bytes(range(32))), "bad_mac"),  # another device's key
        (blob[:-1] + bytes((blob[-1] ^ 1,)), "bad_hash"),  # a file changed after signing
        (blob + b"\x00", "trailing_bytes"),
        (blob[:20], "truncated"),
    ):
        with pytest.raises(ota.OtaError) as info:
            ota.parse_bundle(bad, key)
        assert info.value.reason == reason


def test_bad_mac_is_rejected_before_anything_is_written() -> None:
    sn = SimNode("tilt")
    sn.cycle()
    before = dict(sn.hal.fs.files)
    blob = ota.make_bundle({"main.py": GOOD_APP}, 2, bytes(32))
    with pytest.raises(ota.OtaError, match="bad_mac"):
        ota.install(sn.hal.fs, blob, _key(sn), 3)
    assert sn.hal.fs.files == before
    assert bootsel.select(sn.hal.fs) == bootsel.FACTORY


def test_good_app_confirms_itself_with_its_first_acknowledged_report() -> None:
    sn = SimNode("tilt")
    assert boot(sn) == "ok:"
    ota.install(sn.hal.fs, ota.make_bundle({"main.py": GOOD_APP}, 2, _key(sn)), _key(sn), 3)
    n = len(sn.air.frames)
    assert boot(sn) == "ok:/app/a"
    new = sn.decoded(sn.air.frames[n:])
    assert new and all(f.header.flags & 0x02 for f in new)  # reports on trial ask for an ACK
    assert not bootsel.in_trial(sn.hal.fs)
    for _ in range(5):
        assert boot(sn) == "ok:/app/a"  # confirmed: stays, no rollback
    assert bootsel.read_pointer(sn.hal.fs)["version"] == 2


def test_good_mac_but_crashing_app_is_rolled_back_after_k_boots() -> None:
    sn = SimNode("tilt")
    boot(sn)
    ota.install(sn.hal.fs, ota.make_bundle({"main.py": CRASHING_APP}, 3, _key(sn)), _key(sn), 3)
    results = [boot(sn) for _ in range(5)]
    assert results[:3] == ["crash:/app/a"] * 3
    assert results[3] == "ok:"  # the fourth boot runs the previous (factory) app again
    faults = [f for f in sn.decoded() if f.header.kind == schema.K_FAULT]
    assert [f.fields[1] for f in faults] == [7]  # ota_rollback reported once
    assert faults[0].fields[2] == 3
    assert bootsel.read_pointer(sn.hal.fs)["slot"] == bootsel.FACTORY


def test_app_that_never_gets_an_ack_is_rolled_back() -> None:
    sn = SimNode("tilt")
    boot(sn)
    ota.install(sn.hal.fs, ota.make_bundle({"main.py": GOOD_APP}, 4, _key(sn)), _key(sn), 2)
    sn.air.ack = False  # the new app's reports are never acknowledged
    results = [boot(sn) for _ in range(4)]
    assert results == ["ok:/app/a", "ok:/app/a", "ok:", "ok:"]


def test_second_update_goes_to_the_other_slot_and_pointer_writes_are_atomic() -> None:
    sn = SimNode("tilt")
    boot(sn)
    ota.install(sn.hal.fs, ota.make_bundle({"main.py": GOOD_APP}, 2, _key(sn)), _key(sn), 3)
    boot(sn)
    ota.install(sn.hal.fs, ota.make_bundle({"main.py": GOOD_APP}, 3, _key(sn)), _key(sn), 3)
    d = bootsel.read_pointer(sn.hal.fs)
    assert d["slot"] == "/app/b" and d["prev"] == "/app/a"
    # a power cut while the pointer is replaced leaves the old or the new pointer, never a broken one
    for n in range(1, 4):
        fs = sim.SimFlash()
        fs.files = dict(sn.hal.fs.files)
        fs.arm_cut(n)
        with contextlib.suppress(sim.PowerCut):
            bootsel.write_pointer(fs, {"slot": "/app/a", "version": 9, "trial": 0})
        assert bootsel.read_pointer(fs)["slot"] in ("/app/a", "/app/b")


def test_ota_over_downlink_chunks_installs_the_bundle() -> None:
    sn = SimNode("tilt", config_extra={"interval": 60})
    sn.cycle()
    blob = ota.make_bundle({"main.py": GOOD_APP}, 5, _key(sn))
    chunks = [blob[i:i + 16] for i in range(0, len(blob), 16)]
    sn.air.send_later(sn.dev_id, schema.C_MAINTENANCE, {1: 3600, 2: 1})
    sn.air.send_later(sn.dev_id, schema.C_OTA_BEGIN, {1: 5, 2: len(blob), 3: len(chunks)})
    for i, c in enumerate(chunks):
        sn.air.send_later(sn.dev_id, schema.C_OTA_CHUNK, {1: i, 2: c})
    for _ in range(200):
        if not sn.air.pending.get(sn.dev_id):
            break
        sn.cycle()
    assert bootsel.read_pointer(sn.hal.fs)["version"] == 5
    assert bootsel.select(sn.hal.fs) == "/app/a"



def test_sm_node_ota_uses_hmac_sm3_under_its_suite_2_key() -> None:
    """An sm node (suite 2) authenticates bundles with HMAC-SM3 under K_ota = HMAC-SM3(root, lifeline/2/ota ||
    id): a bundle tagged the intl way (HMAC-SHA256, lifeline/1/ota key) is refused, over the downlink path
    too, and the suite-2 bundle installs."""
    sn = SimNode("tilt", config_extra={"interval": 60, "suite": "sm"})
    sn.cycle()
    assert {f[0] for f in sn.air.frames} == {0x12}
    sm_key = ota.ota_key(sn.root_key, sn.dev_id, 2)
    intl_key = ota.ota_key(sn.root_key, sn.dev_id)
    assert sm_key != intl_key
    files = {"main.py": GOOD_APP}
    assert ota.parse_bundle(ota.make_bundle(files, 5, sm_key, 2), sm_key, 2)[0] == 5
    for wrong in (ota.make_bundle(files, 5, intl_key), ota.make_bundle(files, 5, sm_key),
                  ota.make_bundle(files, 5, intl_key, 2)):
        with pytest.raises(ota.OtaError, match="bad_mac"):
            ota.parse_bundle(wrong, sm_key, 2)

    def send(blob: bytes, version: int) -> None:
        chunks = [blob[i:i + 16] for i in range(0, len(blob), 16)]
        sn.air.send_later(sn.dev_id, schema.C_MAINTENANCE, {1: 3600, 2: 1})
        sn.air.send_later(sn.dev_id, schema.C_OTA_BEGIN, {1: version, 2: len(blob), 3: len(chunks)})
        for i, c in enumerate(chunks):
            sn.air.send_later(sn.dev_id, schema.C_OTA_CHUNK, {1: i, 2: c})
        for _ in range(200):
            if not sn.air.pending.get(sn.dev_id):
                break
            sn.cycle()

    send(ota.make_bundle(files, 5, intl_key), 5)  # the intl way: refused, nothing installed
    assert (bootsel.read_pointer(sn.hal.fs) or {}).get("version") != 5
    send(ota.make_bundle(files, 6, sm_key, 2), 6)
    assert bootsel.read_pointer(sn.hal.fs)["version"] == 6


@pytest.mark.micropython
def test_boot_py_runs_the_selected_slot_under_micropython() -> None:
    from pathlib import Path

    from lifeline.tools import mpy_runtime

    files = mpy_runtime.device_files(("protocols", "firmware"))
    files["/bootsel.py"] = (Path(__file__).resolve().parents[1] / "bootsel.py").read_bytes()
    files["/app/a/lib/lifeline/__init__.py"] = b""
    files["/app/a/lib/lifeline/firmware/__init__.py"] = b""
    files["/app/a/lib/lifeline/firmware/node.py"] = b"WHO = 'slot a'\n"
    script = """
import json, os, sys
os.chdir('/')
import bootsel
from lifeline.firmware import storage
bootsel.write_pointer(bootsel.OsFs(os), {'slot': '/app/a', 'version': 2, 'trial': 1, 'k': 1, 'prev': ''})
base_path = list(sys.path)
for _ in range(3):  # three boots: a fresh sys.path and module table each time, files kept
    sys.path[:] = base_path
    for n in list(sys.modules):
        if n.startswith('lifeline') or n == 'bootsel':
            del sys.modules[n]
    exec(open('/lib/lifeline/firmware/boot.py').read())
    from lifeline.firmware import node
    print(getattr(node, 'WHO', 'factory'))
"""
    out = mpy_runtime.run(script, files).stdout.split()
    assert out == ["slot", "a", "factory", "factory"]  # one trial boot (K = 1), then rolled back
