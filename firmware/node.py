# The node life cycle: one call of Node.wake() is one wake of the ESP32 between two deep sleeps:
#   boot guard -> config -> sensors -> alarms / reports / heartbeat -> radio (retries, queue) ->
#   downlinks -> stay awake while needed (alarm sounding, maintenance) -> state saved -> sleep time.
# main.py then calls hal.deep_sleep(). All per-node state is in this object, RTC memory and flash, so a
# fleet simulator can run thousands of nodes in one process. Every byte on the air goes through
# lifeline.protocols.frame.
# MicroPython subset.

from lifeline.firmware import config, fcnt, ota, storage, txqueue
from lifeline.firmware.rtcstate import RtcState
from lifeline.protocols import frame, schema

FW_BUILD = 100
WDT_MS = 30000
ALARM_TRIES = 3
ALARM_RETRY_MS = 2000
MAX_AWAKE_MS = 600000  # an awake episode (alarm sounding, maintenance) is cut into 10-minute wakes
TICK_MS = 250
QUEUE_BUDGET = 8  # queued readings sent per wake
SAFE_RETRY_S = 86400
SAFE_MAINT_S = 120
ALARM_ID_PATH = "/alarm_id"
DOWN_FCNT_PATH = "/dfcnt"
BOOTED_PATH = "/booted"

RC_POWER_ON = 0
RC_WATCHDOG = 2
RC_DEEP_SLEEP = 3

FAULT_SENSOR = 1
FAULT_RADIO = 2
FAULT_STORAGE = 3
FAULT_LOW_BATTERY = 4
FAULT_CONFIG = 5
FAULT_BOOT_LOOP = 6
FAULT_OTA_ROLLBACK = 7

_KIND_MODULES = {
    "smoke": "smoke", "tilt": "tilt", "water_level": "water_level",
    "water_meter": "meter", "gas_meter": "meter", "electricity_meter": "meter",
}


def make_sensor(hal, cfg, st):
    k = cfg.kind_name
    if k == "smoke":
        from lifeline.firmware.sensors import smoke
        return smoke.SmokeSensor(hal, cfg, st)
    if k == "tilt":
        from lifeline.firmware.sensors import tilt
        return tilt.TiltSensor(hal, cfg, st)
    if k == "water_level":
        from lifeline.firmware.sensors import water_level
        return water_level.WaterLevelSensor(hal, cfg, st)
    from lifeline.firmware.sensors import meter
    if k == "electricity_meter":
        return meter.ElectricityMeter(hal, cfg, st)
    return meter.PulseMeter(hal, cfg, st, cfg.kind)


def make_radio(hal, cfg, rtc):
    if cfg.radio == "lora":
        from lifeline.firmware.radios import lora_at
        return lora_at.LoraLink(hal, cfg, rtc.section("dc"))
    if cfg.radio == "nbiot":
        from lifeline.firmware.radios import nbiot
        return nbiot.NbiotLink(hal, cfg)
    from lifeline.firmware.radios import ble
    return ble.BleLink(hal, cfg)


class Node:
    def __init__(self, hal):
        self.hal = hal
        self.cfg = None
        self.errors = []
        self.safe = False
        self.sensor = None
        self.radio = None
        self.radio_ok = None  # None: not opened this wake
        self.queue = None
        self.counter = None
        self.tx = []  # frames transmitted in this wake (bytes), for the simulator and tests
        self.acked = []  # counters acknowledged in this wake
        self.downlinks = 0
        self.rejected_downlinks = 0
        self.maint_until = -1
        self.ota_rx = None
        self.confirmed = False

    # ================================================================ wake
    def wake(self):
        """Run one wake; returns the deep-sleep time in ms."""
        hal = self.hal
        hal.wdt_start(WDT_MS)
        cfg, errors, ident = config.load(hal.fs)
        self.cfg = cfg
        self.errors = errors
        idn = cfg if cfg is not None else ident
        self.rtc = RtcState(hal, idn.device_id if idn is not None else b"unprovisioned")
        rtc = self.rtc
        fresh = not rtc.load()
        cause = hal.reset_cause()
        if fresh:
            rtc.set("pt", hal.time())  # RTC time at power-on, for the uptime field
            rtc.set("ts", 0)  # clock synchronised?
        if cause != RC_DEEP_SLEEP:
            rtc.set("rc", cause)
        fails = rtc.get("bf", 0)
        rtc.set("bf", fails + 1)  # cleared when this wake ends cleanly
        rtc.save()
        if idn is None:
            return self._finish(self._safe_mode(None, FAULT_CONFIG, 0))
        first = not hal.fs.exists(BOOTED_PATH)
        try:
            self.counter = fcnt.FrameCounter(hal.fs, rtc, first)
        except fcnt.CounterLost:
            self.counter = None
            return self._finish(self._safe_mode(None, FAULT_STORAGE, 1))
        if first:
            storage.write_atomic(hal.fs, BOOTED_PATH, b"1")
        self.keys = frame.derive_keys(idn.root_key, idn.device_id)
        self.dev_id = idn.device_id
        self.downlink_fcnt = self._load_down_fcnt()
        now = hal.time()
        if cfg is None:
            return self._finish(self._safe_mode(None, FAULT_CONFIG, len(errors)))
        limit = cfg.max_boot_failures
        if rtc.get("sm") and now - rtc.get("sm_t", now) >= SAFE_RETRY_S:
            rtc.set("sm", 0)
        if fails >= limit or rtc.get("sm"):
            if not rtc.get("sm"):
                rtc.set("sm", 1)
                rtc.set("sm_t", now)
            return self._finish(self._safe_mode(cfg, FAULT_BOOT_LOOP, fails))
        return self._finish(self._normal(cfg, now))

    def _finish(self, sleep_ms):
        if self.queue is not None:
            try:
                self.queue.flush()
            except OSError:
                pass
        if self.radio is not None:
            self.radio.close()
        self.rtc.set("bf", 0)
        self.rtc.save()
        return sleep_ms

    # ================================================================ normal operation
    def _normal(self, cfg, now):
        hal = self.hal
        rtc = self.rtc
        self.queue = txqueue.TxQueue(hal.fs)
        self.sensor = make_sensor(hal, cfg, rtc.section("s"))
        self.sensor.clock_ok = bool(rtc.get("ts"))
        out = []  # [prio, kind, fields, ack_req]
        rolled = ota.take_rollback(hal.fs)
        if rolled is not None:
            out.append([txqueue.PRIO_EVENT, schema.K_FAULT, {1: FAULT_OTA_ROLLBACK, 2: rolled}, False])
        trial = ota.in_trial(hal.fs)
        ev = self.sensor.sample(now, hal.wake_reason() == "motion")
        mv = hal.battery_mv()
        force_report = self._events(ev, out, mv)
        low = mv < cfg.low_battery_mv
        if low and not rtc.get("lb"):
            out.append([txqueue.PRIO_EVENT, schema.K_FAULT, {1: FAULT_LOW_BATTERY, 2: mv, 15: mv}, False])
        rtc.set("lb", 1 if low else 0)
        interval = cfg.interval
        if hasattr(self.sensor, "report_interval"):
            interval = self.sensor.report_interval(interval)
        last = rtc.get("lr", -1)
        if force_report or trial or last < 0 or now - last >= interval or now < last:
            out.append([txqueue.PRIO_PERIODIC, cfg.kind, self._report_fields(mv), trial])
            rtc.set("lr", now)
        lh = rtc.get("lh", -1)
        if lh < 0 or now - lh >= cfg.heartbeat or now < lh:
            out.append([txqueue.PRIO_PERIODIC, schema.K_HEARTBEAT, self._heartbeat_fields(mv), trial])
            rtc.set("lh", now)
        self._send_all(out, now)
        self._stay_awake(cfg)
        return self._sleep_ms(cfg, hal.time())

    def _report_fields(self, mv):
        f = self.sensor.report()
        if self.cfg.kind in (schema.K_WATER_METER, schema.K_GAS_METER) and self.rtc.get("lb"):
            f[3] = f.get(3, 0) | 8  # METER_FLAGS low_battery
        if self.cfg.kind != schema.K_ELECTRICITY_METER:
            f[15] = max(0, min(mv, 4500))
        return f

    def _heartbeat_fields(self, mv):
        rtc = self.rtc
        up = self.hal.time() - rtc.get("pt", 0)
        f = {1: max(0, min(up, 0xFFFFFFFF)), 2: rtc.get("rc", 0), 3: FW_BUILD, 15: max(0, min(mv, 4500))}
        if self.queue is not None:
            f[6] = min(len(self.queue), 255)
        if rtc.get("rssi") is not None:
            f[4] = max(-150, min(rtc.get("rssi"), 0))
            f[5] = max(-300, min(rtc.get("snr", 0), 300))
        return f

    def _events(self, ev, out, mv):
        """Turn sensor events into outgoing readings; True when a kind report should go now."""
        rtc = self.rtc
        force = False
        active = rtc.section("aa")
        for e in ev:
            t = e[0]
            if t == "raise":
                aid = self._next_alarm_id()
                active[str(e[1])] = aid
                out.append([txqueue.PRIO_ALARM, schema.K_ALARM_RAISED, {1: aid, 2: e[1], 3: e[2]}, True])
                force = True
            elif t == "clear":
                aid = active.pop(str(e[1]), 0)
                out.append([txqueue.PRIO_ALARM, schema.K_ALARM_CLEARED, {1: aid, 2: e[1], 3: e[2]}, True])
                force = True
            elif t == "fault":
                out.append([txqueue.PRIO_EVENT, schema.K_FAULT, {1: e[1], 2: e[2], 15: max(0, min(mv, 4500))},
                            False])
            elif t == "report":
                force = True
        return force

    def _next_alarm_id(self):
        fs = self.hal.fs
        p = storage.load_record(fs, ALARM_ID_PATH)
        n = (int.from_bytes(p, "big") + 1) & 0xFFFF if p is not None and len(p) == 2 else 1
        storage.save_record(fs, ALARM_ID_PATH, n.to_bytes(2, "big"))
        return n

    # ================================================================ radio
    def _open_radio(self):
        if self.radio_ok is None:
            self.radio = make_radio(self.hal, self.cfg, self.rtc)
            try:
                self.radio_ok = self.radio.open()
            except OSError:
                self.radio_ok = False
        return self.radio_ok

    def _encode(self, kind, fields, t, ack, queued):
        flags = (frame.FLAG_ACK_REQ if ack else 0) | (frame.FLAG_QUEUED if queued else 0)
        c = self.counter.next()
        return c, frame.encode(self.keys, self.dev_id, c, t, kind, fields, flags)

    def _transmit(self, kind, fields, t, ack, queued, tries):
        """Send one reading (encode per try: a fresh counter each time). True when delivered."""
        if not self._open_radio():
            return False
        listen = ack or self.maint_until >= 0
        for attempt in range(tries):
            if attempt:
                self.hal.sleep_ms(ALARM_RETRY_MS * attempt)
                self.hal.wdt_feed()
            c, data = self._encode(kind, fields, t, ack, queued)
            ok, downs = self.radio.send(data, listen)
            if ok:
                self.tx.append(data)
            acked = self._downlinks(downs, c)
            if ok and (not ack or acked or self.cfg.radio == "ble"):
                if ack and acked and not self.confirmed and ota.in_trial(self.hal.fs):
                    self.confirmed = ota.confirm(self.hal.fs)
                return True
        return False

    def _send_all(self, out, now):
        t = now if self.rtc.get("ts") else 0
        q = self.queue
        link_ok = True
        for prio, kind, fields, ack in out:
            tries = ALARM_TRIES if prio == txqueue.PRIO_ALARM else 1
            if link_ok and self._transmit(kind, fields, t, ack, False, tries):
                continue
            link_ok = False if prio != txqueue.PRIO_ALARM else link_ok
            q.push(prio, t, kind, fields, ack)
        if self.radio_ok is None and not q.due(now):
            return
        if link_ok and q.due(now):
            n = 0
            while len(q) and n < QUEUE_BUDGET:
                prio, qt, kind, fields, ack = q.peek()
                if not self._transmit(kind, fields, qt, ack, True, 1):
                    q.failed(now)
                    return
                q.pop()
                n += 1
            q.succeeded()
        elif not link_ok:
            q.failed(now)
        # a wake that sent nothing may still need a receive window for pending downlinks (NB-IoT broker)

    # ================================================================ downlinks
    def _load_down_fcnt(self):
        v = self.rtc.get("dfc")
        if isinstance(v, int):
            return v
        p = storage.load_record(self.hal.fs, DOWN_FCNT_PATH)
        return int.from_bytes(p, "big") if p is not None and len(p) == 4 else -1

    def _downlinks(self, datas, sent_fcnt):
        acked = False
        for data in datas:
            try:
                f = frame.decode(data, self.keys, True)
            except frame.FrameError:
                self.rejected_downlinks += 1
                continue
            h = f.header
            if h.dev_id != self.dev_id or h.fcnt <= self.downlink_fcnt:
                self.rejected_downlinks += 1  # another node's, or a replay
                continue
            self.downlink_fcnt = h.fcnt
            self.rtc.set("dfc", h.fcnt)
            storage.save_record(self.hal.fs, DOWN_FCNT_PATH, h.fcnt.to_bytes(4, "big"))
            self.downlinks += 1
            if self.radio is not None and self.radio.rssi is not None:
                self.rtc.set("rssi", self.radio.rssi)
                self.rtc.set("snr", self.radio.snr_x10)
            if self._apply(h.kind, f.fields, h.time, sent_fcnt):
                acked = True
        return acked

    def _apply(self, kind, fields, t, sent_fcnt):
        """Apply one verified downlink; True if it acknowledges ``sent_fcnt``."""
        if kind == schema.C_ACK:
            if fields[1] == sent_fcnt:
                self.acked.append(sent_fcnt)
                if 2 in fields and self.sensor is not None and fields.get(3, 0) >= 1:
                    self.sensor.on_ack(fields[2], fields.get(3, 0))
                return True
            return False
        if kind == schema.C_TIME_SYNC:
            self._set_clock(fields[1])
        elif kind == schema.C_CONFIG:
            self._apply_config(fields)
        elif kind == schema.C_MAINTENANCE:
            self.maint_until = self.hal.ticks_ms() + fields[1] * 1000
        elif kind == schema.C_OTA_BEGIN:
            self.ota_rx = ota.Receiver(self.hal.fs)
            self.ota_rx.begin(fields[1], fields[2], fields[3])
        elif kind == schema.C_OTA_CHUNK and self.ota_rx is not None:
            try:
                if self.ota_rx.chunk(fields[1], fields[2]):
                    ota.install(self.hal.fs, self.ota_rx.blob(), ota.ota_key(self.cfg.root_key, self.dev_id),
                                self.cfg.ota_trial_boots)
                    self.ota_rx = None
                    self.rtc.set("reboot", 1)
            except ota.OtaError as e:
                self.ota_rx = None
                self.rtc.set("ota_err", e.reason)
        return False

    def _set_clock(self, t):
        rtc = self.rtc
        old = self.hal.time()
        self.hal.set_time(t)
        rtc.set("pt", rtc.get("pt", old) + (t - old))
        for k in ("lr", "lh"):
            if rtc.get(k, -1) >= 0:
                rtc.set(k, rtc.get(k) + (t - old))
        rtc.set("ts", 1)

    def _apply_config(self, fields):
        cfg = self.cfg
        if fields[1] <= cfg.config_version:
            return
        raw = dict(cfg.raw)
        raw["config_version"] = fields[1]
        if 2 in fields:
            raw["interval"] = fields[2]
        if 5 in fields:
            raw["heartbeat"] = fields[5]
        th = dict(raw.get("thresholds", {}))
        for key, name in ((3, "high"), (4, "low"), (6, "confirm")):
            if key in fields:
                th[name] = fields[key]
        raw["thresholds"] = th
        if config.validate(raw):
            return  # a command that would break the config is ignored (the old one stays)
        config.save(self.hal.fs, raw)
        self.cfg = config.Config(raw)

    # ================================================================ staying awake
    def _stay_awake(self, cfg):
        hal = self.hal
        sensor = self.sensor
        start = hal.ticks_ms()
        next_sample = start + sensor.next_sample_s() * 1000
        while sensor.busy() or hal.ticks_diff(self.maint_until, hal.ticks_ms()) > 0:
            if hal.ticks_diff(hal.ticks_ms(), start) >= MAX_AWAKE_MS:
                break
            hal.wdt_feed()
            sensor.tick(hal.ticks_ms())
            if self.maint_until >= 0 and self.radio_ok:
                self._downlinks(self.radio.listen(TICK_MS), -1)
            else:
                hal.sleep_ms(TICK_MS)
            if hal.ticks_diff(hal.ticks_ms(), next_sample) >= 0:
                now = hal.time()
                out = []
                force = self._events(sensor.sample(now), out, hal.battery_mv())
                if force:
                    out.append([txqueue.PRIO_PERIODIC, cfg.kind, self._report_fields(hal.battery_mv()), False])
                    self.rtc.set("lr", now)
                if out:
                    self._send_all(out, now)
                next_sample = hal.ticks_ms() + sensor.next_sample_s() * 1000
        sensor.tick(hal.ticks_ms())
        if self.maint_until >= 0 and hal.ticks_diff(self.maint_until, hal.ticks_ms()) <= 0:
            self.maint_until = -1

    def _sleep_ms(self, cfg, now):
        rtc = self.rtc
        s = self.sensor.next_sample_s()
        interval = cfg.interval
        if hasattr(self.sensor, "report_interval"):
            interval = self.sensor.report_interval(interval)
        s = min(s, rtc.get("lr", now) + interval - now, rtc.get("lh", now) + cfg.heartbeat - now)
        if self.queue is not None and len(self.queue):
            s = min(s, self.queue.next_try - now)
        if self.sensor.busy():
            s = 2  # cut a long alarm into wakes
        return max(1, s) * 1000

    def wake_pins(self):
        return self.sensor.wake_pins() if self.sensor is not None else ()

    # ================================================================ safe mode
    def _safe_mode(self, cfg, code, detail):
        """Only the radio (one fault report) and the BLE maintenance service; no sensors."""
        self.safe = True
        hal = self.hal
        if cfg is not None and self.counter is not None:
            now = hal.time()
            if now - self.rtc.get("sf", -SAFE_RETRY_S) >= 3600 or now < self.rtc.get("sf", 0):
                self.rtc.set("sf", now)
                self._transmit(schema.K_FAULT, {1: code, 2: min(detail, 65535)}, 0, False, False, 1)
        try:
            self._maintenance_window(SAFE_MAINT_S)
        except OSError:
            pass
        return 3600 * 1000

    def _maintenance_window(self, seconds):
        from lifeline.firmware.radios import ble

        if self.cfg is not None:
            dev, root = self.cfg.device_id, self.cfg.root_key
        else:
            ident = config.load(self.hal.fs)[2]
            if ident is None:
                return  # unprovisioned: nothing to authenticate a technician with
            dev, root = ident.device_id, ident.root_key
        self.maint = ble.Maintenance(self.hal, dev, root, self._info, self._command)
        self.maint.start()
        end = self.hal.ticks_ms() + seconds * 1000
        while self.hal.ticks_diff(end, self.hal.ticks_ms()) > 0:
            self.hal.wdt_feed()
            self.hal.sleep_ms(1000)

    def _info(self):
        import json

        return json.dumps({"fw": FW_BUILD, "safe": self.safe, "errors": self.errors[:4],
                           "fcnt": self.counter.peek() if self.counter is not None else None}).encode()

    def _command(self, cmd):
        if cmd == b"exit-safe":
            self.rtc.set("sm", 0)
            self.rtc.set("bf", 0)
            return "ok"
        if cmd.startswith(b"config:"):
            import json

            try:
                obj = json.loads(cmd[7:])
            except ValueError:
                return "error: not JSON"
            errs = config.validate(obj)
            if errs:
                return "error: " + errs[0]
            config.save(self.hal.fs, obj)
            self.rtc.set("sm", 0)
            return "ok"
        return "error: unknown command"
