# Downlink commands other than acknowledgements (those are handled in node.py, on every alarm): time
# sync, configuration with version, maintenance window (stay awake for OTA / the technician), OTA begin
# and chunks. Imported only when such a command arrives. MicroPython subset.

from lifeline.firmware import config, storage
from lifeline.protocols import frame, schema

DOWN_FCNT_PATH = "/dfcnt"


def last_fcnt(node):
    v = node.rtc.get("dfc")
    if isinstance(v, int):
        return v
    p = storage.load_record(node.hal.fs, DOWN_FCNT_PATH)
    return int.from_bytes(p, "big") if p is not None and len(p) == 4 else -1


def handle(node, datas, sent_fcnt):
    """Verify (MIC, direction, device, counter strictly above the last accepted one) and apply each
    downlink; True if one acknowledges ``sent_fcnt``. Rejects are counted, never raised."""
    acked = False
    last = last_fcnt(node)
    for data in datas:
        try:
            f = frame.decode(data, node.keys, True)
        except frame.FrameError:
            node.rejected_downlinks += 1
            continue
        h = f.header
        if h.dev_id != node.dev_id or h.fcnt <= last:
            node.rejected_downlinks += 1  # another node's, or a replay
            continue
        last = h.fcnt
        node.rtc.set("dfc", h.fcnt)
        storage.save_record(node.hal.fs, DOWN_FCNT_PATH, h.fcnt.to_bytes(4, "big"))
        node.downlinks += 1
        r = node.radio
        if r is not None and r.rssi is not None:
            node.rtc.set("rssi", r.rssi)
            node.rtc.set("snr", r.snr_x10)
        if h.kind == schema.C_ACK:
            if f.fields[1] == sent_fcnt:
                node.acked.append(sent_fcnt)
                acked = True
            # the platform's acknowledgement of an alarm (alarm_state >= 1) may come with any later frame
            if 2 in f.fields and node.sensor is not None and f.fields.get(3, 0) >= 1:
                node.sensor.on_ack(f.fields[2], f.fields.get(3, 0))
        else:
            apply(node, h.kind, f.fields)
    return acked


def apply(node, kind, fields):
    if kind == schema.C_TIME_SYNC:
        set_clock(node, fields[1])
    elif kind == schema.C_CONFIG:
        apply_config(node, fields)
    elif kind == schema.C_MAINTENANCE:
        node.maint_until = node.hal.ticks_ms() + fields[1] * 1000
    elif kind == 70:  # schema_table.C_REKEY (no device constant: schema._LAZY)
        from lifeline.firmware import rekey

        rekey.begin(node, fields)
    elif kind == schema.C_OTA_BEGIN:
        from lifeline.firmware import ota

        node.ota_rx = ota.Receiver(node.hal.fs)
        node.ota_rx.begin(fields[1], fields[2], fields[3])
        if node.maint_until < 0:
            node.maint_until = node.hal.ticks_ms() + 600000  # stay awake for the chunks
    elif kind == schema.C_OTA_CHUNK and node.ota_rx is not None:
        from lifeline.firmware import ota

        try:
            if node.ota_rx.chunk(fields[1], fields[2]):
                s = node.cfg.suite
                ota.install(node.hal.fs, node.ota_rx.blob(), ota.ota_key(node.cfg.root_key, node.dev_id, s),
                            node.cfg.ota_trial_boots, s)
                node.ota_rx = None
                node.maint_until = -1
                node.reboot = True
        except ota.OtaError as e:
            node.ota_rx = None
            node.rtc.set("ota_err", e.reason)


def set_clock(node, t):
    rtc = node.rtc
    old = node.hal.time()
    node.hal.set_time(t)
    rtc.set("pt", rtc.get("pt", old) + (t - old))
    for k in ("lr", "lh", "sm_t", "sf"):
        if isinstance(rtc.get(k), int) and rtc.get(k) >= 0:
            rtc.set(k, rtc.get(k) + (t - old))
    rtc.set("ts", 1)


def apply_config(node, fields):
    cfg = node.cfg
    if cfg is None or fields[1] <= cfg.config_version:
        return False
    raw = dict(cfg.raw)
    raw["config_version"] = fields[1]
    if 2 in fields:
        raw["interval"] = fields[2]
    if 5 in fields:
        raw["heartbeat"] = fields[5] * 60  # the command carries minutes
    th = dict(raw.get("thresholds", {}))
    for key, name in ((3, "high"), (4, "low"), (6, "confirm")):
        if key in fields:
            th[name] = fields[key]
    raw["thresholds"] = th
    new, errors = config.build(raw)
    if errors:
        return False  # a command that would break the configuration is ignored; the old one stays
    config.save(node.hal.fs, raw)
    node.cfg = new
    return True
