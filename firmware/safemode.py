# Safe mode: entered after repeated failed boots (crash / watchdog loops), with an invalid configuration
# or a lost frame counter. Only the radio (one fault report per hour, when the configuration allows) and
# the BLE maintenance service run; no sensor code. Left by a technician command, a new configuration, or
# automatically after 24 hours (one more try of the normal app). MicroPython subset.

import json

from lifeline.firmware import config
from lifeline.protocols import schema

MAINT_S = 120
REPORT_EVERY_S = 3600
SLEEP_MS = 3600 * 1000


def run(node, cfg, code, detail):
    node.safe = True
    hal = node.hal
    rtc = node.rtc
    if cfg is not None and node.counter is not None:
        now = hal.time()
        last = rtc.get("sf", -1)
        if last < 0 or now - last >= REPORT_EVERY_S or now < last:
            rtc.set("sf", now)
            node._transmit(schema.K_FAULT, {1: code, 2: min(detail, 65535)}, 0, False, False, 1)
    try:  # noqa: SIM105 - MicroPython has no contextlib
        maintenance_window(node, MAINT_S)
    except OSError:
        pass
    return SLEEP_MS


def maintenance_window(node, seconds):
    from lifeline.firmware.radios import ble

    ident = node.cfg if node.cfg is not None else config.identity(config.read(node.hal.fs)[0])
    if ident is None:
        return  # unprovisioned: nothing to authenticate a technician with
    node.maint = ble.Maintenance(node.hal, ident.device_id, ident.root_key, lambda: info(node),
                                 lambda cmd: command(node, cmd))
    node.maint.start()
    hal = node.hal
    end = hal.ticks_ms() + seconds * 1000
    while hal.ticks_diff(end, hal.ticks_ms()) > 0:
        hal.wdt_feed()
        hal.sleep_ms(1000)


def info(node):
    from lifeline.firmware.node import FW_BUILD

    return json.dumps({"fw": FW_BUILD, "safe": node.safe,
                       "errors": node.errors[:4],
                       "fcnt": node.counter.peek() if node.counter is not None else None}).encode()


def command(node, cmd):
    rtc = node.rtc
    if cmd == b"exit-safe":
        rtc.set("sm", 0)
        rtc.set("bf", 0)
        rtc.save()
        return "ok"
    if cmd.startswith(b"config:"):
        from lifeline.firmware import confcheck

        try:
            obj = json.loads(cmd[7:])
        except ValueError:
            return "error: not JSON"
        errs = confcheck.validate(obj)
        if errs:
            return "error: " + errs[0]
        config.save(node.hal.fs, obj)
        rtc.set("sm", 0)
        rtc.set("bf", 0)
        rtc.save()
        return "ok"
    return "error: unknown command"
