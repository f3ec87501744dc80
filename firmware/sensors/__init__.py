"""Sensor drivers and detection logic, written against datasheets, reaching hardware only through the HAL.

Every sensor object has the same small surface, used by the node life cycle:
  sample(now) -> list of events: ("raise", cause, value) | ("clear", cause, value) | ("fault", code, detail)
                 | ("report",) (send a report now, e.g. a self-test result)
  report() -> dict of wire fields for the kind's periodic report
  busy() -> True while the node must stay awake (alarm sounding, rising water)
  next_sample_s() -> seconds until the sensor wants the next sample
  wake_pins() -> logical pin names that may wake the node from deep sleep
  on_ack(alarm_id, state) -> an acknowledgement downlink arrived
Per-sensor state that must survive deep sleep lives in ``st`` (a dict section of RTC memory).
"""
