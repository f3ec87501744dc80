"""An attacker at the bench: replays captured frames and forges new ones, on the virtual air next to the
gateway (simulator) and through the NB-IoT node broker (both backends: a stolen SIM's credentials, a
compromised node broker account). What it sends must never reach the platform.
"""

from __future__ import annotations

import random
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.sim_devices.air import LoraParams


class Attacker:
    def __init__(self, node_broker: tuple[str, int], world: Any = None, seed: int = 9) -> None:
        self.rng = random.Random(seed)
        self.world = world
        self.sent: list[tuple[str, bytes]] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hil-attacker", protocol=mqtt.MQTTv311)
        self._client.connect(*node_broker, keepalive=30)
        self._client.loop_start()
        self._radio: Any = None
        if world is not None and world.modem is not None:
            def add() -> Any:
                return world.fleet.air.add_radio("attacker", 15.0, 5.0, tx_power_dbm=14, duty_cycle=False)

            self._radio = world.call(add)

    # ------------------------------------------------------------------------------ NB-IoT
    def publish(self, frame: bytes) -> None:
        dev = frame[3:11].hex() if len(frame) >= 11 else "0000000000000000"
        info = self._client.publish(f"lifeline/v1/nodes/{dev}/up", frame, qos=1)
        info.wait_for_publish(10)
        self.sent.append(("nbiot", frame))

    # ------------------------------------------------------------------------------ LoRa
    @property
    def on_air(self) -> bool:
        return self._radio is not None

    def transmit(self, frame: bytes, params: LoraParams | None = None) -> None:
        """Send on the gateway's channel (869.525 MHz SF9) from next to the gateway."""
        assert self.world is not None and self._radio is not None
        p = params or LoraParams(869_525_000, 9)
        radio = self._radio

        def go() -> None:
            radio.transmit(frame, p)

        self.world.call(go)
        self.world.advance(1.0)  # let it finish on the air
        self.sent.append(("lora", frame))

    # ------------------------------------------------------------------------------ forgeries
    def forge(self, device: bytes) -> bytes:
        """A frame with a real device id and a plausible header, a random body and MIC."""
        r = self.rng
        header = bytes((0x11, 3, 0)) + device + r.getrandbits(32).to_bytes(4, "big") + bytes(4)
        return header + bytes((0xA1, 0x01, 0x19)) + r.getrandbits(16).to_bytes(2, "big") + r.getrandbits(64).to_bytes(
            8, "big")

    def noise(self) -> bytes:
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(3, 40)))

    def close(self) -> None:
        self._client.disconnect()  # first: loop_stop() waits for unacknowledged QoS 1 messages
        self._client.loop_stop()
