"""The gateway's counters, created once and shared by the stages (exported by metrics.py)."""

from __future__ import annotations

from lifeline.gateway.metrics import Metrics


class Stats:
    def __init__(self, metrics: Metrics) -> None:
        m = metrics
        self.metrics = m
        self.frames_in = m.counter("frames_in_total", "Frames handed over by ingress adapters.", ("radio", "adapter"))
        self.accepted = m.counter("readings_accepted_total", "Readings verified and accepted (first copy).",
                                  ("radio",))
        self.rejects = m.counter("rejects_total", "Frames not accepted, by reason.", ("reason", "radio"))
        self.duplicates = m.counter("duplicate_receptions_total", "Extra receptions attached to a reading.",
                                    ("radio",))
        self.rules_errors = m.counter("rules_errors_total", "Rules hook calls that raised (reading kept).")
        self.commits = m.counter("commits_total", "Durable buffer transactions (group commits).")
        self.committed = m.counter("committed_total", "Records committed to the buffer, by priority.",
                                   ("priority",))
        self.late_receptions = m.counter("late_receptions_total",
                                         "Receptions that arrived after their reading was signed (sent as events).")
        self.drops = m.counter("buffer_drops_total", "Buffered records dropped by policy.", ("reason", "priority"))
        self.published = m.counter("readings_out_total", "Records PUBACKed by the platform broker.",
                                   ("lane", "radio"))
        self.batches = m.counter("batches_out_total", "Signed batches PUBACKed.", ("lane",))
        self.publish_failures = m.counter("publish_failures_total", "Batch publishes that got no PUBACK.")
        self.republished = m.counter("republished_batches_total", "Outbox batches sent again (same bytes).")
        self.downlinks = m.counter("downlinks_total", "Downlink frames handed to adapters, by result.",
                                   ("adapter", "kind", "result"))
        self.commands = m.counter("commands_total", "Platform commands by final status.", ("status",))
