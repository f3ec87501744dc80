"""Radio links. Each link object has the same surface, used by the node life cycle:
  open() -> bool                      bring the modem / connection up (bounded by its own deadline)
  send(frame, listen) -> (ok, downlinks)   transmit one frame; when ``listen`` keep a receive window open
                                      and return the downlink frames heard in it (raw bytes)
  close()                             release the modem / connection (before deep sleep)
  rssi, snr_x10                       of the last downlink heard (None if none)
Links never raise on radio trouble: failures come back as ok=False and are counted in ``errors``.
"""
