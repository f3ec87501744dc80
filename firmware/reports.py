# Readings other than the periodic kind report: alarm raised / cleared (with persistent alarm ids), faults
# and the heartbeat (uptime, reset cause, firmware build, link quality, queue depth, battery). Loaded only
# on wakes that produce one of them. MicroPython subset.

from lifeline.firmware import storage
from lifeline.firmware.node import FW_BUILD, PRIO_ALARM, PRIO_EVENT
from lifeline.protocols import schema

ALARM_ID_PATH = "/alarm_id"


def heartbeat(node, mv):
    rtc = node.rtc
    up_h = (node.hal.time() - rtc.get("pt", 0)) // 3600  # schema: uptime in hours
    f = {1: max(0, min(up_h, 65535)), 2: rtc.get("rc", 0), 3: FW_BUILD, 15: max(0, min(mv, 4500))}
    f[6] = min(len(node.queue), 255) if node.queue is not None else 0
    if rtc.get("rssi") is not None:
        f[4] = max(-150, min(rtc.get("rssi"), 0))
        f[5] = max(-30, min(rtc.get("snr", 0) // 10, 30))  # kept in 0.1 dB, sent in dB
    return f


def events(node, ev, out, mv):
    """Turn sensor events into outgoing readings; True when a kind report should go now."""
    rtc = node.rtc
    force = False
    active = rtc.section("aa")
    for e in ev:
        t = e[0]
        if t == "raise":
            aid = next_alarm_id(node)
            active[str(e[1])] = aid
            out.append([PRIO_ALARM, schema.K_ALARM_RAISED, {1: aid, 2: e[1], 3: e[2]}, True])
            force = True
        elif t == "clear":
            aid = active.pop(str(e[1]), 0)
            out.append([PRIO_ALARM, schema.K_ALARM_CLEARED, {1: aid, 2: e[1], 3: e[2]}, True])
            force = True
        elif t == "fault":
            out.append([PRIO_EVENT, schema.K_FAULT, {1: e[1], 2: e[2], 15: max(0, min(mv, 4500))},
                        False])
        elif t == "report":
            force = True
    return force


def next_alarm_id(node):
    fs = node.hal.fs
    p = storage.load_record(fs, ALARM_ID_PATH)
    n = (int.from_bytes(p, "big") + 1) & 0xFFFF if p is not None and len(p) == 2 else 1
    storage.save_record(fs, ALARM_ID_PATH, n.to_bytes(2, "big"))
    return n
