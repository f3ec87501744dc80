"""The firmware's over-the-air re-key module (firmware/rekey.py) under real MicroPython (.mpy, as on a node):
a `rekey` downlink under the current keys makes the node store old + pending key in flash and confirm under
the pending keys with counter 1; the ACK (under the new keys) switches it, erases the old key and restarts
the counter; a lost ACK plus a power loss continues from flash at the next wake. Both suites."""

from __future__ import annotations

import json

import pytest

from lifeline.protocols import fastpath, frame, rekey, schema_table
from lifeline.tools import mpy_compile, mpy_runtime

pytestmark = pytest.mark.micropython

SEED = bytes(range(40, 56))

SCRIPT = """
import json
from lifeline.firmware import simnode, storage
from lifeline.protocols import frame, rekey

SUITE = %(suite)d
SEED = bytes(range(40, 56))


class RekeyAir(simnode.Air):
    # the sim gateway: sends `rekey` once, answers the confirm under the pending keys (or loses that ACK)
    lose_ack = %(lose)s

    def uplink(self, hal, payload, params):
        h = frame.parse_header(payload)
        if h.kind == 11:
            self.frames.append(payload)
            if self.lose_ack:
                self.lose_ack = False
                return None
            self.register(h.dev_id, rekey.pending_root(SUITE, bytes(range(32)), h.dev_id, 1, SEED), SUITE)
            return self.downlink(h.dev_id, 64, {1: h.fcnt})
        return simnode.Air.uplink(self, hal, payload, params)


air = RekeyAir()
sn = simnode.SimNode("tilt", air=air, config_extra={"suite": "sm" if SUITE == 2 else "intl"})
sn.wake()
sn.sleep(900000)
air.send_later(sn.dev_id, 70, {1: 1, 2: SEED})
out = {"steps": []}
for step in range(3):
    if step == 1 and %(lose)s:
        out["pending_after_loss"] = sn.hal.fs.exists("/rekey")
        rec = storage.load_record(sn.hal.fs, "/rekey")
        out["record"] = rec.hex() if rec is not None else None
        sn.hal.power_loss(1000)
    n = len(air.frames)
    sn.wake()
    sn.sleep(900000)
    out["steps"].append([f.hex() for f in air.frames[n:]])
out["root"] = json.loads(storage.read(sn.hal.fs, "/config.json"))["root_key"]
out["pending"] = sn.hal.fs.exists("/rekey")
out["dev"] = sn.dev_id.hex()
print(json.dumps(out))
"""


def _run(suite: int, lose: bool) -> dict[str, object]:
    files = mpy_compile.compile_tree(mpy_runtime.device_files(("protocols", "firmware")))
    out = mpy_runtime.run(SCRIPT % {"suite": suite, "lose": lose}, files, timeout=180)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("suite", [frame.SUITE_INTL, frame.SUITE_SM])
@pytest.mark.parametrize("lose", [False, True], ids=["acked", "ack-lost+power-loss"])
def test_rekey_under_micropython(suite: int, lose: bool) -> None:
    r = _run(suite, lose)
    dev = bytes.fromhex(str(r["dev"]))
    old_root = bytes(range(32))
    new_root = rekey.pending_root(suite, old_root, dev, 1, SEED)
    old, new = fastpath.derive_keys(old_root, dev, suite), fastpath.derive_keys(new_root, dev, suite)
    steps = [[bytes.fromhex(h) for h in s] for s in r["steps"]]  # type: ignore[attr-defined]
    # the wake that heard `rekey`: its report under the old key, then the confirm under the new one, counter 1
    first = steps[0]
    assert fastpath.decode(first[0], old).header.kind != schema_table.K_REKEY_CONFIRM
    confirm = fastpath.decode(first[-1], new)
    assert (confirm.header.kind, confirm.header.fcnt, confirm.fields) == (schema_table.K_REKEY_CONFIRM, 1, {1: 1})
    assert confirm.header.encrypted
    if lose:
        # the old key is still active and both keys are in flash: epoch | old root | pending root
        assert r["pending_after_loss"] is True
        assert bytes.fromhex(str(r["record"])) == (1).to_bytes(2, "big") + old_root + new_root
        resumed = fastpath.decode(steps[1][0], new)  # the first frame after the power loss: the confirm again
        assert (resumed.header.kind, resumed.header.fcnt) == (schema_table.K_REKEY_CONFIRM, 1)
        later = steps[1][1:] + steps[2]
    else:
        later = steps[1] + steps[2]
    # switched: the config holds only the new root key, the record is gone, counters restart after the confirm
    assert r["root"] == new_root.hex() and r["pending"] is False
    assert later
    counters = [fastpath.decode(f, new).header.fcnt for f in later]
    assert counters[0] == 2 and counters == sorted(counters)
    with pytest.raises(frame.FrameError):
        fastpath.decode(later[0], old)
