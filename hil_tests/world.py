"""The simulated side of a HIL bench (``--dut sim``): the nodes under test running the real firmware on the
fleet simulator, the virtual LoRa air, and the gateway's RAK3172 modem emulated on a real pty.

One thread runs one asyncio loop that owns everything here (the fleet, the air, the modem emulator, the
node consoles, the neighbours); tests call in through :meth:`SimWorld.call`, so the drills themselves are
plain synchronous code, like a bench script.

Time. The fleet's virtual clock never stops: when no test asks for more it follows the wall clock
(1 virtual second per real second), and :meth:`SimWorld.advance` fast-forwards it (sleep is free, so a
simulated day of a node takes seconds). While a node under test listens for a downlink from the real
gateway, the world holds real-time pace: the gateway (a real process on the real clock) answers 1050 ms
after the uplink (docs/radios.md 3.1) and the node's 1500 ms receive window has to be open in the same
time base. A window is held in real time only when an answer can come: the uplink asked for an ACK, or the
gateway has a platform command waiting (its ``commands_open`` metric); otherwise nothing would arrive and
the window passes in virtual time.

The node's side: :class:`HilFleet` boots each node as ``boot.py`` + ``main.py`` do on the device
(``bootsel.select``, then the factory app or the slot's ``main.py``), prints what an ESP32 prints on its
UART (the ROM reset line at every boot, tracebacks) plus one ``lifeline:`` summary line per wake, and
records the sounder outputs. :class:`BridgeEnd` replaces the fleet's built-in network answer for the
nodes under test: their receive windows hear only what the real gateway transmits through the emulated
modem onto the virtual air.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from greenlet import greenlet

from lifeline.firmware import bootsel, storage
from lifeline.firmware import node as fw_node
from lifeline.firmware.hal import sim
from lifeline.gateway.ingress.duty_cycle import DutyCycleTracker
from lifeline.protocols import frame, lora_phy
from lifeline.sim_devices import fleet as fleetmod
from lifeline.sim_devices.fleet import Fleet, GatewayEnd, NodeSpec, VirtualNode
from lifeline.sim_devices.links import NodeBrokerBridge, hook_receiver
from lifeline.sim_devices.lora_modem_emulator import Rak3172Emulator
from lifeline.sim_devices.provision import build_fleet
from lifeline.sim_devices.pty_cable import PtyCable

T = TypeVar("T")

RX_WINDOW_MS = 1500  # the firmware's AT+PRECV window after each LoRa uplink (firmware/radios/lora_at.py)
SYNC_STEP_MS = 5  # granularity of a node's wait inside a real-time window
TURNAROUND_MS = 500  # at most this long for the gateway modem to listen again after it transmitted
MODEM_NAME = "gw-modem"
OUTPUT_PINS = ("buzzer", "buzzer_loud")
# ESP32 ROM reset reasons (ESP-IDF rtc_cntl reset codes) for schema.RESET_CAUSES
ROM_RESET = {0: "0x1 (POWERON_RESET)", 1: "0x1 (POWERON_RESET)", 2: "0x7 (TG0WDT_SYS_RESET)",
             3: "0x5 (DEEPSLEEP_RESET)", 4: "0xc (SW_CPU_RESET)", 5: "0xf (RTCWDT_BROWN_OUT_RESET)",
             6: "0xc (SW_CPU_RESET)", 7: "0x10 (RTCWDT_RTC_RESET)"}


def rom_boot_line(cause: int) -> str:
    return (f"ets Jul 29 2019 12:21:46\r\n\r\nrst:{ROM_RESET.get(cause, ROM_RESET[7])},"
            "boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")


class WorldError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ consoles


class ConsolePty:
    """The board's UART: a pty whose stable path the test side opens like /dev/ttyUSB0 (the simulator's
    ``PtyCable``), written from the world's loop without blocking. What the host types is dropped: the
    simulated board runs its app, not a REPL."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: Path) -> None:
        self.path = path
        self._cable = PtyCable(path, self._keystrokes)
        self._cable.plug(loop)

    def _keystrokes(self, data: bytes) -> None:
        return None

    def write(self, text: str) -> None:
        self._cable.write(text.encode("utf-8", "replace"))

    def close(self) -> None:
        self._cable.unplug()


# ------------------------------------------------------------------------------------------------ fleet


@dataclass(slots=True)
class NodeLog:
    """What the harness saw of one node under test."""

    wakes: int = 0
    boots: list[tuple[float, int]] = field(default_factory=list)  # (virtual ms, reset cause)
    crashes: list[tuple[float, str]] = field(default_factory=list)
    outputs: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # pin -> [(virtual ms, level)]
    slots: list[tuple[float, str]] = field(default_factory=list)  # app slot run at each boot


class HilFleet(Fleet):
    """The fleet engine with the device's boot sequence and a UART per node under test."""

    def __init__(self, world: SimWorld, **kw: Any) -> None:
        super().__init__(**kw)
        self.world = world
        self.logs: dict[str, NodeLog] = {}

    def _run_wake(self, v: VirtualNode) -> tuple[str, int, int]:  # runs in the node's greenlet
        log = self.logs.get(v.name)
        if log is None:  # a neighbour: the fleet's own wake
            return super()._run_wake(v)
        con = self.world.consoles.get(v.name)
        hal = v.hal
        log.wakes += 1
        if hal.wake_reason() == "power" or hal.reset_cause() != 3:
            log.boots.append((self.now_ms, hal.reset_cause()))
        if con is not None:
            con.write(rom_boot_line(hal.reset_cause()))
        pins = {name: hal.pin(name, True) for name in OUTPUT_PINS}
        for p in pins.values():
            p.log = []
        try:
            slot = bootsel.select(hal.fs)  # boot.py
            log.slots.append((self.now_ms, slot or "factory"))
            node, ms = self._main(v, slot)  # main.py
            v.last_node = node
            result = ("reset", 0, 4) if node is not None and node.reboot else ("sleep", ms, 3)
        except sim.Reset as e:
            result = ("reset", 0, int(e.cause))
        except sim.PowerCut:
            result = ("power_loss", 1000, 0)
        except Exception as e:  # main.py prints the exception and sleeps 10 s
            v.crashes += 1
            log.crashes.append((self.now_ms, f"{type(e).__name__}: {e}"))
            if con is not None:
                con.write(f"Traceback (most recent call last):\r\n  File \"main.py\", line 1, in <module>\r\n"
                          f"{type(e).__name__}: {e}\r\n")
            result = ("sleep", fleetmod.CRASH_SLEEP_MS, 3)
        for name, p in pins.items():
            if p.log:
                log.outputs.setdefault(name, []).extend(p.log)
        if con is not None and result[0] == "sleep":
            n = v.last_node
            con.write(f"lifeline: wake={log.wakes} reason={hal.wake_reason()} tx={len(n.tx) if n else 0} "
                      f"acked={len(n.acked) if n else 0} downlinks={n.downlinks if n else 0} "
                      f"sleep_ms={result[1]}\r\n")
        return result

    def lora_uplink(self, v: VirtualNode, payload: bytes, params: dict[str, int]) -> Any:
        if v.name in self.world.duts and len(payload) > 2 and (
                payload[2] & frame.FLAG_ACK_REQ or self.world.listen_always or self.world._commands_pending()):
            self.world.wait_gateway_transmitter(v, params)
        return super().lora_uplink(v, payload, params)

    def _main(self, v: VirtualNode, slot: str) -> tuple[fw_node.Node | None, int]:
        if slot == bootsel.FACTORY:
            n = fw_node.Node(v.hal)
            return n, n.wake()
        code = storage.read(v.hal.fs, slot + "/main.py")
        if code is None:
            raise ImportError(f"no module named 'main' in {slot}")
        env: dict[str, Any] = {"hal": v.hal, "__name__": "__main__"}
        exec(compile(code, slot + "/main.py", "exec"), env)  # the app bundle's entry (sim build)
        node = env.get("node_obj")
        return (node if isinstance(node, fw_node.Node) else None), int(env["sleep_ms"])


class BridgeEnd(GatewayEnd):
    """The network's answer in a node's receive window. Nodes under test hear only the real gateway (through
    the emulated modem and the virtual air); other LoRa nodes keep the fleet's built-in answer."""

    def __init__(self, world: SimWorld, fleet: Fleet) -> None:
        super().__init__(fleet)
        self.world = world

    def answer(self, data: bytes) -> bytes | None:
        v = self.fleet.by_dev.get(bytes(data[3:11])) if len(data) >= 11 else None
        if v is None or v.name not in self.world.duts:
            return super().answer(data)
        return self.world.listen_for_downlink(v, data)


# ------------------------------------------------------------------------------------------------ world


@dataclass(frozen=True, slots=True)
class Uplink:
    """One frame a node under test put on the air, as a monitor receiver beside it saw it."""

    t_s: float  # virtual seconds since the world's origin
    wall_ms: int  # wall-clock time when the transmission ended (for latency to the platform)
    fcnt: int
    kind: int
    flags: int
    fields: dict[int, Any]
    heard: bool  # the gateway's modem received it
    valid: bool  # verifies with the node's registered key


class SimWorld:
    def __init__(self, workdir: Path, *, seed: int = 1, origin_unix_s: float | None = None, modem: bool = True) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        origin = float(int(time.time())) if origin_unix_s is None else origin_unix_s
        self.fleet = HilFleet(self, seed=seed, origin_unix_s=origin, record_frames=True)
        self.fleet.gateway_end = BridgeEnd(self, self.fleet)
        self.modem_path = self.workdir / "ttyLORA0"
        self.modem: Rak3172Emulator | None = None
        self._want_modem = modem
        self.duts: set[str] = set()
        self.consoles: dict[str, ConsolePty] = {}
        self.tx_wall: dict[tuple[bytes, int], int] = {}
        self.counters: Counter[str] = Counter()
        self.metrics_url: Callable[[], str | None] = lambda: None  # set by the bench: the gateway's metrics
        self.listen_always = False  # hold every receive window in real time (slow; for debugging)
        self.neighbours: list[Neighbours] = []
        self._bridges: list[NodeBrokerBridge] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping = False
        self._driver: asyncio.Task[None] | None = None
        self._ff_target: float | None = None
        self._ff_waiters: list[tuple[float, asyncio.Future[None]]] = []
        self._holds = 0
        self._cmd_cache: tuple[float, bool] = (0.0, False)
        self.driver_error: BaseException | None = None
        self.gateway_duty = DutyCycleTracker(lora_phy.region("EU868"))  # the gateway's ledger, wall ms
        self._gateway_tx_end = (float("-inf"), float("-inf"))  # (wall ms, virtual ms) of its last transmission
        self.fleet.on_frame.append(self._on_frame)

    # ------------------------------------------------------------------------------ thread plumbing
    def start(self) -> SimWorld:
        self._thread = threading.Thread(target=self._run, name="hil-world", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise WorldError("the simulated world did not start")
        if self.driver_error is not None:
            raise WorldError(f"the simulated world failed to start: {self.driver_error!r}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        try:
            if self._want_modem:
                self.modem = Rak3172Emulator(self.fleet.air, MODEM_NAME, self.modem_path, work_mode=0)
                await self.modem.start()
                hook_receiver(self.fleet, self.modem.radio)
                self._watch_gateway_transmitter(self.modem.radio)
            self._driver = asyncio.get_running_loop().create_task(self._drive())
        except BaseException as e:
            self.driver_error = e
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()

    def call(self, fn: Callable[[], T], timeout_s: float = 60.0) -> T:
        """Run ``fn`` on the world's thread (between fleet events) and return its result."""
        if self._loop is None:
            raise WorldError("world not started")
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[T] = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout_s)

    def run_coro(self, coro: Awaitable[T], timeout_s: float | None = None) -> T:
        if self._loop is None:
            raise WorldError("world not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            self._stopping = True
            for nb in self.neighbours:
                await nb.stop()
            if self._driver is not None:
                self._driver.cancel()
                with contextlib.suppress(BaseException):
                    await self._driver
            if self.modem is not None:
                await self.modem.stop()
            for con in self.consoles.values():
                con.close()
            for bridge in self._bridges:
                bridge.stop()
            self._stopped.set()

        with contextlib.suppress(Exception):
            self.run_coro(shutdown(), 30)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = None

    # ------------------------------------------------------------------------------ nodes
    def add_nodes(self, specs: Sequence[NodeSpec], *, technician_key: Ed25519PrivateKey | None,
                  wrong_key: Sequence[str] = (), under_test: bool = True) -> list[dict[str, Any]]:
        """Provision and place nodes (provisioning's own config and record builders); returns the records."""

        def add() -> list[dict[str, Any]]:
            records = build_fleet(list(specs), self.fleet, technician_key=technician_key, wrong_key=wrong_key)
            if under_test:
                for s in specs:
                    self._attach(s.name)
            return records

        return self.call(add)

    def add_provisioned(self, spec: NodeSpec, config: dict[str, Any],
                        flash: dict[str, bytes] | None = None) -> VirtualNode:
        """A node whose flash came from a real provisioning run: /config.json (identity and key) and the
        state the self-test left (frame counter reservation, ...). Code files are not copied: the simulator
        runs the same firmware from source."""

        def add() -> VirtualNode:
            dev = bytes.fromhex(config["device_id"])
            root = bytes.fromhex(config["root_key"])
            v = VirtualNode(self.fleet, len(self.fleet.nodes), spec, dev, root, dict(config))
            for path, data in (flash or {}).items():
                if not path.endswith((".mpy", ".py")):
                    v.hal.fs.files[path] = bytes(data)
            self.fleet.add(v)
            self.fleet.gateway_end.register(dev, frame.derive_keys(root, dev))
            self._attach(spec.name)
            return v

        return self.call(add)

    def _attach(self, name: str) -> None:
        assert self._loop is not None
        self.duts.add(name)
        self.fleet.logs[name] = NodeLog()
        self.consoles[name] = ConsolePty(self._loop, self.workdir / f"console-{name}")

    def connect_nbiot(self, broker: tuple[str, int]) -> None:
        """NB-IoT nodes of this world publish to the real node broker (as their modems would)."""

        def go() -> None:
            bridge = NodeBrokerBridge(*broker, client_id="hil-world-nbiot").start()
            self._bridges.append(bridge)
            self.fleet.nbiot_delivery = bridge.publish

        self.call(go)

    def node(self, name: str) -> VirtualNode:
        return self.fleet.by_name[name]

    def power_on(self, names: Sequence[str] | None = None, within_ms: float = 1000.0) -> None:
        """First power-up of the given nodes (all by default), spread over ``within_ms``."""

        def go() -> None:
            for i, n in enumerate(names if names is not None else [v.name for v in self.fleet.nodes]):
                v = self.fleet.by_name[n]
                t = self.fleet.now_ms + (within_ms * i / max(1, len(self.fleet.nodes)))
                self.fleet.at(t, lambda _, v=v: self.fleet.reset_node(v, 0))

        self.call(go)

    # ------------------------------------------------------------------------------ time
    @property
    def now_s(self) -> float:
        return self.fleet.now_ms / 1000.0

    def advance(self, seconds: float, timeout_s: float | None = None) -> None:
        """Fast-forward the world by ``seconds`` of virtual time (returns when done)."""
        # the drill may have queued a platform command since the gateway was last asked: a stale "none
        # open" (cached for 0.2 s) let the next wake's receive window pass in virtual time, and the command
        # went out into a window nobody listened to (drill 10 failed so now and then)
        self._cmd_cache = (0.0, False)

        async def go() -> None:
            assert self._loop is not None
            target = self.fleet.clock.now() + seconds * 1000.0  # absolute clock ms: no origin round-off
            fut: asyncio.Future[None] = self._loop.create_future()
            self._ff_waiters.append((target, fut))
            self._ff_target = max(self._ff_target or 0.0, target)
            await fut

        self.run_coro(go(), timeout_s)
        if self.driver_error is not None:
            raise WorldError(f"simulation failed: {self.driver_error!r}") from self.driver_error

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        fleet = self.fleet
        anchor_w, anchor_v = loop.time(), fleet.now_ms
        last_yield = loop.time()
        try:
            while not self._stopping:
                ff = self._ff_target  # absolute clock ms
                if ff is not None and self._holds == 0 and fleet.clock.now() < ff:
                    nxt = fleet.next_time_ms()
                    if nxt is not None and fleet.origin_ms + nxt <= ff:
                        fleet.step()
                    else:
                        fleet.clock.advance_to(ff)
                    anchor_w, anchor_v = loop.time(), fleet.now_ms
                    if loop.time() - last_yield > 0.005:
                        await asyncio.sleep(0)
                        last_yield = loop.time()
                    continue
                if self._ff_waiters and self._holds == 0:
                    done = [w for w in self._ff_waiters if fleet.clock.now() >= w[0]]
                    for w in done:
                        self._ff_waiters.remove(w)
                        if not w[1].done():
                            w[1].set_result(None)
                    if not self._ff_waiters:
                        self._ff_target = None
                    anchor_w, anchor_v = loop.time(), fleet.now_ms
                # real-time pace
                v_now = anchor_v + (loop.time() - anchor_w) * 1000.0
                nxt = fleet.next_time_ms()
                if nxt is not None and nxt <= v_now:
                    fleet.step()
                    if loop.time() - last_yield > 0.005:
                        await asyncio.sleep(0)
                        last_yield = loop.time()
                    continue
                if v_now > fleet.now_ms:
                    fleet.clock.advance_to(fleet.origin_ms + v_now)
                wait = 0.01 if nxt is None else min(0.01, (nxt - v_now) / 1000.0)
                await asyncio.sleep(max(wait, 0.0005))
                last_yield = loop.time()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # surface to the test thread instead of dying silently
            self.driver_error = e
            for _, fut in self._ff_waiters:
                if not fut.done():
                    fut.set_exception(WorldError(f"simulation failed: {e!r}"))
            raise

    # ------------------------------------------------------------------------------ radio windows
    def _watch_gateway_transmitter(self, radio: Any) -> None:
        """Mirror the gateway's duty-cycle ledger (wall clock) from what its modem transmits."""
        original = radio.transmit

        def transmit(payload: bytes, params: Any, power_dbm: float | None = None) -> Any:
            tx = original(payload, params, power_dbm)
            wall = time.time() * 1000.0
            self.gateway_duty.record(params.freq_hz, params.bw_khz, wall, tx.toa_ms)
            self._gateway_tx_end = (wall + tx.toa_ms, tx.end_ms)
            self.counters["gateway_transmissions"] += 1
            return tx

        radio.transmit = transmit

    def wait_gateway_transmitter(self, v: VirtualNode, params: dict[str, int]) -> None:
        """Inside a node's wake, before an uplink that wants an answer: fast-forwarding compresses the minutes
        between two reports, but the gateway's duty-cycle budget runs on the wall clock. Give back the time
        the fast-forward took away since the gateway last transmitted, as far as the gateway needs it to be
        allowed to answer; frames that are back to back in node time get no such help (the real gateway
        would refuse their answers just the same)."""
        fleet = self.fleet
        if v.glet is None or greenlet.getcurrent() is not v.glet:
            return
        fleet.sync(v, v.clock.ms)
        wall_now = time.time() * 1000.0
        answer_at = wall_now + 900.0  # the answer starts ~1050 ms after the uplink ends
        need = self.gateway_duty.wait_ms(params["freq"], params["bw"], answer_at)
        end_wall, end_virtual = self._gateway_tx_end
        compressed = (fleet.clock.now() - end_virtual) - (wall_now - end_wall)
        need = min(need, compressed)
        if need <= 0:
            return
        self.counters["duty_cycle_waits"] += 1
        end = time.time() * 1000.0 + need + 150.0
        self._holds += 1
        try:
            while time.time() * 1000.0 < end:
                fleet.sync(v, fleet.now_ms + 20)
        finally:
            self._holds -= 1
        v.clock.ms = max(v.clock.ms, int(fleet.now_ms))

    def _commands_pending(self) -> bool:
        now = time.monotonic()
        t, value = self._cmd_cache
        if now - t < 0.2:
            return value
        url = self.metrics_url()
        value = False
        if url:
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    for line in resp.read().decode().splitlines():
                        if line.startswith("lifeline_gateway_commands_open "):
                            value = float(line.split()[1]) > 0
            except OSError:
                value = False
        self._cmd_cache = (now, value)
        return value

    def listen_for_downlink(self, v: VirtualNode, uplink: bytes) -> bytes | None:
        """Inside a node's wake (its greenlet): keep the receive window open on the virtual air, in real
        time, and return the first frame the gateway's modem transmits in it (or None)."""
        fleet = self.fleet
        if v.glet is None or greenlet.getcurrent() is not v.glet:
            return None
        if not (uplink[2] & frame.FLAG_ACK_REQ or self.listen_always or self._commands_pending()):
            self.counters["windows_virtual"] += 1
            return None
        assert self.modem is not None and v.lora_params is not None
        radio = fleet.air.radios[v.radio_name]
        got: list[Any] = []
        modem_name = self.modem.name

        def on_delivery(d: Any) -> None:
            if d.ok and d.tx.sender == modem_name:
                got.append(d)

        previous = radio.on_delivery
        radio.on_delivery = on_delivery
        start = fleet.clock.now()
        radio.listen(v.lora_params.downlink(), start, start + RX_WINDOW_MS)
        self._holds += 1
        self.counters["windows_real_time"] += 1
        try:
            end = fleet.now_ms + RX_WINDOW_MS
            while not got and fleet.now_ms < end:
                fleet.sync(v, min(end, fleet.now_ms + SYNC_STEP_MS))
            # the gateway's modem turns back to receive after its transmission (TXP2P DONE, then
            # AT+PRECV): that takes real milliseconds, which compressed time must not skip
            turnaround = fleet.now_ms + TURNAROUND_MS
            while got and self.modem.rx_mode == 0 and fleet.now_ms < turnaround:
                fleet.sync(v, fleet.now_ms + SYNC_STEP_MS)
            v.clock.ms = max(v.clock.ms, int(fleet.now_ms))
        finally:
            self._holds -= 1
            radio.on_delivery = previous
            radio.stop_listening()
        if not got:
            self.counters["windows_empty"] += 1
            return None
        self.counters["downlinks_heard"] += 1
        return bytes(got[0].tx.payload)

    # ------------------------------------------------------------------------------ monitor
    def _on_frame(self, v: VirtualNode, payload: bytes, radio: str) -> None:
        if v.name in self.duts and len(payload) >= 15:
            self.tx_wall[(v.dev_id, int.from_bytes(payload[11:15], "big"))] = time.time_ns() // 1_000_000

    def uplinks(self, name: str) -> list[Uplink]:
        """Every frame node ``name`` transmitted, decoded with its registered key (as a monitor receiver
        next to the node would log them)."""

        def collect() -> list[Uplink]:
            v = self.fleet.by_name[name]
            keys = self.fleet.gateway_end.registered.get(v.dev_id)
            out = []
            for f in self.fleet.frames:
                if f.node != name or len(f.payload) < 15:
                    continue
                fcnt = int.from_bytes(f.payload[11:15], "big")
                wall = self.tx_wall.get((v.dev_id, fcnt), 0)
                try:
                    if keys is None:
                        raise frame.FrameError("unknown_device", "")
                    fr = frame.decode(f.payload, keys)
                    out.append(Uplink(f.t_ms / 1000.0, wall, fr.header.fcnt, fr.header.kind, fr.header.flags,
                                      dict(fr.fields), f.heard, not f.corrupted))
                except frame.FrameError:
                    out.append(Uplink(f.t_ms / 1000.0, wall, fcnt, f.payload[1], f.payload[2], {}, f.heard, False))
            return out

        return self.call(collect)

    def raw_frames(self, name: str) -> list[bytes]:
        return self.call(lambda: [f.payload for f in self.fleet.frames if f.node == name])

    def log(self, name: str) -> NodeLog:
        return self.fleet.logs[name]


# ------------------------------------------------------------------------------------------------ neighbours


class Neighbours:
    """Simulated NB-IoT nodes around the gateway (the fleet simulator's nodes, real firmware) publishing to
    the node broker: load for the drills. Run on the world's loop, paced at ``speed`` x real time."""

    def __init__(self, world: SimWorld, specs: Sequence[NodeSpec], *, broker: tuple[str, int], seed: int,
                 technician_key: Ed25519PrivateKey | None, speed: float) -> None:
        self.world = world
        self.speed = speed
        self.fleet = Fleet(seed=seed, origin_unix_s=world.fleet.origin_ms / 1000.0, record_frames=True)
        self.records = build_fleet(list(specs), self.fleet, technician_key=technician_key)
        self.bridge = NodeBrokerBridge(*broker, client_id=f"hil-neighbours-{seed}")
        self._task: asyncio.Task[float] | None = None

    def start(self) -> None:
        from lifeline.sim_devices import runner

        def go() -> None:
            self.bridge.start()
            self.fleet.nbiot_delivery = self.bridge.publish
            self.fleet.start()
            self._task = asyncio.get_running_loop().create_task(
                runner.run(self.fleet, 10 * 365 * 86400.0, speed=self.speed, cooperative=True))

        self.world.neighbours.append(self)
        self.world.call(go)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
            self.bridge.stop()

    def pause(self) -> None:
        self.world.run_coro(self.stop(), 30)

    def published(self) -> set[tuple[bytes, int]]:
        """(device, fcnt) of every frame handed to the node broker."""
        return self.world.call(lambda: {(f.payload[3:11], int.from_bytes(f.payload[11:15], "big"))
                                        for f in self.fleet.frames if f.heard and len(f.payload) >= 15})

    def count(self) -> int:
        return self.world.call(lambda: sum(1 for f in self.fleet.frames if f.heard))
