# Device entry: one wake of the node, then deep sleep. A crash leaves the boot-failure counter raised in
# RTC memory (the node's boot guard turns repeated crashes into safe mode) and sleeps briefly.
import sys

from lifeline.firmware.hal import esp32

hal = esp32.Esp32Hal()
sleep_ms = 60000
pins = ()
try:
    from lifeline.firmware import node

    n = node.Node(hal)
    sleep_ms = n.wake()
    pins = n.wake_pins()
    if n.reboot:  # a new app bundle was installed: boot.py switches to it (on trial)
        hal.reset()
except Exception as e:
    sys.print_exception(e)
    sleep_ms = 10000
hal.deep_sleep(sleep_ms, pins)
