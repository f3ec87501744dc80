# The node life cycle: one call of Node.wake() is one wake of the ESP32 between two deep sleeps:
#   boot guard -> config -> sensors -> alarms / reports / heartbeat -> radio (retries, queue) ->
#   downlinks -> stay awake while needed (alarm sounding, maintenance) -> state saved -> sleep time.
# main.py then calls hal.deep_sleep(). All per-node state is in this object, RTC memory and flash, so a
# fleet simulator can run thousands of nodes in one process. Every byte on the air goes through
# lifeline.protocols.frame.
# MicroPython subset.

from lifeline.firmware import config, fcnt, storage
from lifeline.firmware.rtcstate import RtcState
from lifeline.protocols import frame, schema

try:
    from micropython import const
except ImportError:

    def const(x):
        return x

FW_BUILD = const(100)
_WDT_MS = const(30000)
_ALARM_TRIES = const(3)
_ALARM_RETRY_MS = const(2000)
MAX_AWAKE_MS = const(600000)  # an awake episode (alarm sounding, maintenance) is cut into 10-minute wakes
TICK_MS = const(250)
_QUEUE_BUDGET = const(8)  # queued readings sent per wake
_SHORTEST_FRAME = const(30)  # bytes: pacing assumes the shortest uplink (the most conservative pause)
_SAFE_RETRY_S = const(86400)
_LINK_CHECK_EVERY = const(8)  # every 8th periodic report asks for an ACK: unacknowledged LoRa is blind
TRIAL_PATH = "/app/trial"  # bootsel.TRIAL / ROLLED: checked by existence so bootsel loads only when needed
ROLLED_PATH = "/app/rolled"
QUEUE_PATH = "/queue"  # txqueue.PATH (the module is imported only when a reading must be queued)
BOOTED_PATH = "/booted"

PRIO_ALARM = const(0)
PRIO_EVENT = const(1)
PRIO_PERIODIC = const(2)

_RC_DEEP_SLEEP = const(3)
_FAULT_STORAGE = const(3)
_FAULT_LOW_BATTERY = const(4)
_FAULT_CONFIG = const(5)
_FAULT_BOOT_LOOP = const(6)
_FAULT_OTA_ROLLBACK = const(7)


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
    if k == "electricity_meter":
        from lifeline.firmware.sensors import electricity
        return electricity.ElectricityMeter(hal, cfg, st)
    from lifeline.firmware.sensors import meter
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
        self.trial = False
        self.reboot = False  # an OTA install asks for a reset instead of a sleep
        self.maint = None

    # ================================================================ wake
    def wake(self):
        """Run one wake; returns the deep-sleep time in ms."""
        hal = self.hal
        hal.wdt_start(_WDT_MS)
        obj, digest, err = config.read(hal.fs)
        idn = config.identity(obj)
        self.rtc = RtcState(hal, idn.device_id if idn is not None else b"unprovisioned")
        rtc = self.rtc
        fresh = not rtc.load()
        if err is not None:
            cfg, errors = None, [err]
        else:
            cfg, errors = config.build(obj, rtc.get("cv") == digest)
        rtc.set("cv", digest if cfg is not None else None)
        self.cfg = cfg
        self.errors = errors
        cause = hal.reset_cause()
        if fresh:
            rtc.set("pt", hal.time())  # RTC time at power-on, for the uptime field
            rtc.set("ts", 0)  # clock synchronised?
        if cause != _RC_DEEP_SLEEP:
            rtc.set("rc", cause)
        fails = rtc.get("bf", 0)
        rtc.set("bf", fails + 1)  # cleared when this wake ends cleanly
        rtc.save()
        if idn is None:
            return self._finish(self._safe_mode(None, _FAULT_CONFIG, 0))
        first = not hal.fs.exists(BOOTED_PATH)
        try:
            self.counter = fcnt.FrameCounter(hal.fs, rtc, first)
        except fcnt.CounterLost:
            self.counter = None
            return self._finish(self._safe_mode(None, _FAULT_STORAGE, 1))
        if first:
            storage.write_atomic(hal.fs, BOOTED_PATH, b"1")
        self.keys = frame.derive_keys(idn.root_key, idn.device_id, idn.suite)
        self.dev_id = idn.device_id
        now = hal.time()
        if cfg is None:
            return self._finish(self._safe_mode(None, _FAULT_CONFIG, len(errors)))
        limit = cfg.max_boot_failures
        if rtc.get("sm") and now - rtc.get("sm_t", now) >= _SAFE_RETRY_S:
            rtc.set("sm", 0)
        if fails >= limit or rtc.get("sm"):
            if not rtc.get("sm"):
                rtc.set("sm", 1)
                rtc.set("sm_t", now)
            return self._finish(self._safe_mode(cfg, _FAULT_BOOT_LOOP, fails))
        return self._finish(self._normal(cfg, now))

    def _finish(self, sleep_ms):
        if self.queue is not None:
            self.queue.flush()
        if self.radio is not None:
            self.radio.close()
        self.rtc.set("bf", 0)
        self.rtc.save()
        return sleep_ms

    # ================================================================ normal operation
    def _normal(self, cfg, now):
        hal = self.hal
        rtc = self.rtc
        if hal.fs.exists(QUEUE_PATH):
            self._queue()
        self.sensor = make_sensor(hal, cfg, rtc.section("s"))
        self.sensor.clock_ok = bool(rtc.get("ts"))
        out = []  # [prio, kind, fields, ack_req]
        trial = False
        if hal.fs.exists(TRIAL_PATH) or hal.fs.exists(ROLLED_PATH):
            from lifeline.firmware import bootsel

            rolled = bootsel.take_rollback(hal.fs)
            if rolled is not None:
                out.append([PRIO_EVENT, schema.K_FAULT, {1: _FAULT_OTA_ROLLBACK, 2: rolled}, False])
            trial = bootsel.in_trial(hal.fs)
        self.trial = trial
        ev = self.sensor.sample(now, hal.wake_reason() == "motion")
        mv = hal.battery_mv()
        force_report = self._events(ev, out, mv)
        low = mv < cfg.low_battery_mv
        if low and not rtc.get("lb"):
            out.append([PRIO_EVENT, schema.K_FAULT, {1: _FAULT_LOW_BATTERY, 2: mv, 15: mv}, False])
        rtc.set("lb", 1 if low else 0)
        interval = cfg.interval
        if hasattr(self.sensor, "report_interval"):
            interval = self.sensor.report_interval(interval)
        last = rtc.get("lr", -1)
        if force_report or trial or last < 0 or now - last >= interval or now < last:
            lk = rtc.get("lk", 0) + 1
            check = trial or lk >= _LINK_CHECK_EVERY or (self.queue is not None and len(self.queue) > 0)
            out.append([PRIO_PERIODIC, cfg.kind, self._report_fields(mv), check])
            rtc.set("lk", lk)
            rtc.set("lr", now)
        lh = rtc.get("lh", -1)
        if lh < 0 or now - lh >= cfg.heartbeat or now < lh:
            from lifeline.firmware import reports

            # the heartbeat asks for an ACK: a daily link check and a chance for queued commands
            out.append([PRIO_PERIODIC, schema.K_HEARTBEAT, reports.heartbeat(self, mv), True])
            rtc.set("lh", now)
        if hal.fs.exists("/rekey"):  # rekey.PATH: an over-the-air re-key is pending (the module loads only then)
            from lifeline.firmware import rekey

            rekey.resume(self)
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

    def _events(self, ev, out, mv):
        """Turn sensor events into outgoing readings; True when a kind report should go now."""
        if not ev:
            return False
        from lifeline.firmware import reports

        return reports.events(self, ev, out, mv)

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
        # class-A style: a receive window after every LoRa/NB-IoT uplink (rx_ms 0 turns it off); BLE stays
        # connectable only after frames that ask for an answer (docs/ble.md 2.3)
        listen = ack or self.cfg.radio != "ble"
        for attempt in range(tries):
            if attempt:
                self.hal.sleep_ms(_ALARM_RETRY_MS * attempt)
                self.hal.wdt_feed()
            c, data = self._encode(kind, fields, t, ack, queued)
            ok, downs = self.radio.send(data, listen)
            if ok:
                self.tx.append(data)
            acked = self._downlinks(downs, c)
            if acked:
                self.rtc.set("lk", 0)
            if ok and (not ack or acked or self.cfg.radio == "ble"):
                if ack and acked and self.trial and not self.confirmed:
                    from lifeline.firmware import bootsel

                    self.confirmed = bootsel.confirm(self.hal.fs)
                return True
        return False

    def _queue(self):
        if self.queue is None:
            from lifeline.firmware import txqueue

            self.queue = txqueue.TxQueue(self.hal.fs)
        return self.queue

    def _send_all(self, out, now):
        t = now if self.rtc.get("ts") else 0
        q = self.queue
        # while queued readings wait for their backoff, new periodic ones join them without a transmission
        waiting = q is not None and len(q) > 0 and not q.due(now)
        failed = False
        for prio, kind, fields, ack in out:
            if prio == PRIO_ALARM or not (waiting or failed):
                if self._transmit(kind, fields, t, ack, False, _ALARM_TRIES if prio == PRIO_ALARM else 1):
                    continue
                failed = True
            self._queue().push(prio, t, kind, fields, ack)
        q = self.queue
        if q is None or not len(q):
            return
        if failed:
            q.failed(now)
            return
        if waiting:
            return
        n = 0
        last_ack = None
        pause_for = getattr(self.radio, "ack_pause_ms", None)
        while len(q) and n < _QUEUE_BUDGET:
            prio, qt, kind, fields, ack = q.peek()
            if last_ack is not None and pause_for is not None:
                # back to back, every second ACK would fall in the gateway's duty-cycle silence
                pause = pause_for(self.hal.ticks_ms() - last_ack, _SHORTEST_FRAME)
                if pause:
                    self.hal.sleep_ms(pause)
                    self.hal.wdt_feed()
            # a queued reading leaves the queue only when the gateway confirms it
            if not self._transmit(kind, fields, qt, True, True, 1):
                q.failed(now)
                return
            last_ack = self.hal.ticks_ms()
            q.pop()
            n += 1
        q.succeeded()

    # ================================================================ downlinks
    def _downlinks(self, datas, sent_fcnt):
        """Verify and apply downlinks heard after sending ``sent_fcnt``; True if one acknowledges it."""
        if not datas:
            return False
        from lifeline.firmware import downlink

        return downlink.handle(self, datas, sent_fcnt)

    # ================================================================ staying awake
    def _stay_awake(self, cfg):
        if self.sensor.busy() or self.maint_until >= 0:
            from lifeline.firmware import awake

            awake.run(self, cfg)

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
        from lifeline.firmware import safemode

        return safemode.run(self, cfg, code, detail)
