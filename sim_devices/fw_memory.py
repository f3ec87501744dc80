"""Firmware memory figures measured under real MicroPython 1.27 (the WebAssembly port).

One report cycle (wake -> read sensors -> encode -> send -> sleep) of a simulated node runs with the
firmware compiled to .mpy, as on a node. Figures, in bytes:

  cycle_alloc        allocated during one cycle with the GC disabled (what the cycle churns)
  firmware_in_use    heap in use after gc.collect() attributable to the node: firmware + protocol modules
                     and the node's objects (total in use minus interpreter baseline and sim scaffolding)
  scaffold_in_use    the simulator's own share (sim HAL, chip models, simnode, pure-Python AES: on the
                     ESP32 cryptolib does AES in C), reported for reference
  total_in_use       everything in use after the cycle and a collection

The port collects garbage only between two steps of a run (see lifeline.tools.mpy_runtime), so every
"after gc.collect()" figure is read at the start of the step after the collection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lifeline.tools import mpy_compile, mpy_runtime

BUDGET_IN_USE = 40 * 1024  # the node's RAM budget for one wake (docs/firmware.md "Memory")
KINDS = ("smoke", "tilt", "water_level", "water_meter", "gas_meter", "electricity_meter")

_KEEP = ("lifeline.firmware.hal", "lifeline.firmware.hal.sim", "lifeline.firmware.hal.sim_chips",
         "lifeline.firmware.simnode")
_SCAFFOLD = ("lifeline.firmware.hal.sim", "lifeline.firmware.hal.sim_chips", "lifeline.protocols.aes")
# A wake from deep sleep starts a fresh interpreter: only RTC memory and flash carry over. So the warm-up
# wakes run in one MicroPython process, which prints the node's persistent state (flash files, RTC memory,
# clocks); the measured wake runs in a second, fresh process that starts from that state, and loads
# exactly the modules (and interns exactly the strings) one real wake does.
_DUMP_STATE = """
import json
h = sn.hal
print("@fw-state " + json.dumps({"files": {k: v.hex() for k, v in h.fs.files.items()}, "dirs": list(h.fs.dirs),
      "rtc": h.rtc_mem.hex(), "ms": h.clock.ms, "rtc_base": h.rtc_base, "rtc_at": h._rtc_at}))
"""
_RESTORE_STATE = """
h = sn.hal
h.fs.files = {k: bytes.fromhex(v) for k, v in _S["files"].items()}
for _d in _S["dirs"]:
    h.fs.dirs[_d] = True
h.rtc_mem = bytes.fromhex(_S["rtc"])
h.clock.ms = _S["ms"]
h.rtc_base = _S["rtc_base"]
h._rtc_at = _S["rtc_at"]
h.resume(3, "timer", 0)
"""
_PROTOCOLS = ("lifeline.protocols.schema", "lifeline.protocols.cbor", "lifeline.protocols.crypto",
              "lifeline.protocols.frame")


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    kind: str
    radio: str
    cycle_alloc: int
    firmware_in_use: int
    scaffold_in_use: int
    total_in_use: int
    frames: int

    @property
    def within_budget(self) -> bool:
        return self.firmware_in_use <= BUDGET_IN_USE


_SM_MODULES = ("lifeline.protocols.sm3", "lifeline.protocols.sm4", "lifeline.protocols.crypto_sm")


def _node(kind: str, radio: str, suite: str) -> str:
    extra = "" if suite == "intl" else f", config_extra={{'suite': {suite!r}}}"
    return f"simnode.SimNode({kind!r}, {radio!r}{extra})"


def _warmup_steps(kind: str, radio: str, warmup: int, suite: str = "intl") -> list[str]:
    return [
        f"from lifeline.firmware import simnode\nsn = {_node(kind, radio, suite)}\n"
        f"for _ in range({warmup}):\n    sn.wake()\n    sn.sleep(900000)\n",
        _DUMP_STATE,
    ]


def _measure_steps(kind: str, radio: str, state: str, suite: str = "intl") -> list[str]:
    read = "M.append(gc.mem_alloc())\n"
    # an sm node's suite modules count as protocol modules (the sim's gateway end would import them first)
    protocols = _PROTOCOLS + (_SM_MODULES if suite == "sm" else ())
    return [
        "import gc, json\nM = []\ngc.collect()\n",
        read,  # 0: baseline
        "".join(f"import {m}\n" for m in _SCAFFOLD) + "gc.collect()\n",
        read,  # 1: + scaffold modules
        "".join(f"import {m}\n" for m in protocols) + "gc.collect()\n",
        read,  # 2: + protocol modules
        f"from lifeline.firmware import simnode\nsn = {_node(kind, radio, suite)}\n"
        f"_S = json.loads({state!r})\n" + _RESTORE_STATE + "del _S\ngc.collect()\n",
        read,  # 3: + simnode, the simulated hardware and the restored flash / RTC state (scaffold)
        "gc.disable()\n_a = gc.mem_alloc()\nsn.wake()\nsn.sleep(900000)\n_b = gc.mem_alloc()\ngc.enable()\n"
        "M.append(_b - _a)\nsn.node = None\ngc.collect()\n",
        read,  # 5: after the measured wake and a collection
        # bytes that stand for flash, RTC memory and the air (not heap on a node): heap blocks of 16 bytes
        "def _blk(b):\n    return (len(b) + 31) // 16 * 16\n"
        "M.append(sum(_blk(v) for v in sn.hal.fs.files.values()) + _blk(sn.hal.rtc_mem)"
        " + sum(_blk(f) for f in sn.air.frames) + 32 * len(sn.hal.tx_log) + sum(_blk(f) for f in sn.modem.sent))\n",
        'print("@fw-memory " + json.dumps([M, len(sn.air.frames)]))\n',
    ]


def measure(kind: str, radio: str = "lora", *, warmup: int = 3, timeout: float = 120,
            suite: str = "intl") -> MemoryFigures:
    """Run the cycle under MicroPython and return the figures (raises mpy_runtime.MicroPythonError).
    ``suite``: the node's frame crypto suite (its config's "suite")."""
    files = mpy_compile.compile_tree(mpy_runtime.device_files(("protocols", "firmware")))
    warm = mpy_runtime.run(_warmup_steps(kind, radio, warmup, suite), files, timeout=timeout)
    state = _tagged(warm, "@fw-state ")
    result = mpy_runtime.run(_measure_steps(kind, radio, state, suite), files, timeout=timeout)
    m, frames = json.loads(_tagged(result, "@fw-memory "))
    baseline, scaffold_mods, protocols, simnode, cycle_alloc, after, stand_ins = m
    # flash/RTC stand-ins restored before the wake are in `simnode - protocols`; the ones after it replace
    # them, so only the final figure is taken off
    scaffold = (scaffold_mods - baseline) + (simnode - protocols)
    return MemoryFigures(kind=kind, radio=radio, cycle_alloc=cycle_alloc,
                         firmware_in_use=after - simnode - stand_ins + (protocols - scaffold_mods),
                         scaffold_in_use=scaffold + stand_ins, total_in_use=after, frames=frames)


def _tagged(result: mpy_runtime.RunResult, tag: str) -> str:
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(tag):
            return line[len(tag):]
    raise mpy_runtime.MicroPythonError(f"no {tag.strip()} line printed", stdout=result.stdout,
                                       stderr=result.stderr)


def measure_all(radio: str = "lora") -> list[MemoryFigures]:
    return [measure(kind, radio) for kind in KINDS]


if __name__ == "__main__":
    for fig in measure_all():
        print(fig)
