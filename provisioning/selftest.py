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
passes only when the node's firmware verified an ack from a gateway: one it heard over its own radio, or
(``--gateway``, provisioning/gateway_link.py) one the laptop fetched from the gateway's node broker after
publishing the board's test frame there, handed back to the board (:data:`ACK_SOURCE`, judged by the
firmware's ``downlink.handle``) and turned into the check by :func:`ack_check`. Without a gateway it is
reported as skipped with the reason, never as passed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lifeline.protocols import frame, schema, suites

_BOARD_SOURCE = """\
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
"""

DEVICE_SOURCE = _BOARD_SOURCE + """

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
        keys = frame.derive_keys(cfg.root_key, cfg.device_id, cfg.suite)
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

# The gateway's answer, handed to the board: the firmware's own downlink decoder (downlink.handle, the code a
# node runs on every downlink: MIC, direction, device, downlink counter above the last accepted one, ACK of
# the counter it sent) judges each downlink; a rejected one is decoded again only to say why. As on a node
# that heard the ACK, an accepted downlink's counter is stored (/dfcnt), so a replay of it is refused later.
ACK_SOURCE = _BOARD_SOURCE + """
from lifeline.firmware import downlink


def _why(n, d, c, refused):
    try:
        f = frame.decode(d, n.keys, True)
    except frame.FrameError as e:
        return e.reason
    if refused:
        return 'downlink counter %d is not above the last one accepted' % f.header.fcnt
    if f.header.kind != schema.C_ACK:
        return 'not an ack (kind %d)' % f.header.kind
    return 'ack for counter %s, the test frame was %d' % (f.fields.get(1), c)


def _ack(datas, c):
    hal = _board()
    cfg, errors, ident = config.load(hal.fs)
    if cfg is None:
        return {'acked': False, 'verdicts': [], 'error': 'config: %s' % (errors[0] if errors else '?')}
    n = node.Node(hal)
    n.cfg = cfg
    n.rtc = RtcState(hal, cfg.device_id)
    n.rtc.load()
    n.keys = frame.derive_keys(cfg.root_key, cfg.device_id, cfg.suite)
    n.dev_id = cfg.device_id
    out = []
    for d in datas:
        refused = n.rejected_downlinks
        ok = downlink.handle(n, [d], c)
        out.append([ok, '' if ok else _why(n, d, c, n.rejected_downlinks > refused)])
    return {'acked': any(v[0] for v in out), 'verdicts': out}


print(json.dumps(_ack([bytes.fromhex(h) for h in @DOWNLINKS@], @FCNT@)))
"""

SELFTEST_TIMEOUT_S = 60.0
NO_GATEWAY = ("no gateway given (--gateway): the test frame was verified here with the record's key instead; "
              "confirm the first real report on the gateway")


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

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def with_check(self, check: Check) -> SelfTestResult:
        """This result with ``check`` in place of the check of the same name (appended when there is none)."""
        names = [c.name for c in self.checks]
        checks = tuple(check if c.name == check.name else c for c in self.checks)
        if check.name not in names:
            checks += (check,)
        return SelfTestResult(checks, self.frame_hex, self.fcnt, self.readings)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [[c.name, c.status, c.reason] for c in self.checks],
                "fcnt": self.fcnt, "readings": self.readings}


def verify(device_output: str, *, device_id: bytes, root_key: bytes, kind: str,
           suite: str = "intl") -> SelfTestResult:
    """Turn the board's JSON line into checks, verifying the test frame with the record's key.

    ``gateway_ack`` passes when the board itself heard a valid ACK over its radio; otherwise it is
    skipped (no gateway given) until the flow replaces it with the outcome of :func:`ack_check`."""
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
            got = frame.decode(data, frame.derive_keys(root_key, device_id, suites.suite_id(suite)))
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
            checks.append(Check("gateway_ack", "pass", "acknowledged over the node's own radio"))
        else:
            checks.append(Check("gateway_ack", "skipped", NO_GATEWAY))
    return SelfTestResult(tuple(checks), frame_hex if isinstance(frame_hex, str) else None,
                          fcnt if isinstance(fcnt, int) else None, readings)


def ack_source(downlinks: Sequence[bytes], fcnt: int) -> str:
    """The board script that hands ``downlinks`` (in arrival order) to the firmware's downlink decoder as
    the answer to the test frame with counter ``fcnt``; it prints one JSON line."""
    return ACK_SOURCE.replace("@DOWNLINKS@", repr([d.hex() for d in downlinks])).replace("@FCNT@", str(int(fcnt)))


def is_ack_for(root_key: bytes, device_id: bytes, fcnt: int, suite: str = "intl") -> Callable[[bytes], bool]:
    """A host-side test of "this downlink looks like the ACK of ``fcnt``", used only to stop waiting early:
    the verdict is the board's (:func:`ack_source`)."""
    keys = frame.derive_keys(root_key, device_id, suites.suite_id(suite))

    def test(data: bytes) -> bool:
        try:
            f = frame.decode(data, keys, True)
        except frame.FrameError:
            return False
        return f.header.kind == schema.C_ACK and f.fields.get(1) == fcnt

    return test


def ack_check(device_output: str | None, *, downlinks: int, publishes: int, deadline_s: float, where: str,
              seconds: float) -> Check:
    """The ``gateway_ack`` check from what the board said about the downlinks (None: nothing to hand it)."""
    if downlinks == 0 or device_output is None:
        return Check("gateway_ack", "fail", f"no ack within {deadline_s:g} s from the gateway behind {where} "
                     f"(the test frame was published {publishes} time(s); is the device imported into that "
                     "gateway's registry?)")
    lines = [line for line in device_output.strip().splitlines() if line.startswith("{")]
    try:
        res = json.loads(lines[-1])
        verdicts = [(bool(ok), str(why)) for ok, why in res["verdicts"]]
    except (ValueError, IndexError, KeyError, TypeError):
        return Check("gateway_ack", "fail", "the board printed no verdict on the gateway's downlink")
    if res.get("error"):
        return Check("gateway_ack", "fail", f"the board could not check the downlink: {res['error']}")
    if any(ok for ok, _ in verdicts):
        return Check("gateway_ack", "pass", f"acknowledged by the gateway behind {where} in {seconds:.1f} s; "
                     "the node's firmware verified the ack")
    whys = "; ".join(f"downlink {i}: {why}" for i, (_, why) in enumerate(verdicts, 1))
    return Check("gateway_ack", "fail", f"no valid ack within {deadline_s:g} s from the gateway behind {where} "
                 f"({whys})")
