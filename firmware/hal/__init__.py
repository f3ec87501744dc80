"""Hardware abstraction layer: the ONLY place that imports machine, esp32, network, bluetooth.

Two implementations share one duck-typed contract (documented in docs/firmware.md, section HAL):
``esp32.Esp32Hal`` on the node and ``sim.SimHal`` (pure MicroPython-subset code with injected virtual time)
in the simulator, CI and the fleet simulator. Nothing outside this package knows where it runs.

Contract of a HAL object ``hal`` (times are ints; nothing returns floats):
  hal.fs                              flash filesystem: open(path, mode), rename(a, b), remove(p), exists(p),
                                      listdir(dir), mkdir(dir); rename replaces atomically (LittleFS)
  hal.ticks_ms() / hal.sleep_ms(ms)   monotonic milliseconds since boot / busy or light sleep
  hal.sleep_us(us)                    short busy wait (LED pulse settling)
  hal.time() / hal.set_time(s)        RTC seconds (kept across deep sleep, lost on power loss)
  hal.rtc_memory() / hal.set_rtc_memory(b)   RTC slow memory (<= 2048 bytes, kept across deep sleep)
  hal.reset_cause()                   index into schema.RESET_CAUSES
  hal.wake_reason()                   one of WAKE_* below
  hal.deep_sleep(ms, wake_pins)       never returns (the chip resets; sim raises DeepSleep)
  hal.reset()                         never returns
  hal.wdt_start(ms) / hal.wdt_feed()  machine.WDT
  hal.pin(name, out)                  .value() / .value(v); names are logical (pinout in docs/firmware.md)
  hal.adc(name)                       .read_uv()
  hal.i2c()                           .readfrom_mem(addr, reg, n) / .writeto_mem(addr, reg, buf); OSError if absent
  hal.uart(name, baud)                .write(b) / .read() -> bytes or None (non-blocking)
  hal.pulse_input(name)               .take() -> list of (t_ms, channel, level) raw edges since last take
  hal.battery_mv()                    battery voltage in mV (ADC through the divider)
  hal.net_up(cfg, timeout_ms)         bring the cellular data link up -> bool
  hal.connect(host, port, timeout_ms) -> stream with .write(b), .recv(n, timeout_ms) -> bytes
                                      (b"" on timeout), .close(); raises OSError on failure
  hal.ble()                           .advertise(adv, rsp, interval_ms, connectable) / .stop() /
                                      .serve(service_uuid, chars, on_write) / .notify(handle, data)
"""

WAKE_POWER = "power"  # not a wake from deep sleep
WAKE_TIMER = "timer"
WAKE_ALARM = "alarm"  # alarm input (smoke test button, tamper, cover switch)
WAKE_MOTION = "motion"  # accelerometer INT1
WAKE_PULSE = "pulse"  # meter reed edge
