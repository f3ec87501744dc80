"""The fleet simulator's engine: N virtual nodes running the real firmware in virtual time.

Every node is the firmware's own life cycle (``lifeline.firmware.node.Node``) on the simulator's HAL
(``firmware/hal/sim.py``) with the chip models of ``firmware/hal/sim_chips.py``; nothing here decides
what a node sends. What this module adds:

* **Provisioning.** Each node's ``/config.json`` comes from the provisioning module's
  ``nodeconfig.node_config`` and its registry record from ``records.build`` (+ ``records.sign``), so the
  gateway imports the same records file a deployment would. Simulated identities and root keys are
  derived from the seed (reproducible; never use them for a real device).
* **Physics.** ``sim_devices/physics`` models are the HAL's sample providers; the battery is charged
  with each wake's awake time and time on air.
* **Virtual time.** One event queue (a heap of (time, seq)) over the virtual air's
  :class:`~lifeline.sim_devices.air.VirtualClock`. A node wake is an event; inside a wake the firmware
  runs on the node's own :class:`~lifeline.firmware.hal.sim.SimClock` and may run ahead of the fleet,
  except at the points where it touches the shared world (a LoRa transmission, the end of its time on
  air, an NB-IoT publish, a BLE burst). There the wake, which runs in its own greenlet, hands control
  back to the queue and is resumed when the fleet's time has caught up. So transmissions enter the air
  in time order and a node learns whether its uplink collided before it opens its receive window.
* **The gateway end of the receive window.** Nodes wait for an ACK in their receive window. The
  simulator answers it with :class:`GatewayEnd`: an ACK for an ACK_REQ uplink whose MIC verifies with the
  registered key and whose counter is new, if at least one gateway receiver got the uplink (collisions,
  sensitivity and half duplex judged by the air model), plus an optional ``time_sync`` at first contact.
  This keeps runs deterministic and fast at any speed. (The real gateway, when attached, also answers:
  its downlinks go out through the emulated modem/forwarder onto the air, but virtual nodes do not
  listen to the air for them.)
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from greenlet import greenlet

from lifeline.firmware import node as fw_node
from lifeline.firmware.hal import sim, sim_chips
from lifeline.firmware.radios import airtime as fw_airtime
from lifeline.gateway.clock import EPOCH_UNIX
from lifeline.protocols import fastpath, frame, schema, suites
from lifeline.sim_devices.air import AirChannel, LoraParams, VirtualClock
from lifeline.sim_devices.nbiot_net import NbiotNetwork
from lifeline.sim_devices.physics import environment, manhole, meter, smoke, water
from lifeline.sim_devices.physics.base import Model, derive_seed

# firmware kind name -> schema report kind name
KIND_NAMES = {"smoke": "smoke", "tilt": "manhole_tilt", "water_level": "water_level",
              "water_meter": "water_meter", "gas_meter": "gas_meter", "electricity_meter": "electricity_meter"}
RADIOS = ("lora-serial", "lora-udp", "nbiot", "ble")
ESPRESSIF_OUI = bytes.fromhex("240ac4")
LORA_CHANNEL = 869_525_000  # the gateway modem's P2P channel (docs/radios.md 3.2)
UDP_CHANNELS = (868_100_000, 868_300_000, 868_500_000)  # concentrator-only channels
CRASH_SLEEP_MS = 10_000  # firmware/main.py: after an exception the node sleeps 10 s


def device_identity(seed: int, index: int) -> tuple[bytes, bytes]:
    """(EUI-64 device id, root key) of simulated node ``index``: an Espressif MAC made EUI-64 (FF FE in
    the middle, as provisioning/identity.py does) and a root key derived from the seed."""
    mac = ESPRESSIF_OUI + derive_seed(seed, "mac", index).to_bytes(8, "big")[:3]
    dev = mac[:3] + b"\xff\xfe" + mac[3:]
    root = hashlib.blake2b(f"lifeline-sim-root:{seed}:{index}".encode(), digest_size=32).digest()
    return dev, root


@dataclass(slots=True)
class NodeSpec:
    """One node of a fleet as the scenario describes it."""

    name: str
    kind: str  # firmware kind: smoke, tilt, water_level, water_meter, gas_meter, electricity_meter
    radio: str  # lora-serial | lora-udp | nbiot | ble
    x_m: float = 0.0
    y_m: float = 0.0
    interval_s: int = 300
    heartbeat_s: int = 86400
    address: str = ""
    unit: str = ""
    tags: tuple[str, ...] = ()
    model: dict[str, float] = field(default_factory=dict)  # physics model parameters
    config: dict[str, Any] = field(default_factory=dict)  # extra /config.json keys
    ble_extended: bool = False
    suite: str = "intl"  # the node's frame crypto suite (intl | sm), written into its config at provisioning


@dataclass(slots=True)
class SentFrame:
    t_ms: float  # virtual time since the origin when it left the node
    node: str
    payload: bytes
    radio: str
    heard: bool  # reached at least one gateway receiver (LoRa/BLE) or the node broker (NB-IoT)
    corrupted: bool = False  # what went on the air differs from what the node sent (corrupt fault)


class FleetHal(sim.SimHal):
    """The sim HAL with an RTC that can drift (``drift_ppm``) and a BLE radio the fleet sees."""

    def __init__(self, vnode: VirtualNode, **kw: Any) -> None:
        super().__init__(**kw)
        self.vnode = vnode
        self.drift_ppm = 0.0

    def time(self) -> int:  # type: ignore[override]
        if self.rtc_base is None:
            self.rtc_base = 0
            self._rtc_at = self.clock.ms
        el = self.clock.ms - self._rtc_at
        if self.drift_ppm:
            el = int(el * (1.0 + self.drift_ppm * 1e-6))
        return int(self.rtc_base + el // 1000)

    def ble(self) -> Any:
        if self._ble is None:
            self._ble = FleetBle(self)
        return self._ble


class FleetBle(sim.SimBle):
    """The node's BLE controller: a burst of advertisements is one frame for the fleet's BLE link."""

    def __init__(self, hal: FleetHal) -> None:
        super().__init__(hal)
        self._burst: list[bytes] = []

    def advertise(self, adv: bytes, rsp: bytes, interval_ms: int, connectable: bool) -> None:
        self.advertising = True
        self._burst.append(bytes(adv))

    def stop(self) -> None:
        self.advertising = False
        burst, self._burst = self._burst, []
        if not burst:
            return
        from lifeline.firmware.radios import ble as fw_ble

        data = fw_ble.reassemble(list(dict.fromkeys(burst)))
        if data is None:
            return
        hal = self._hal
        assert isinstance(hal, FleetHal)
        down = hal.vnode.fleet.ble_uplink(hal.vnode, data)
        if down is not None and self._on_write is not None:
            self._on_write(fw_ble.CHAR_DOWNLINK, down)


class NodeAir:
    """What the node's RAK3172 model transmits into (``sim_chips.Rak3172.air``)."""

    def __init__(self, vnode: VirtualNode) -> None:
        self.vnode = vnode

    def uplink(self, hal: Any, payload: bytes, params: dict[str, int]) -> Any:
        return self.vnode.fleet.lora_uplink(self.vnode, payload, params)

    def poll(self, hal: Any, dev_id: bytes) -> None:
        return None


class VirtualNode:
    def __init__(self, fleet: Fleet, index: int, spec: NodeSpec, dev_id: bytes, root_key: bytes,
                 config: dict[str, Any]) -> None:
        self.fleet = fleet
        self.index = index
        self.spec = spec
        self.name = spec.name
        self.dev_id = dev_id
        self.root_key = root_key
        self.config = config
        self.keys = frame.derive_keys(root_key, dev_id, suites.suite_id(config.get("suite", "intl")))
        self.models: list[Model] = []
        self.lis3dh: sim_chips.Lis3dh | None = None
        self.clock = sim.SimClock(0)
        origin_s = fleet.origin_ms / 1000.0
        seed = fleet.seed
        temp = environment.Temperature(origin_s, *((21.0, 1.5) if spec.kind == "smoke" else (12.0, 6.0)))
        self.battery = environment.Battery(seed, spec.name, origin_s, temperature=temp,
                                           used_fraction=float(spec.model.get("battery_used", 0.0)))
        providers: dict[str, Any] = {"test_button": lambda hal, t: 0}
        i2c: dict[int, Any] = {}
        uarts: dict[str, Any] = {}
        pulses: dict[str, Any] = {}
        m = {k: v for k, v in spec.model.items() if k != "battery_used"}
        self.model: Model
        if spec.kind == "smoke":
            sm = smoke.SmokeChamber(seed, spec.name, origin_s)
            providers["smoke_adc"] = sm.adc
            providers["test_button"] = sm.button
            self.model = sm
        elif spec.kind == "tilt":
            mh = manhole.ManholeCover(seed, spec.name, origin_s, **m)
            self.lis3dh = sim_chips.Lis3dh(mh.accel)
            i2c[0x18] = self.lis3dh
            self.model = mh
        elif spec.kind == "water_level":
            wc = water.WaterChannel(seed, spec.name, origin_s, **m)
            uarts["ranger"] = sim_chips.A02yyuw(wc.distance)
            self.model = wc
        elif spec.kind in ("water_meter", "gas_meter"):
            pm = meter.PulseMeter(seed, spec.name, origin_s, **m)
            pulses["meter"] = pm.pulses
            providers["meter_tamper"] = pm.tamper_pin
            self.model = pm
        elif spec.kind == "electricity_meter":
            el = meter.ElectricityLoad(seed, spec.name, origin_s, **m)
            uarts["rs485"] = sim_chips.Sdm120(el.registers)
            self.model = el
        else:
            raise ValueError(f"{spec.name}: unknown kind {spec.kind!r}")
        self.air = NodeAir(self)
        self.modem = sim_chips.Rak3172(self.air, _airtime)
        self.modem.dev_id = dev_id
        uarts["lora"] = self.modem
        self.hal = FleetHal(self, clock=self.clock, providers=providers, i2c_devices=i2c, uart_devices=uarts,
                            pulse_providers=pulses, net=fleet.nbiot, battery_mv=self.battery.millivolts)
        fs = self.hal.fs
        import json

        f = fs.open("/config.json", "wb")
        f.write(json.dumps(config).encode())
        f.close()
        self.lora_params: LoraParams | None = None
        lo = config.get("lora", {})
        if spec.radio.startswith("lora"):
            self.lora_params = LoraParams(lo.get("freq", LORA_CHANNEL), lo.get("sf", 9), lo.get("bw", 125),
                                          lo.get("cr", 0) + 1, lo.get("preamble", 8))
        self.radio_name = f"node-{spec.name}"
        # run state
        self.token = 0
        self.glet: greenlet | None = None
        self.awake = False
        self.wake_start = 0
        self.next_cause = 0  # power on
        self.next_reason = "power"
        self.radio_lost = False
        self.corrupt_p = 0.0
        self.duplicate_via: str | None = None
        self.wakes = 0
        self.crashes = 0
        self.resets: list[tuple[float, int]] = []  # (virtual ms, reset cause) injected by faults
        self.last_node: fw_node.Node | None = None


def kind_name_of(payload: bytes) -> str:
    k = schema.KINDS.get(payload[1]) if len(payload) > 1 else None
    return str(k[0]) if k is not None else "unknown"


def _airtime(n: int, params: dict[str, int]) -> int:
    return int(fw_airtime.time_on_air_ms(n, params["sf"], params["bw"], params["cr"] + 1, params["preamble"]))


class GatewayEnd:
    """The network's answer in a node's receive window (see the module docstring)."""

    def __init__(self, fleet: Fleet, *, time_sync: bool = False) -> None:
        self.fleet = fleet
        self.time_sync = time_sync
        self.down_fcnt: dict[bytes, int] = {}
        self.last_up: dict[bytes, int] = {}
        self.synced: set[bytes] = set()
        self.registered: dict[bytes, frame.Keys] = {}
        self.pending: dict[bytes, list[tuple[int, dict[int, int]]]] = {}
        self.counters: Counter[str] = Counter()

    def register(self, dev_id: bytes, keys: frame.Keys) -> None:
        self.registered[dev_id] = keys

    def queue(self, dev_id: bytes, kind: int, fields: dict[int, int]) -> None:
        self.pending.setdefault(dev_id, []).append((kind, fields))

    def _encode(self, dev_id: bytes, keys: frame.Keys, kind: int, fields: dict[int, int]) -> bytes:
        n = self.down_fcnt.get(dev_id, 0) + 1
        self.down_fcnt[dev_id] = n
        return frame.encode(keys, dev_id, n, self.fleet.lifeline_time(), kind, fields, frame.FLAG_DOWN)

    def answer(self, data: bytes) -> bytes | None:
        """The downlink for an uplink the gateway received, or None."""
        if len(data) < frame.HEADER_LEN + frame.MIC_LEN:
            return None
        dev_id = data[3:11]
        keys = self.registered.get(dev_id)
        if keys is None:
            return None
        mic = hmac.new(keys.mic_up, data[:-frame.MIC_LEN], "sha256").digest()[:frame.MIC_LEN]
        if not hmac.compare_digest(mic, data[-frame.MIC_LEN:]):
            self.counters["bad_mic"] += 1
            return None
        fcnt = int.from_bytes(data[11:15], "big")
        if fcnt <= self.last_up.get(dev_id, -1):
            self.counters["replay"] += 1
            return None
        self.last_up[dev_id] = fcnt
        flags = data[2]
        if flags & frame.FLAG_ACK_REQ:
            fields: dict[int, int] = {1: fcnt}
            if data[1] in (schema.K_ALARM_RAISED, schema.K_ALARM_CLEARED):
                try:
                    body = fastpath.decode(data, keys).fields
                    fields[2] = int(body[1])  # type: ignore[arg-type]
                    fields[3] = 0
                except frame.FrameError:
                    pass
            self.counters["ack"] += 1
            return self._encode(dev_id, keys, schema.C_ACK, fields)
        pend = self.pending.get(dev_id)
        if pend:
            kind, f = pend.pop(0)
            self.counters["command"] += 1
            return self._encode(dev_id, keys, kind, f)
        if self.time_sync and dev_id not in self.synced:
            self.synced.add(dev_id)
            self.counters["time_sync"] += 1
            return self._encode(dev_id, keys, schema.C_TIME_SYNC, {1: self.fleet.lifeline_time()})
        return None


class Fleet:
    """Nodes, the virtual air and the event queue. ``links`` are the receivers/bridges (sim_devices.links)."""

    def __init__(self, *, seed: int = 1, origin_unix_s: float = 1_767_225_600.0, time_sync: bool = False,
                 record_frames: bool = False) -> None:
        self.seed = seed
        self.origin_ms = origin_unix_s * 1000.0
        self.clock = VirtualClock(self.origin_ms)
        self.air = AirChannel(self.clock, seed=seed, record=False, region="EU868")
        self.gateway_end = GatewayEnd(self, time_sync=time_sync)
        self.nodes: list[VirtualNode] = []
        self.by_name: dict[str, VirtualNode] = {}
        self.by_dev: dict[bytes, VirtualNode] = {}
        self._heap: list[tuple[float, int, Callable[..., None], Any]] = []
        self._seq = 0
        self.record_frames = record_frames
        self.frames: list[SentFrame] = []
        self.digest = hashlib.sha256()
        self.counters: Counter[str] = Counter()
        self.sent_by: Counter[tuple[str, str]] = Counter()  # (kind name, radio) -> frames
        self.heard_by: Counter[tuple[str, str]] = Counter()
        self.alarms: list[tuple[float, str, int, int]] = []  # (t_ms, node, cause, kind) raised/cleared
        self._heard: dict[int, bool] = {}
        self._best_reception: dict[int, tuple[int, int]] = {}
        self.nbiot = NbiotNetwork(self)  # the HAL ``net`` of every node
        self.on_frame: list[Callable[[VirtualNode, bytes, str], None]] = []  # uplink observers
        self.lora_delivery: Callable[[VirtualNode, bytes], None] | None = None
        self.nbiot_delivery: Callable[[VirtualNode, bytes], bool] | None = None
        self.ble_delivery: Callable[[VirtualNode, bytes], bool] | None = None
        self.ble_range_m = 10 ** ((97.0 - 40.0) / 27.0)  # ble_node path loss at 0 dBm vs -97 dBm sensitivity
        self.ble_gateway_xy = (0.0, 0.0)
        self.cpu_wake_s = 0.0

    # ---------------------------------------------------------------- time
    @property
    def now_ms(self) -> float:
        """Virtual milliseconds since the origin."""
        return self.clock.now() - self.origin_ms

    def lifeline_time(self) -> int:
        return int(self.clock.now() // 1000) - EPOCH_UNIX

    def at(self, t_ms: float, fn: Callable[..., None], arg: Any = None) -> None:
        """Schedule ``fn(arg)`` at virtual ``t_ms`` since the origin."""
        self._seq += 1
        heapq.heappush(self._heap, (self.origin_ms + t_ms, self._seq, fn, arg))

    def next_time_ms(self) -> float | None:
        return self._heap[0][0] - self.origin_ms if self._heap else None

    def step(self) -> None:
        t, _, fn, arg = heapq.heappop(self._heap)
        self.clock.advance_to(t)
        fn(arg)

    def run_until(self, t_ms: float) -> None:
        """Process every event up to ``t_ms`` (no pacing; see runner for real-time pacing)."""
        end = self.origin_ms + t_ms
        while self._heap and self._heap[0][0] <= end:
            self.step()
        self.clock.advance_to(end)

    # ---------------------------------------------------------------- nodes
    def add(self, vnode: VirtualNode) -> None:
        self.nodes.append(vnode)
        self.by_name[vnode.name] = vnode
        self.by_dev[vnode.dev_id] = vnode
        if vnode.lora_params is not None:
            self.air.add_radio(vnode.radio_name, vnode.spec.x_m, vnode.spec.y_m,
                               tx_power_dbm=vnode.config.get("lora", {}).get("power", 14), duty_cycle=False)

    def start(self, stagger_ms: float | None = None) -> None:
        """First power-on of every node, spread over ``stagger_ms`` (default: the shortest interval)."""
        rng = derive_seed(self.seed, "stagger")
        span = stagger_ms if stagger_ms is not None else min((n.spec.interval_s for n in self.nodes), default=60) * 1000
        for v in self.nodes:
            off = (derive_seed(rng, v.index) % 1_000_000) / 1_000_000 * span
            self._schedule_wake(v, self.now_ms + off, "power", 0)

    def _schedule_wake(self, v: VirtualNode, t_ms: float, reason: str, cause: int) -> None:
        v.token += 1
        v.next_reason = reason
        v.next_cause = cause
        self.at(t_ms, self._wake, (v, v.token))

    def _wake(self, arg: tuple[VirtualNode, int]) -> None:
        v, token = arg
        if token != v.token or v.awake:
            return
        v.awake = True
        now = int(self.now_ms)
        v.clock.ms = max(v.clock.ms, now)
        if v.next_reason == "motion" and v.lis3dh is not None:
            v.lis3dh.trigger_motion()
        v.hal.resume(v.next_cause, v.next_reason, 0)
        v.wake_start = v.clock.ms
        v.wakes += 1
        v.glet = greenlet(self._run_wake)
        self._drive(v, v.glet.switch(v))

    def _run_wake(self, v: VirtualNode) -> tuple[str, int, int]:
        """Body of a wake (in the node's greenlet): firmware/main.py's loop body."""
        try:
            n = fw_node.Node(v.hal)
            v.last_node = n
            ms = n.wake()
            if n.reboot:
                return ("reset", 0, 4)
            return ("sleep", ms, 3)
        except sim.Reset as e:
            return ("reset", 0, int(e.cause))
        except sim.PowerCut:
            return ("power_loss", 1000, 0)
        except Exception:
            v.crashes += 1
            self.counters["firmware_exceptions"] += 1
            return ("sleep", CRASH_SLEEP_MS, 3)

    def _drive(self, v: VirtualNode, req: Any) -> None:
        """Act on what a node's greenlet asked for: resume later, or the wake is over."""
        if req[0] == "sync":
            self.at(max(req[1], self.now_ms), self._resume, v)
            return
        v.awake = False
        v.glet = None
        what, ms, cause = req
        end = v.clock.ms
        tx_ms = sum(e[2] for e in v.hal.tx_log)
        v.hal.tx_log.clear()
        v.battery.charge(end - v.wake_start, tx_ms, ms)
        if what == "power_loss":
            v.hal.power_loss(0)
            self._schedule_wake(v, end + ms, "power", 0)
            return
        if what == "reset":
            self._schedule_wake(v, end + 1, "power", cause)
            return
        t_wake = end + ms
        reason = "timer"
        ti = v.model.interrupts(end, t_wake)
        if ti is not None and ti < t_wake:
            t_wake = ti
            reason = "motion" if v.spec.kind == "tilt" else "alarm"
        self._schedule_wake(v, t_wake, reason, 3)

    def _resume(self, v: VirtualNode) -> None:
        if v.glet is None or v.glet.dead:
            return
        self._drive(v, v.glet.switch())

    def sync(self, v: VirtualNode, local_ms: float) -> None:
        """Called inside a node's greenlet: wait until the fleet's time reaches ``local_ms``."""
        if local_ms <= self.now_ms or v.glet is None or greenlet.getcurrent() is not v.glet:
            return
        v.glet.parent.switch(("sync", local_ms))

    # ---------------------------------------------------------------- interrupts (faults, scenario)
    def reset_node(self, v: VirtualNode, cause: int, power_loss: bool = False, off_ms: float = 0.0) -> None:
        """Reset (cause: schema RESET_CAUSES index) at the next moment the node is not mid-wake."""
        if v.awake:
            self.at(self.now_ms + 100, lambda _: self.reset_node(v, cause, power_loss, off_ms))
            return
        if power_loss:
            v.hal.power_loss(0)
        v.resets.append((self.now_ms, cause))
        v.clock.ms = max(v.clock.ms, int(self.now_ms))
        self._schedule_wake(v, self.now_ms + off_ms, "power", cause)

    def interrupt(self, v: VirtualNode, reason: str) -> None:
        """Wake a sleeping node now (a wake pin)."""
        if not v.awake:
            self._schedule_wake(v, self.now_ms, reason, 3)

    # ---------------------------------------------------------------- uplinks
    def _record(self, v: VirtualNode, payload: bytes, radio: str, heard: bool, corrupted: bool = False) -> None:
        kind_name = kind_name_of(payload)
        self.sent_by[(kind_name, radio)] += 1
        self.counters["frames_sent"] += 1
        if heard:
            self.heard_by[(kind_name, radio)] += 1
            self.counters["frames_heard"] += 1
        if len(payload) > 1 and payload[1] in (schema.K_ALARM_RAISED, schema.K_ALARM_CLEARED):
            self.counters["alarm_frames"] += 1
        self.digest.update(int(self.now_ms).to_bytes(8, "big") + len(payload).to_bytes(1, "big") + payload)
        if self.record_frames:
            self.frames.append(SentFrame(self.now_ms, v.name, payload, radio, heard, corrupted))
        for cb in self.on_frame:
            cb(v, payload, radio)

    def _mangle(self, v: VirtualNode, payload: bytes) -> bytes:
        if v.corrupt_p > 0:
            r = derive_seed(self.seed, "corrupt", v.name, int(self.now_ms))
            if (r % 10_000) / 10_000 < v.corrupt_p:
                i = (r >> 16) % len(payload)
                payload = payload[:i] + bytes((payload[i] ^ (1 << ((r >> 32) % 8)),)) + payload[i + 1:]
                self.counters["corrupted"] += 1
        return payload

    def lora_uplink(self, v: VirtualNode, payload: bytes, params: dict[str, int]) -> Any:
        self.sync(v, v.clock.ms)
        if v.radio_lost or v.lora_params is None:
            self._record(v, payload, v.spec.radio, False)
            return None
        p = LoraParams(params["freq"], params["sf"], params["bw"], params["cr"] + 1, params["preamble"])
        air_payload = self._mangle(v, payload)
        tx = self.air.transmit(v.radio_name, air_payload, p, params.get("power", 14))
        self._heard[tx.seq] = False
        self.sync(v, tx.end_ms - self.origin_ms + 0.5)
        heard = self._heard.pop(tx.seq, False)
        self._record(v, payload, v.spec.radio, heard, air_payload != payload)
        if v.duplicate_via and self.nbiot_delivery is not None:
            self.nbiot_delivery(v, payload)
            self.counters["duplicated"] += 1
        if not heard:
            return None
        down = self.gateway_end.answer(air_payload)
        if down is None:
            return None
        rssi, snr = self._best_reception.pop(tx.seq, (-100, 5))
        return (rssi, snr, down)

    def lora_heard(self, tx_seq: int, rssi: float, snr: float) -> None:
        """Receivers call this when they got a node transmission."""
        if tx_seq in self._heard:
            self._heard[tx_seq] = True
            self._best_reception[tx_seq] = (round(rssi), round(snr))

    def nbiot_uplink(self, v: VirtualNode, payload: bytes) -> bool:
        """The node's MQTT PUBLISH reached the network (called from inside its wake)."""
        self.sync(v, v.clock.ms)
        air_payload = self._mangle(v, payload)
        ok = not v.radio_lost and (self.nbiot_delivery is None or self.nbiot_delivery(v, air_payload))
        self._record(v, payload, "nbiot", ok, air_payload != payload)
        return ok

    def ble_uplink(self, v: VirtualNode, payload: bytes) -> bytes | None:
        self.sync(v, v.clock.ms)
        gx, gy = self.ble_gateway_xy
        in_range = math.hypot(v.spec.x_m - gx, v.spec.y_m - gy) <= self.ble_range_m and not v.radio_lost
        air_payload = self._mangle(v, payload)
        heard = in_range and (self.ble_delivery is None or self.ble_delivery(v, air_payload))
        self._record(v, payload, "ble", heard, air_payload != payload)
        if not heard or not payload[2] & frame.FLAG_ACK_REQ:
            return None
        return self.gateway_end.answer(air_payload)

    # ---------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        return {
            "nodes": len(self.nodes),
            "virtual_s": round(self.now_ms / 1000.0, 3),
            "frames_sent": self.counters["frames_sent"],
            "frames_heard": self.counters["frames_heard"],
            "alarm_frames": self.counters["alarm_frames"],
            "by_kind_radio": [{"kind": k, "radio": r, "sent": n, "heard": self.heard_by[(k, r)]}
                              for (k, r), n in sorted(self.sent_by.items())],
            "wakes": sum(v.wakes for v in self.nodes),
            "firmware_exceptions": self.counters["firmware_exceptions"],
            "acks": self.gateway_end.counters["ack"],
            "time_syncs": self.gateway_end.counters["time_sync"],
            "air": {k: v for k, v in sorted(self.air.stats.items()) if k != "not_listening"},
            "digest": self.digest.hexdigest(),
        }
