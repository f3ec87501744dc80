"""The device under test, as drills touch it (pytest-embedded's three roles):

* :class:`~lifeline.hil_tests.app.App` - what was built and installed (identity, config, bundles);
* a link - how the node is reached: :class:`SimLink` (a node of the fleet simulator running the real
  firmware in virtual time, with a pty console and the virtual air) or :class:`SerialLink` (a real ESP32
  on a USB serial port: console and raw REPL over pyserial, stimuli and power by an operator or a relay);
* :class:`Dut` - the one interface drills use: console expectations, stimuli, time, power, radio outage,
  updates, and the node's reports at the platform.

The same drill runs on both links; what only a simulator can do (a monitor receiver beside the node,
exact stimuli) degrades on a bench to what a bench has (the platform's records, an operator's answer).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lifeline.hil_tests.app import App, config_without_secret
from lifeline.hil_tests.console import Console
from lifeline.hil_tests.platform import Platform, Row
from lifeline.hil_tests.world import SimWorld, Uplink

BOOT_PATTERN = r"rst:0x[0-9a-f]+ \((\w+)\)"


class DutError(RuntimeError):
    pass


class Link(Protocol):
    name: str
    console_url: str
    monitors_air: bool

    def now_s(self) -> float: ...
    def run(self, seconds: float) -> None: ...
    def stimulate(self, episode: str, duration_s: float | None, params: dict[str, float]) -> None: ...
    def power_cycle(self, off_s: float) -> None: ...
    def radio_outage(self, seconds: float) -> None: ...
    def install_update(self, blob: bytes, cut_power_at: int | None) -> str: ...
    def app_slot(self) -> dict[str, Any]: ...
    def node_config(self) -> dict[str, Any]: ...
    def queue_depth(self) -> int: ...
    def uplinks(self) -> list[Uplink]: ...
    def output_levels(self, pin: str) -> list[tuple[float, int]] | None: ...
    def ask(self, question: str) -> bool: ...
    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------------ operator


class Operator:
    """A person at the bench. Prompts go to the controlling terminal (pytest captures stdout); no terminal
    means no operator, and a drill that needs one fails saying what it needed."""

    def __init__(self, timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s

    def _tty(self) -> Any:
        try:
            return open("/dev/tty", "r+", encoding="utf-8")
        except OSError:
            return None

    def prompt(self, text: str) -> str:
        tty = self._tty()
        if tty is None:
            raise DutError(f"the bench needs an operator for: {text} (no terminal; use --bench-power or run "
                           "interactively)")
        with tty:
            tty.write(f"\n[HIL operator] {text}\n> ")
            tty.flush()
            return str(tty.readline()).strip()

    def do(self, text: str) -> None:
        self.prompt(f"{text} Press Enter when done.")

    def ask(self, question: str) -> bool:
        return self.prompt(f"{question} [y/n]").lower().startswith("y")


# ------------------------------------------------------------------------------------------------ sim link


class SimLink:
    """A node of the fleet simulator (real firmware, virtual time) as a board on a bench."""

    monitors_air = True

    def __init__(self, world: SimWorld, name: str) -> None:
        self.world = world
        self.name = name
        self.console_url = str(world.consoles[name].path)

    def _v(self) -> Any:
        return self.world.node(self.name)

    def now_s(self) -> float:
        return self.world.now_s

    def run(self, seconds: float) -> None:
        self.world.advance(seconds)

    def stimulate(self, episode: str, duration_s: float | None, params: dict[str, float]) -> None:
        def go() -> None:
            v = self._v()
            fleet = self.world.fleet
            now_s = fleet.now_ms / 1000.0
            v.model.add(episode, now_s, duration_s, **params)
            # a wake pin (LIS3DH INT1, the meter's tamper input, ...) fires while the node sleeps
            t = v.model.interrupts(fleet.now_ms - 1.0, fleet.now_ms + 3_600_000.0)
            reason = "motion" if v.spec.kind == "tilt" else "alarm"

            def kick(_: Any) -> None:  # a latched interrupt line wakes the node as soon as it sleeps
                if v.awake:
                    fleet.at(fleet.now_ms + 100.0, kick)
                else:
                    fleet.interrupt(v, reason)

            if t is not None:
                fleet.at(max(t, fleet.now_ms), kick)

        self.world.call(go)

    def power_cycle(self, off_s: float) -> None:
        self.world.call(lambda: self.world.fleet.reset_node(self._v(), 0, power_loss=True, off_ms=off_s * 1000.0))

    def radio_outage(self, seconds: float) -> None:
        def go() -> None:
            v = self._v()
            fleet = self.world.fleet
            v.radio_lost = True
            fleet.at(fleet.now_ms + seconds * 1000.0, lambda _: setattr(v, "radio_lost", False))

        self.world.call(go)

    def install_update(self, blob: bytes, cut_power_at: int | None) -> str:
        """What a technician's tool does over the maintenance link: the node's own ota.install (HMAC check,
        spare slot, read-back, pointer on trial), then a reset. ``cut_power_at``: power fails at that flash
        operation of the install (a torn write), and the node boots again from power-on."""
        from lifeline.firmware import ota
        from lifeline.firmware.hal import sim

        def go() -> str:
            v = self._v()
            if v.awake:
                return "awake"
            cfg = json.loads(v.hal.fs.files["/config.json"])
            key = ota.ota_key(bytes.fromhex(cfg["root_key"]), bytes.fromhex(cfg["device_id"]))
            fleet = self.world.fleet
            if cut_power_at is not None:
                v.hal.fs.arm_cut(cut_power_at)
            try:
                ota.install(v.hal.fs, blob, key, int(cfg.get("ota_trial_boots", 3)))
            except ota.OtaError as e:
                return str(e.reason)
            except sim.PowerCut:
                fleet.reset_node(v, 0, power_loss=True, off_ms=1000.0)
                return "power_cut"
            finally:
                v.hal.fs.disarm()
            fleet.reset_node(v, 4)
            return "installed"

        deadline = time.monotonic() + 30.0
        while True:  # the technician's tool waits for the node to be between wakes
            result = self.world.call(go)
            if result != "awake":
                return result
            if time.monotonic() > deadline:
                raise DutError("the node stayed awake for 30 s; cannot install")
            time.sleep(0.02)

    def app_slot(self) -> dict[str, Any]:
        from lifeline.firmware import bootsel

        d = self.world.call(lambda: bootsel.read_pointer(self._v().hal.fs))
        return dict(d) if d else {"slot": "", "version": 0, "trial": 0}

    def node_config(self) -> dict[str, Any]:
        text = self.world.call(lambda: self._v().hal.fs.files["/config.json"].decode())
        return config_without_secret(text)

    def queue_depth(self) -> int:
        def depth() -> int:
            from lifeline.firmware import storage, txqueue

            d = storage.load_json(self._v().hal.fs, txqueue.PATH)
            return len(d.get("q", [])) if isinstance(d, dict) else 0

        return self.world.call(depth)

    def uplinks(self) -> list[Uplink]:
        return self.world.uplinks(self.name)

    def output_levels(self, pin: str) -> list[tuple[float, int]] | None:
        return self.world.call(lambda: list(self.world.log(self.name).outputs.get(pin, [])))

    def ask(self, question: str) -> bool:
        raise DutError(f"a simulated node cannot answer {question!r}")

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------ serial link


STIMULUS_TEXT = {
    "fire": "Apply test smoke (aerosol) to the smoke node's chamber and keep it there until it sounds.",
    "test_press": "Press and release the smoke node's test button.",
    "lift": "Lift the manhole cover (tilt the node's housing past 30 degrees) and keep it lifted.",
    "displace": "Tilt the node's housing by about 10 degrees and keep it there.",
    "rain": "Raise the water under the level sensor above its flood threshold (fill the test column).",
    "leak": "Open the test tap to a trickle through the meter and leave it running.",
    "magnet": "Hold the magnet against the meter's tamper sensor.",
}


class SerialLink:
    """A real node on a USB serial port (``serial:/dev/ttyUSB0`` or any pyserial URL)."""

    monitors_air = False

    def __init__(self, url: str, *, operator: Operator, power_cmd: str | None = None,
                 console: Callable[[], Console] | None = None) -> None:
        self.name = "board"
        self.console_url = url
        self.operator = operator
        self.power_cmd = power_cmd
        self._t0 = time.monotonic()
        self._console = console

    def now_s(self) -> float:
        return time.monotonic() - self._t0

    def run(self, seconds: float) -> None:
        time.sleep(seconds)  # a real node lives in real time

    def stimulate(self, episode: str, duration_s: float | None, params: dict[str, float]) -> None:
        text = STIMULUS_TEXT.get(episode, f"Apply the stimulus {episode!r} ({params}) to the node.")
        if duration_s is not None:
            text += f" Keep it for {duration_s:g} s."
        self.operator.do(text)

    def _power(self, state: str) -> None:
        assert self.power_cmd is not None
        cmd = shlex.split(self.power_cmd.replace("{state}", state))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise DutError(f"power command {cmd!r} failed: {r.stderr.strip()[-300:]}")

    def power_cycle(self, off_s: float) -> None:
        if self.power_cmd:
            self._power("off")
            time.sleep(off_s)
            self._power("on")
        else:
            self.operator.do(f"Disconnect the node's battery/supply, wait {off_s:g} s, reconnect it.")

    def radio_outage(self, seconds: float) -> None:
        self.operator.do("Disconnect the node's antenna (or put the node in the shielded box).")
        time.sleep(seconds)
        self.operator.do("Reconnect the node's antenna (take it out of the shielded box).")

    def _repl(self) -> Any:
        from lifeline.provisioning.rawrepl import RawRepl, ReplError

        assert self._console is not None
        con = self._console()
        stack = contextlib.ExitStack()
        port = stack.enter_context(con.borrow())
        repl = RawRepl(port, timeout=5.0)
        try:
            repl.enter()
        except ReplError:
            # a node in deep sleep does not answer: reset it and catch main.py with Ctrl-C
            if getattr(port, "rts", None) is not None and not self.console_url.startswith("socket://"):
                port.rts = True
                time.sleep(0.1)
                port.rts = False
            else:
                self.operator.do("Press the node's reset (EN) button.")
            repl.enter()
        return repl, stack

    def _exec(self, code: str, timeout_s: float = 30.0) -> str:
        repl, stack = self._repl()
        with stack:
            out = repl.exec(code, timeout=timeout_s).stdout
            repl.send_only("import machine\nmachine.reset()")
        return str(out)

    def install_update(self, blob: bytes, cut_power_at: int | None) -> str:
        import base64

        chunks = [base64.b64encode(blob[i:i + 1024]).decode() for i in range(0, len(blob), 1024)]
        code = ["import os, json, binascii",
                "from lifeline.firmware import ota",
                "cfg = json.load(open('/config.json'))",
                "key = ota.ota_key(binascii.unhexlify(cfg['root_key']), binascii.unhexlify(cfg['device_id']))",
                "b = bytearray()"]
        code += [f"b.extend(binascii.a2b_base64({c!r}))" for c in chunks]
        code += ["try:",
                 "    ota.install(os, bytes(b), key, cfg.get('ota_trial_boots', 3))",
                 "    print('RESULT installed')",
                 "except ota.OtaError as e:",
                 "    print('RESULT', e.reason)"]
        if cut_power_at is not None:
            repl, stack = self._repl()
            with stack:
                repl.send_only("\n".join(code))
            time.sleep(0.2)
            self.power_cycle(1.0)
            return "power_cut"
        out = self._exec("\n".join(code), timeout_s=120)
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return line.split(" ", 1)[1].strip()
        raise DutError(f"no result from the board: {out[-300:]!r}")

    def app_slot(self) -> dict[str, Any]:
        out = self._exec("import os, json, bootsel\nprint(json.dumps(bootsel.read_pointer(bootsel.OsFs(os))))")
        d = json.loads(out.strip().splitlines()[-1])
        return dict(d) if d else {"slot": "", "version": 0, "trial": 0}

    def node_config(self) -> dict[str, Any]:
        return config_without_secret(self._exec("print(open('/config.json').read())").strip())

    def queue_depth(self) -> int:
        out = self._exec("import json\ntry:\n    print(len(json.load(open('/queue'))['q']))\nexcept OSError:\n"
                         "    print(0)")
        return int(out.strip().splitlines()[-1])

    def uplinks(self) -> list[Uplink]:
        raise DutError("a bench has no monitor receiver beside the node; use the platform's records")

    def output_levels(self, pin: str) -> list[tuple[float, int]] | None:
        return None

    def ask(self, question: str) -> bool:
        return self.operator.ask(question)

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------ the DUT


@dataclass(frozen=True, slots=True)
class Boot:
    reason: str  # the ROM's reset reason, e.g. POWERON_RESET, DEEPSLEEP_RESET, SW_CPU_RESET


class Dut:
    def __init__(self, app: App, link: Link, console: Console, platform: Platform) -> None:
        self.app = app
        self.link = link
        self.console = console
        self.platform = platform

    @property
    def name(self) -> str:
        return self.app.name

    @property
    def device_id(self) -> bytes:
        return self.app.device_id

    @property
    def is_sim(self) -> bool:
        return isinstance(self.link, SimLink)

    # ------------------------------------------------------------------------------ console
    def expect(self, pattern: str, timeout_s: float = 10.0) -> Any:
        return self.console.expect(pattern, timeout_s)

    def expect_boot(self, timeout_s: float = 30.0, reason: str | None = None) -> Boot:
        """The next boot the board prints (ESP32 ROM line ``rst:0x.. (REASON)``)."""
        pat = rf"rst:0x[0-9a-f]+ \(({reason})\)" if reason else BOOT_PATTERN
        m = self.console.expect(pat, timeout_s)
        return Boot(m.group(1).decode())

    def note(self, text: str) -> None:
        self.console.write_note(text)

    # ------------------------------------------------------------------------------ time and stimuli
    def now_s(self) -> float:
        return self.link.now_s()

    def run(self, seconds: float) -> None:
        """Let ``seconds`` of the node's life pass (virtual on the simulator, real on a bench)."""
        self.link.run(seconds)

    def run_until(self, cond: Callable[[], bool], within_s: float, *, step_s: float = 30.0, settle_s: float = 15.0,
                  what: str = "the condition") -> float:
        """Run the node until ``cond()`` holds; returns the node seconds it took. After ``within_s`` of node
        time, ``cond`` still gets ``settle_s`` real seconds (what is on its way to the platform)."""
        start = self.now_s()
        while True:
            if cond():
                return self.now_s() - start
            elapsed = self.now_s() - start
            if elapsed >= within_s:
                break
            self.run(min(step_s, within_s - elapsed))
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            if cond():
                return self.now_s() - start
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: {what} did not happen within {within_s:g} s of node time "
                             f"(+{settle_s:g} s real); console log: {self.console.log_path}")

    def stimulate(self, episode: str, duration_s: float | None = None, **params: float) -> None:
        self.note(f"stimulus {episode} duration={duration_s} {params}")
        self.link.stimulate(episode, duration_s, dict(params))

    def power_cycle(self, off_s: float = 2.0) -> None:
        self.note(f"power cycle, off {off_s:g} s")
        self.link.power_cycle(off_s)

    def radio_outage(self, seconds: float) -> None:
        self.note(f"radio outage {seconds:g} s")
        self.link.radio_outage(seconds)

    def install_update(self, blob: bytes, *, cut_power_at: int | None = None) -> str:
        self.note(f"install update ({len(blob)} bytes){' with a power cut' if cut_power_at else ''}")
        return self.link.install_update(blob, cut_power_at)

    def app_slot(self) -> dict[str, Any]:
        return self.link.app_slot()

    def node_config(self) -> dict[str, Any]:
        return self.link.node_config()

    def queue_depth(self) -> int:
        return self.link.queue_depth()

    # ------------------------------------------------------------------------------ the air and outputs
    @property
    def monitors_air(self) -> bool:
        return self.link.monitors_air

    def uplinks(self) -> list[Uplink]:
        return self.link.uplinks()

    def output_on(self, pin: str, *, since_s: float, question: str) -> bool:
        """Was output ``pin`` (sounder, loud stage) switched on at any time after node time ``since_s``?
        (On a bench: the operator's answer to ``question``.)"""
        levels = self.link.output_levels(pin)
        if levels is None:
            return self.link.ask(question)
        return any(lv for t, lv in levels if t / 1000.0 >= since_s)

    # ------------------------------------------------------------------------------ the platform's view
    def reports(self, kind: int | None = None) -> list[Row]:
        """What the platform stored from this node (readings; ``kind`` filters)."""
        return [r for r in self.platform.rows(self.device_id) if kind is None or r.kind == kind]

    def close(self) -> None:
        self.link.close()
        self.console.close()


def sim_dut(world: SimWorld, app: App, platform: Platform, logdir: Path) -> Dut:
    link = SimLink(world, app.name)
    console = Console(link.console_url, logdir / f"{app.name}.console.log", name=app.name)
    return Dut(app, link, console, platform)


def serial_dut(url: str, app: App, platform: Platform, logdir: Path, *, operator: Operator,
               power_cmd: str | None) -> Dut:
    console = Console(url, logdir / "board.console.log", name="board")
    link = SerialLink(url, operator=operator, power_cmd=power_cmd, console=lambda: console)
    return Dut(app, link, console, platform)


def read_board_config(url: str) -> dict[str, Any]:
    """The identity and configuration of a board on ``url`` (raw REPL), without its key."""
    from lifeline.provisioning.rawrepl import RawRepl

    with RawRepl.open(url) as repl:
        text = repl.exec("print(open('/config.json').read())").stdout
    return config_without_secret(text.strip())
