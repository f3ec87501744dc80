"""The gateway's rule engine (docs/rules.md)."""

MODES = ("daily", "holiday", "emergency")  # the operating modes (``lifeline gateway rules mode``)
