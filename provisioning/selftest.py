"""Self-test of a freshly provisioned node, run through the raw REPL, verified on the host.

On the board (:data:`DEVICE_SOURCE`, MicroPython subset, built only from firmware APIs: config.load,
node.make_sensor / make_radio, fcnt.FrameCounter, lifeline.protocols.frame): load and validate the config,
sample the sensor and read the battery, take the next frame counter value from the node's own persisted
counter (so the test frame never reuses a value the node will send later), encode one report with
FLAG_TEST | FLAG_ACK_REQ, send it over the node's radio and listen for the acknowledgement in the receive
window. It prints one JSON line: checks, readings, the frame (hex; no key) and whether an ack arrived.
On an ESP32 the HAL is hal/esp32; on the emulated board (no ``esp32`` module) it is the firmware's
simulated HAL with the quiet sensor models over the board's own filesystem.

On the host (:func:`verify`): the frame must decode with ``lifeline.protocols.frame.decode`` under the
root key from the provisioning record, carry FLAG_TEST, this device id and this kind. The ack step
passes only when the node received and verified an ack from a gateway; with no gateway reachable it is
reported as skipped with the reason, never as passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lifeline.protocols import frame, schema

DEVICE_SOURCE = """\
import json
from lifeline.firmware import config, fcnt, node
from lifeline.firmware.rtcstate import RtcState
from lifeline.protocols import frame, schema


def _board():
    try:
        import esp32
    except ImportError:
        esp32 = None
    if esp32 is not None:
        from lifeline.firmware.hal import esp32 as board
        return board.Esp32Hal()
    import os
    from lifeline.firmware import bootsel, simnode
    from lifeline.firmware.hal import sim, sim_chips
    raw = open('/config.json').read()
    kind = json.loads(raw).get('kind', 'smoke')
    providers, i2c, uarts, pulses = simnode.quiet_providers(kind)
    uarts['lora'] = sim_chips.Rak3172(simnode.Air(), simnode.lora_airtime)
    return sim.SimHal(flash=bootsel.OsFs(os), providers=providers, i2c_devices=i2c, uart_devices=uarts,
                      pulse_providers=pulses)


def _selftest():
    res = {'checks': [], 'frame': None, 'acked': False}
    def check(name, ok, why=''):
        res['checks'].append([name, bool(ok), why])
        return ok
    hal = _board()
    cfg, errors, ident = config.load(hal.fs)
    if not check('config', cfg is not None, errors[0] if errors else ''):
        return res
    rtc = RtcState(hal, cfg.device_id)
    rtc.load()
    try:
        sensor = node.make_sensor(hal, cfg, rtc.section('s'))
        sensor.sample(hal.time(), False)
        fields = sensor.report()
        check('sensor', True)
    except Exception as e:
        check('sensor', False, '%s: %s' % (type(e).__name__, e))
        return res
    mv = hal.battery_mv()
    res['battery_mv'] = mv
    check('battery', mv >= cfg.low_battery_mv, 'below the low-battery threshold' if mv < cfg.low_battery_mv else '')
    if cfg.kind != schema.K_ELECTRICITY_METER:
        fields[15] = max(0, min(mv, 4500))
    res['fields'] = {str(k): (v if isinstance(v, int) else None) for k, v in fields.items()}
    try:
        counter = fcnt.FrameCounter(hal.fs, rtc, True)
        c = counter.next()
        keys = frame.derive_keys(cfg.root_key, cfg.device_id)
        data = frame.encode(keys, cfg.device_id, c, 0, cfg.kind, fields, frame.FLAG_TEST | frame.FLAG_ACK_REQ)
    except Exception as e:
        check('frame', False, '%s: %s' % (type(e).__name__, e))
        return res
    res['fcnt'] = c
    res['frame'] = data.hex()
    check('frame', True)
    radio = node.make_radio(hal, cfg, rtc)
    try:
        opened = radio.open()
    except OSError as e:
        opened = False
    if not check('radio', opened, '' if opened else 'the radio did not come up'):
        return res
    sent, downs = radio.send(data, True)
    if not check('transmit', sent, '' if sent else 'the radio refused the frame'):
        return res
    for d in downs:
        try:
            f = frame.decode(d, keys, True)
        except frame.FrameError:
            continue
        if f.header.kind == schema.C_ACK and f.fields.get(1) == c:
            res['acked'] = True
    res['downlinks'] = len(downs)
    return res


print(json.dumps(_selftest()))
"""

SELFTEST_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # pass | fail | skipped
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    checks: tuple[Check, ...]
    frame_hex: str | None
    fcnt: int | None
    readings: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [[c.name, c.status, c.reason] for c in self.checks],
                "fcnt": self.fcnt, "readings": self.readings}


def verify(device_output: str, *, device_id: bytes, root_key: bytes, kind: str,
           gateway_ack: bool | None = None) -> SelfTestResult:
    """Turn the board's JSON line into checks, verifying the test frame with the record's key.

    ``gateway_ack``: None = no gateway reachable (the ack step is skipped with that reason); True/False =
    a gateway was reachable and did / did not acknowledge (the node reports what it received)."""
    checks: list[Check] = []
    lines = [line for line in device_output.strip().splitlines() if line.startswith("{")]
    try:
        res = json.loads(lines[-1])
    except (ValueError, IndexError):
        return SelfTestResult((Check("device", "fail", "the self-test printed no result"),), None, None)
    for name, ok, why in res.get("checks", []):
        checks.append(Check(str(name), "pass" if ok else "fail", str(why)))
    frame_hex = res.get("frame")
    fcnt = res.get("fcnt")
    readings = {"fields": res.get("fields", {}), "battery_mv": res.get("battery_mv")}
    if isinstance(frame_hex, str):
        try:
            data = bytes.fromhex(frame_hex)
            got = frame.decode(data, frame.derive_keys(root_key, device_id))
            kid = schema.kind_id_by_name(kind)
            problems = []
            if got.header.dev_id != device_id:
                problems.append("device id differs from the record")
            if not got.header.flags & frame.FLAG_TEST:
                problems.append("TEST flag missing")
            if got.header.kind != kid:
                problems.append(f"kind {got.header.kind} instead of {kid}")
            checks.append(Check("frame_verify", "fail" if problems else "pass", "; ".join(problems)))
        except (ValueError, frame.FrameError) as exc:
            reason = getattr(exc, "reason", "not hex")
            checks.append(Check("frame_verify", "fail",
                                f"the test frame does not verify with the record's key ({reason})"))
    if "transmit" in {c.name for c in checks if c.status == "pass"}:
        if res.get("acked"):
            checks.append(Check("gateway_ack", "pass", ""))
        elif gateway_ack is None:
            checks.append(Check("gateway_ack", "skipped",
                                "no gateway reachable from the bench; the test frame was verified locally "
                                "with the record's key instead"))
        else:
            checks.append(Check("gateway_ack", "fail", "no acknowledgement from the gateway in the receive window"))
    return SelfTestResult(tuple(checks), frame_hex if isinstance(frame_hex, str) else None,
                          fcnt if isinstance(fcnt, int) else None, readings)
