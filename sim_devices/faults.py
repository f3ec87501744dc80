"""Fault injection, scheduled on the fleet's event queue (scenario ``[[faults]]``; docs/simulator.md).

| type | effect |
| --- | --- |
| reboot | soft reset (cause 4): RTC memory kept, the node boots again at once |
| brownout | supply collapse: RTC memory and time lost, boot with cause 5 after ``off`` (default 5 s) |
| clock_drift | the node's RTC runs ``ppm`` fast (negative: slow), default 200 ppm |
| radio_loss | the node's transmissions reach nobody for ``duration`` (antenna broken, modem dead) |
| corrupt | each frame is corrupted on its way (one flipped bit after the PHY CRC) with probability ``p`` |
| duplicate | each LoRa frame also goes out through NB-IoT: two radios, one reading |
| replay | an attacker near the gateway records the nodes' frames and sends them again ``delay`` s later |
| wrong_key | the node was flashed with another root key than its record holds (set at provisioning) |
| stuck_sensor | the sensor's output freezes at its last value |
| flood | an attacker transmits ``rate`` frames/s (forged MICs for real device ids, and garbage) |
| platform_outage | the platform's broker is stopped for ``duration`` (gateway mode) |
| nbiot_outage | the cellular network refuses attach for ``duration`` |
| modem_unplug | the gateway's LoRa modem is unplugged for ``duration`` (gateway mode) |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lifeline.sim_devices.air import LoraParams, RadioBusy
from lifeline.sim_devices.fleet import LORA_CHANNEL, Fleet, VirtualNode
from lifeline.sim_devices.physics.base import rng_for
from lifeline.sim_devices.scenario import Fault


@dataclass(slots=True)
class Environment:
    """Actions outside the fleet that some faults need (gateway mode); absent ones are skipped."""

    stop_platform: Callable[[], None] | None = None
    start_platform: Callable[[], None] | None = None
    unplug_modem: Callable[[], None] | None = None
    replug_modem: Callable[[], None] | None = None
    publish_raw: Callable[[str, bytes], None] | None = None  # NB-IoT topic, payload
    log: list[tuple[float, str]] = field(default_factory=list)


class Attacker:
    """A LoRa radio near the gateway that replays captured frames and floods the channel."""

    def __init__(self, fleet: Fleet, env: Environment, x_m: float = 10.0, y_m: float = 10.0) -> None:
        self.fleet = fleet
        self.env = env
        self.radio = fleet.air.add_radio("attacker", x_m, y_m, tx_power_dbm=14, duty_cycle=False)
        self.rng = rng_for(fleet.seed, "attacker")
        self.sent: list[bytes] = []
        self.replays = 0
        self.floods = 0
        self.busy = 0

    def transmit(self, payload: bytes, params: LoraParams) -> bool:
        try:
            self.fleet.air.transmit("attacker", payload, params)
        except RadioBusy:
            self.busy += 1
            return False
        self.sent.append(payload)
        return True

    def replay(self, v: VirtualNode, payload: bytes) -> None:
        if v.lora_params is not None:
            if self.transmit(payload, v.lora_params):
                self.replays += 1
        elif self.env.publish_raw is not None:
            self.env.publish_raw(f"lifeline/v1/nodes/{v.dev_id.hex()}/up", payload)
            self.sent.append(payload)
            self.replays += 1

    def forge(self) -> bytes:
        """A frame with a real device id, a plausible header and a random body and MIC, or pure noise."""
        r = self.rng
        if r.random() < 0.2 or not self.fleet.nodes:
            return bytes(r.getrandbits(8) for _ in range(r.randint(8, 51)))
        v = self.fleet.nodes[r.randrange(len(self.fleet.nodes))]
        header = bytes((0x11, 3, 0)) + v.dev_id
        header += r.getrandbits(32).to_bytes(4, "big") + (0).to_bytes(4, "big")
        return header + bytes((0xA1, 0x01, 0x19)) + r.getrandbits(16).to_bytes(2, "big") \
            + r.getrandbits(64).to_bytes(8, "big")


def schedule(fleet: Fleet, faults: list[Fault], env: Environment) -> Attacker | None:
    """Put every fault on the fleet's queue (``wrong_key`` is applied at provisioning, not here)."""
    attacker: Attacker | None = None
    if any(f.type in ("replay", "flood") for f in faults):
        attacker = Attacker(fleet, env)
    for f in faults:
        nodes = [fleet.by_name[n] for n in f.nodes]
        p = f.params
        end = f.at_s + f.duration_s if f.duration_s is not None else None

        def later(t_s: float | None, fn: Callable[[Any], None]) -> None:
            if t_s is not None:
                fleet.at(t_s * 1000.0, fn)

        def note(what: str) -> Callable[[Any], None]:
            return lambda _: env.log.append((fleet.now_ms / 1000.0, what))

        t = f.at_s
        if f.type == "reboot":
            for v in nodes:
                fleet.at(t * 1000.0, lambda _, v=v: fleet.reset_node(v, 4))
        elif f.type == "brownout":
            off = float(p.get("off", 5.0)) * 1000.0
            for v in nodes:
                fleet.at(t * 1000.0, lambda _, v=v, off=off: fleet.reset_node(v, 5, power_loss=True, off_ms=off))
        elif f.type == "clock_drift":
            ppm = float(p.get("ppm", 200.0))
            for v in nodes:
                fleet.at(t * 1000.0, lambda _, v=v, ppm=ppm: setattr(v.hal, "drift_ppm", ppm))
        elif f.type == "radio_loss":
            for v in nodes:
                fleet.at(t * 1000.0, lambda _, v=v: setattr(v, "radio_lost", True))
                later(end, lambda _, v=v: setattr(v, "radio_lost", False))
        elif f.type == "corrupt":
            cp = float(p.get("p", 0.5))
            for v in nodes:
                fleet.at(t * 1000.0, lambda _, v=v, cp=cp: setattr(v, "corrupt_p", cp))
                later(end, lambda _, v=v: setattr(v, "corrupt_p", 0.0))
        elif f.type == "duplicate":
            for v in nodes:
                fleet.at(t * 1000.0, lambda _, v=v: setattr(v, "duplicate_via", "nbiot"))
                later(end, lambda _, v=v: setattr(v, "duplicate_via", None))
        elif f.type == "stuck_sensor":
            for v in nodes:
                fleet.at(t * 1000.0, lambda _, v=v: v.model.stick(fleet.now_ms / 1000.0))
        elif f.type == "replay":
            assert attacker is not None
            delay_ms = float(p.get("delay", 120.0)) * 1000.0
            targets = {v.name for v in nodes} if nodes else None
            window = (t * 1000.0, end * 1000.0 if end is not None else float("inf"))
            atk = attacker

            def capture(v: VirtualNode, payload: bytes, radio: str, atk: Attacker = atk,
                        targets: set[str] | None = targets, window: tuple[float, float] = window,
                        delay_ms: float = delay_ms) -> None:
                if (targets is None or v.name in targets) and window[0] <= fleet.now_ms < window[1]:
                    fleet.at(fleet.now_ms + delay_ms, lambda _: atk.replay(v, payload))

            fleet.on_frame.append(capture)
        elif f.type == "flood":
            assert attacker is not None
            rate = float(p.get("rate", 2.0))
            stop_s = end if end is not None else t + 60.0
            params = LoraParams(int(p.get("freq", LORA_CHANNEL)), int(p.get("sf", 9)))
            atk = attacker

            def tick(_: Any, atk: Attacker = atk, stop_s: float = stop_s, rate: float = rate,
                     params: LoraParams = params) -> None:
                if fleet.now_ms / 1000.0 >= stop_s:
                    return
                if atk.transmit(atk.forge(), params):
                    atk.floods += 1
                fleet.at(fleet.now_ms + 1000.0 / rate, tick)

            fleet.at(t * 1000.0, tick)
        elif f.type == "platform_outage":
            if env.stop_platform is not None and env.start_platform is not None:
                stop, start = env.stop_platform, env.start_platform
                fleet.at(t * 1000.0, lambda _, stop=stop: stop())
                later(end if end is not None else t + 3600.0, lambda _, start=start: start())
        elif f.type == "nbiot_outage":
            fleet.at(t * 1000.0, lambda _: setattr(fleet.nbiot, "online", False))
            later(end, lambda _: setattr(fleet.nbiot, "online", True))
        elif f.type == "modem_unplug" and env.unplug_modem is not None and env.replug_modem is not None:
            unplug, replug = env.unplug_modem, env.replug_modem
            fleet.at(t * 1000.0, lambda _, fn=unplug: fn())
            later(end if end is not None else t + 600.0, lambda _, fn=replug: fn())
        fleet.at(t * 1000.0, note(f.type + (" " + ",".join(f.nodes) if f.nodes else "")))
    return attacker
