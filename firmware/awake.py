# Staying awake between two deep sleeps: while an alarm sounds (the buzzer pattern needs the CPU) or a
# maintenance window is open (OTA chunks, technician). Samples on the sensor's fast schedule, sends new
# events at once, listens for downlinks; cut into MAX_AWAKE_MS episodes. MicroPython subset.

from lifeline.firmware.node import MAX_AWAKE_MS, PRIO_PERIODIC, TICK_MS


def run(node, cfg):
    hal = node.hal
    sensor = node.sensor
    start = hal.ticks_ms()
    next_sample = start + sensor.next_sample_s() * 1000
    while sensor.busy() or hal.ticks_diff(node.maint_until, hal.ticks_ms()) > 0:
        if hal.ticks_diff(hal.ticks_ms(), start) >= MAX_AWAKE_MS:
            break
        hal.wdt_feed()
        sensor.tick(hal.ticks_ms())
        if node.maint_until >= 0 and node.radio_ok:
            node._downlinks(node.radio.listen(TICK_MS), -1)
        else:
            hal.sleep_ms(TICK_MS)
        if hal.ticks_diff(hal.ticks_ms(), next_sample) >= 0:
            now = hal.time()
            out = []
            force = node._events(sensor.sample(now), out, hal.battery_mv())
            if force:
                out.append([PRIO_PERIODIC, cfg.kind, node._report_fields(hal.battery_mv()), False])
                node.rtc.set("lr", now)
            if out:
                node._send_all(out, now)
            next_sample = hal.ticks_ms() + sensor.next_sample_s() * 1000
    sensor.tick(hal.ticks_ms())
    if node.maint_until >= 0 and hal.ticks_diff(node.maint_until, hal.ticks_ms()) <= 0:
        node.maint_until = -1
