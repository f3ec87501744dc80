# A simulated node: SimHal + the chip models of its kind + a provisioned /config.json, and a minimal
# gateway end of the virtual air that records uplinks and answers ACK_REQ frames. Used by the firmware
# tests, the memory bench (under real MicroPython) and the fleet simulator. Stimuli default to a quiet
# world (clean air, a closed cover, dry channel, no flow); pass providers to change them.
# MicroPython subset.

import json

from lifeline.firmware.hal import sim, sim_chips
from lifeline.protocols import frame, schema


def quiet_providers(kind):
    """Default stimuli: (providers, i2c devices, uart devices, pulse providers) for a kind."""
    providers = {"test_button": lambda hal, t: 0}
    i2c = {}
    uarts = {}
    pulses = {}
    if kind == "smoke":
        # clean chamber: 50 mV dark offset, 200 mV of wall scatter when the LED is on
        def chamber(hal, t):
            return 50000 + (200000 if hal.pin("smoke_led", True).v else 0)
        providers["smoke_adc"] = chamber
    elif kind == "tilt":
        i2c[0x18] = sim_chips.Lis3dh(lambda hal, t: (0, 0, 1000))
    elif kind == "water_level":
        uarts["ranger"] = sim_chips.A02yyuw(lambda hal, t: 2800 + (t // 100) % 3)
    elif kind == "electricity_meter":
        uarts["rs485"] = sim_chips.Sdm120(sdm120_registers(2301, 1500, 1234567, 0))
    return providers, i2c, uarts, pulses


def _f32(x10000):
    """IEEE 754 float32 bits of x10000 / 10000 (host helper for the meter model, exact enough)."""
    import struct

    return int.from_bytes(struct.pack(">f", x10000 / 10000), "big")


def sdm120_registers(voltage_dv, power_w, import_wh, export_wh):
    vals = {0x0000: voltage_dv * 1000, 0x000C: power_w * 10000, 0x0048: import_wh * 10, 0x004A: export_wh * 10}

    def regs(hal, t):
        out = {}
        for r, v in vals.items():
            u = _f32(v)
            out[r] = u >> 16
            out[r + 1] = u & 0xFFFF
        return out
    return regs


class Air:
    """The gateway's end of the virtual air for one or more nodes: records every uplink, acknowledges
    frames that ask for it, and delivers queued downlinks in the receive window after an uplink."""

    def __init__(self):
        self.keys = {}  # dev id -> (Keys, next downlink fcnt)
        self.frames = []  # raw uplink payloads
        self.up = True  # False: the gateway hears nothing (link down)
        self.ack = True
        self.pending = {}  # dev id -> [ (kind, fields) ]
        self.clock_s = None  # callable() -> Lifeline epoch seconds for downlink headers

    def register(self, dev_id, root_key, suite=1):
        self.keys[dev_id] = [frame.derive_keys(root_key, dev_id, suite), 1]

    def send_later(self, dev_id, kind, fields):
        self.pending.setdefault(dev_id, []).append((kind, fields))

    def downlink(self, dev_id, kind, fields):
        k = self.keys[dev_id]
        t = self.clock_s() if self.clock_s else 0
        data = frame.encode(k[0], dev_id, k[1], t, kind, fields, frame.FLAG_DOWN)
        k[1] += 1
        return data

    def poll(self, hal, dev_id):
        """A receive window opened without an uplink (maintenance): the next queued downlink, if any."""
        p = self.pending.get(dev_id)
        if not self.up or not p:
            return None
        kind, fields = p.pop(0)
        return self.downlink(dev_id, kind, fields)

    def uplink(self, hal, payload, params):
        if not self.up:
            return None
        self.frames.append(payload)
        try:
            h = frame.parse_header(payload)
        except frame.FrameError:
            return None
        if h.dev_id not in self.keys:
            return None
        p = self.pending.get(h.dev_id)
        if p:
            kind, fields = p.pop(0)
            return self.downlink(h.dev_id, kind, fields)
        if self.ack and h.flags & frame.FLAG_ACK_REQ:
            return self.downlink(h.dev_id, schema.C_ACK, {1: h.fcnt})
        return None


def config_for(kind, radio, dev_id, root_key, extra=None):
    c = {"device_id": dev_id.hex(), "root_key": root_key.hex(), "kind": kind, "radio": radio,
         "region": "EU868", "interval": 900, "heartbeat": 86400,
         "lora": {"sf": 9, "bw": 125, "cr": 0, "preamble": 8, "power": 14, "rx_ms": 1500}}
    if radio == "nbiot":
        c["nbiot"] = {"host": "127.0.0.1", "port": 1883}
    if extra:
        for k in extra:
            c[k] = extra[k]
    return c


def lora_airtime(n, params):
    from lifeline.firmware.radios import airtime

    return airtime.time_on_air_ms(n, params["sf"], params["bw"], params["cr"] + 1, params["preamble"])


class SimNode:
    def __init__(self, kind, radio="lora", dev_id=None, root_key=None, clock=None, air=None, providers=None,
                 i2c=None, uarts=None, pulses=None, config_extra=None, net=None, flash=None):
        self.kind = kind
        self.dev_id = dev_id or bytes((0x70, 0xB3, 0xD5, 0x7E, 0xD0, 0, 0, 1))
        self.root_key = root_key or bytes(range(32))
        # the frame crypto suite from the node's config ("suite": "intl" | "sm", default intl)
        self.suite = 2 if (config_extra or {}).get("suite") == "sm" else 1
        self.air = air if air is not None else Air()
        self.air.register(self.dev_id, self.root_key, self.suite)
        p, i, u, pu = quiet_providers(kind)
        if providers:
            p.update(providers)
        if i2c:
            i.update(i2c)
        if uarts:
            u.update(uarts)
        if pulses:
            pu.update(pulses)
        self.modem = sim_chips.Rak3172(self.air, lora_airtime)
        self.modem.dev_id = self.dev_id
        u["lora"] = self.modem
        self.hal = sim.SimHal(clock=clock, flash=flash, providers=p, i2c_devices=i, uart_devices=u,
                              pulse_providers=pu, net=net)
        self.config = config_for(kind, radio, self.dev_id, self.root_key, config_extra)
        self.write_config()
        self.node = None
        self.last_sleep_ms = 0

    def write_config(self, obj=None):
        f = self.hal.fs.open("/config.json", "wb")
        f.write(json.dumps(obj if obj is not None else self.config).encode())
        f.close()

    def wake(self):
        """One wake of the firmware; returns the requested sleep in ms."""
        from lifeline.firmware import node

        self.node = node.Node(self.hal)
        self.last_sleep_ms = self.node.wake()
        return self.last_sleep_ms

    def sleep(self, ms=None, wake="timer"):
        """Deep sleep for ms (default: what the node asked for) and wake by timer or another source."""
        self.hal.resume(3, wake, self.last_sleep_ms if ms is None else ms)

    def decoded(self, frames=None):
        """Every uplink (or ``frames``) verified and decoded with this node's keys."""
        keys = frame.derive_keys(self.root_key, self.dev_id, self.suite)
        return [frame.decode(f, keys) for f in (self.air.frames if frames is None else frames)]

    def cycle(self):
        ms = self.wake()
        self.sleep(ms)
        return ms
