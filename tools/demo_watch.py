"""What the demo shows, gathered from the three places that know it:

* the **district** (the fleet simulator in this process): when each node frame left its node, from which
  kind of node and over which radio; alarm frames decoded with the node's own keys;
* the **gateway** (its Prometheus endpoint and status page): readings accepted, duplicate receptions,
  rejects, backlog, oldest age, uplink state, rule firings, open alarms with their life-cycle stage;
* the **platform sink's database** (read incrementally with its own read-only connection): the readings
  delivered (once each), their lanes and store times, and the gateway's audit records (alarm steps).

:meth:`Watch.snapshot` freezes it into a :class:`Snapshot` for the views; nothing here draws.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lifeline.gateway.alarms import STEPS
from lifeline.gateway.rules_engine import audit
from lifeline.gateway.statusinfo import summarise
from lifeline.protocols import fastpath, frame, schema

RADIOS = ("lora-serial", "lora-udp", "nbiot", "ble")
EVENTS_KEPT = 200


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class AlarmView:
    """One node alarm as the district, the gateway and the platform saw it (seconds since the start)."""

    device: bytes
    alarm_id: int
    node: str
    where: str
    cause: str
    raised_s: float | None = None  # the node sent alarm_raised
    stored_s: float | None = None  # the reading is at the platform
    lane: str = ""
    platform_ack_s: float | None = None  # the platform operator acknowledged it
    steps: dict[str, float] = field(default_factory=dict)  # gateway audit steps (at the platform)
    gateway_stage: str | None = None  # the gateway's live view (status page), None once it is finished
    escalated_live: bool = False
    cleared_s: float | None = None  # the node sent alarm_cleared


@dataclass(frozen=True, slots=True)
class Latency:
    n: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms}


def latency(values: list[float]) -> Latency:
    s = sorted(values)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 1)

    return Latency(len(s), r(percentile(s, 50)), r(percentile(s, 99)), r(s[-1] if s else None))


@dataclass(frozen=True, slots=True)
class Snapshot:
    t_s: float
    sent: dict[tuple[str, str], int]  # (kind, node radio) -> frames the nodes sent
    heard: dict[tuple[str, str], int]  # ... that reached a gateway radio
    delivered: dict[tuple[str, str], int]  # ... readings stored by the platform
    frames_sent: int
    frames_heard: int
    delivered_total: int  # distinct readings at the platform
    backlog_delivered: int  # of which came on the backlog lane
    audit_records: int
    gateway: dict[str, Any] | None  # statusinfo.summarise of the last scrape (None: no answer yet)
    gateway_age_s: float | None  # how old that scrape is
    live: Latency
    alarm_latency: Latency
    backlog_latency: Latency
    alarms: tuple[AlarmView, ...]
    sms: tuple[tuple[float, str, str], ...]  # (t, number, text)
    lan: tuple[tuple[float, str, str], ...]  # (t, topic, payload)
    sink_counters: dict[str, int]
    max_backlog: int
    max_oldest_s: float
    events: tuple[tuple[float, str], ...]


class Watch:
    def __init__(self, t0: float, fleet: Any, sink_db: Path) -> None:
        self.t0 = t0  # time.time() of the start
        self.fleet = fleet
        self.sink_db = sink_db
        self._db: sqlite3.Connection | None = None
        self._last_id = 0
        self.sent_at: dict[tuple[bytes, int], float] = {}
        self.node_radio: dict[bytes, str] = {v.dev_id: v.spec.radio for v in fleet.nodes}
        self.delivered: Counter[tuple[str, str]] = Counter()
        self.delivered_keys: set[tuple[bytes, int]] = set()
        self.backlog_delivered = 0
        self.backlog_first_periodic: int | None = None  # sink record ids on the backlog lane
        self.backlog_last_alarm: int | None = None
        self.audit_records = 0
        self.lat_live: list[float] = []
        self.lat_alarm: list[float] = []
        self.lat_backlog: list[float] = []
        self.alarms: dict[tuple[bytes, int], AlarmView] = {}
        self.sms: list[tuple[float, str, str]] = []
        self.lan: list[tuple[float, str, str]] = []
        self.events: list[tuple[float, str]] = []
        self.gateway: dict[str, Any] | None = None
        self.gateway_at: float | None = None
        self.max_backlog = 0
        self.max_oldest_s = 0.0
        self.sink_counters: dict[str, int] = {}
        self._fired: dict[str, float] = {}
        self._stages: dict[str, float] = {}
        self.on_event: Any = None  # callable(t_s, text) for plain output

    # ---------------------------------------------------------------------------------------- helpers

    def now_s(self, wall: float | None = None) -> float:
        return (time.time() if wall is None else wall) - self.t0

    def event(self, text: str, t_s: float | None = None) -> None:
        t = self.now_s() if t_s is None else t_s
        self.events.append((t, text))
        del self.events[:-EVENTS_KEPT]
        if self.on_event is not None:
            self.on_event(t, text)

    def _alarm(self, device: bytes, alarm_id: int, cause: int) -> AlarmView:
        key = (device, alarm_id)
        a = self.alarms.get(key)
        if a is None:
            v = self.fleet.by_dev.get(device)
            causes = schema.ALARM_CAUSES
            a = AlarmView(device, alarm_id, v.name if v is not None else device.hex(),
                          v.spec.address if v is not None else "?",
                          str(causes[cause]) if 0 <= cause < len(causes) else f"cause {cause}")
            self.alarms[key] = a
        return a

    # ---------------------------------------------------------------------------------------- district

    def on_frame(self, v: Any, payload: bytes, radio: str) -> None:
        """Fleet observer: every uplink a node sent (called inside the fleet's step)."""
        if len(payload) < frame.HEADER_LEN:
            return
        key = (payload[3:11], int.from_bytes(payload[11:15], "big"))
        self.sent_at.setdefault(key, time.time())
        kind = payload[1]
        if kind not in (schema.K_ALARM_RAISED, schema.K_ALARM_CLEARED):
            return
        try:
            fields = fastpath.decode(payload, v.keys).fields
        except frame.FrameError:
            return
        aid, cause = fields.get(1), fields.get(2)
        if not isinstance(aid, int) or not isinstance(cause, int):
            return
        a = self._alarm(v.dev_id, aid, cause)
        t = self.now_s()
        if kind == schema.K_ALARM_RAISED and a.raised_s is None:
            a.raised_s = t
            self.event(f"{a.node} ({a.where}): {a.cause} alarm raised by the node, over {radio}", t)
        elif kind == schema.K_ALARM_CLEARED and a.cleared_s is None:
            a.cleared_s = t
            self.event(f"{a.node}: alarm {aid} cleared by the node (smoke gone)", t)

    # ---------------------------------------------------------------------------------------- platform

    def _conn(self) -> sqlite3.Connection | None:
        if self._db is None:
            if not self.sink_db.exists():
                return None
            self._db = sqlite3.connect(f"file:{self.sink_db}?mode=ro", uri=True, timeout=5.0,
                                       check_same_thread=False)
        return self._db

    def poll_sink(self) -> list[tuple[bytes, int]]:
        """Read the records stored since the last call. Returns the newly stored node alarms
        (device, alarm id), for the platform operator to acknowledge."""
        db = self._conn()
        if db is None:
            return []
        rows = db.execute("SELECT id, device, fcnt, record_type, kind, lane, priority, record_json, stored_ms "
                          "FROM records WHERE id > ? ORDER BY id", (self._last_id,)).fetchall()
        new_alarms: list[tuple[bytes, int]] = []
        for rid, dev, fcnt, rtype, kind, lane, prio, rjson, stored_ms in rows:
            self._last_id = rid
            device = bytes(dev)
            stored_wall = stored_ms / 1000.0
            if rtype != 0:
                self.audit_records += 1
                if kind == audit.EV_ALARM:
                    self._audit_alarm(device, json.loads(rjson), stored_wall)
                continue
            key = (device, int(fcnt))
            self.delivered_keys.add(key)
            radio = self.node_radio.get(device, "?")
            self.delivered[(schema.KINDS[kind][0] if kind in schema.KINDS else f"kind {kind}", radio)] += 1
            if lane == 1:
                self.backlog_delivered += 1
                if prio == schema.P_PERIODIC and self.backlog_first_periodic is None:
                    self.backlog_first_periodic = rid
                elif prio == schema.P_ALARM:
                    self.backlog_last_alarm = rid
            sent = self.sent_at.get(key)
            if sent is not None:
                ms = max(0.0, (stored_wall - sent) * 1000.0)
                if lane == 1:
                    self.lat_backlog.append(ms)
                elif prio == schema.P_ALARM:
                    self.lat_alarm.append(ms)
                    self.lat_live.append(ms)
                else:
                    self.lat_live.append(ms)
            if kind == schema.K_ALARM_RAISED:
                fields = json.loads(rjson).get("fields", {})
                aid, cause = fields.get("alarm_id"), fields.get("cause")
                cause_i = schema.ALARM_CAUSES.index(cause) if cause in schema.ALARM_CAUSES else -1
                if isinstance(aid, int):
                    a = self._alarm(device, aid, cause_i if isinstance(cause_i, int) else -1)
                    if a.stored_s is None:
                        a.stored_s = self.now_s(stored_wall)
                        a.lane = "backlog" if lane == 1 else "live"
                        self.event(f"platform: {a.node} alarm {aid} stored ({a.lane} lane)", a.stored_s)
                        new_alarms.append((device, aid))
        return new_alarms

    def _audit_alarm(self, device: bytes, rec: dict[str, Any], stored_wall: float) -> None:
        f = rec.get("fields", {})
        aid, cause, step = f.get(str(audit.FAL_ID)), f.get(str(audit.FAL_CAUSE)), f.get(str(audit.FAL_STEP))
        if not isinstance(aid, int) or not isinstance(step, int) or not 0 <= step < len(STEPS):
            return
        a = self._alarm(device, aid, cause if isinstance(cause, int) else -1)
        name = STEPS[step]
        if name not in a.steps:
            a.steps[name] = self.now_s(int(rec.get("rx_ms", stored_wall * 1000)) / 1000.0)

    @property
    def alarms_first(self) -> bool | None:
        """Did every alarm-priority reading of the backlog reach the platform before the first periodic one?
        (None: no alarm or no periodic reading on the backlog lane.)"""
        if self.backlog_last_alarm is None or self.backlog_first_periodic is None:
            return None
        return self.backlog_last_alarm < self.backlog_first_periodic

    def platform_acked(self, device: bytes, alarm_id: int) -> None:
        a = self.alarms.get((device, alarm_id))
        if a is not None and a.platform_ack_s is None:
            a.platform_ack_s = self.now_s()
            self.event(f"platform: operator acknowledged {a.node} alarm {alarm_id}", a.platform_ack_s)

    # ---------------------------------------------------------------------------------------- gateway

    def gateway_metrics(self, parsed: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        now = time.time()
        s = summarise(parsed, now_s=now)
        self.gateway, self.gateway_at = s, now
        backlog = int(sum(s["backlog"].values()))
        self.max_backlog = max(self.max_backlog, backlog)
        self.max_oldest_s = max(self.max_oldest_s, float(s["oldest_buffered_age_s"]))
        rules = s.get("rules") or {}
        for rule, n in sorted((rules.get("fired") or {}).items()):
            if n > self._fired.get(rule, 0):
                self.event(f"gateway rule {rule} fired ({int(n)}x so far)")
            self._fired[rule] = n
        for stage, n in sorted((rules.get("alarm_stages") or {}).items()):
            self._stages[stage] = n

    def gateway_status(self, status: dict[str, Any]) -> None:
        seen: set[tuple[bytes, int]] = set()
        for row in status.get("open_alarms") or []:
            try:
                device, aid = bytes.fromhex(row["device_id"]), int(row["alarm_id"])
            except (KeyError, ValueError, TypeError):
                continue
            causes = schema.ALARM_CAUSES
            cause = causes.index(row.get("cause")) if row.get("cause") in causes else -1
            a = self._alarm(device, aid, cause)
            a.gateway_stage = str(row.get("stage", ""))
            if row.get("escalated") and not a.escalated_live:
                a.escalated_live = True
                self.event(f"gateway: {a.node} alarm {aid} escalated locally (no platform ack in time)")
            seen.add((device, aid))
        for key, a in self.alarms.items():
            if key not in seen:
                a.gateway_stage = None

    def sms_sent(self, number: str, text: str, at_wall: float) -> None:
        t = self.now_s(at_wall)
        self.sms.append((t, number, text))
        self.event(f"SMS to {number}: {text[:70]}", t)

    def lan_message(self, topic: str, payload: str) -> None:
        t = self.now_s()
        self.lan.append((t, topic, payload))
        self.event(f"LAN {topic}: {payload[:70]}", t)

    # ---------------------------------------------------------------------------------------- freeze

    def snapshot(self, sink_counters: dict[str, int] | None = None) -> Snapshot:
        f = self.fleet
        if sink_counters is not None:
            self.sink_counters = dict(sink_counters)
        now = time.time()
        return Snapshot(
            t_s=now - self.t0, sent=dict(f.sent_by), heard=dict(f.heard_by), delivered=dict(self.delivered),
            frames_sent=int(f.counters["frames_sent"]), frames_heard=int(f.counters["frames_heard"]),
            delivered_total=len(self.delivered_keys), backlog_delivered=self.backlog_delivered,
            audit_records=self.audit_records, gateway=self.gateway,
            gateway_age_s=None if self.gateway_at is None else now - self.gateway_at,
            live=latency(self.lat_live), alarm_latency=latency(self.lat_alarm),
            backlog_latency=latency(self.lat_backlog),
            alarms=tuple(replace(a, steps=dict(a.steps))  # a copy: the views may draw it later
                         for a in sorted(self.alarms.values(), key=lambda a: (a.raised_s is None, a.raised_s or 0.0))),
            sms=tuple(self.sms), lan=tuple(self.lan), sink_counters=dict(self.sink_counters),
            max_backlog=self.max_backlog, max_oldest_s=round(self.max_oldest_s, 1), events=tuple(self.events))

    def heard_not_delivered(self) -> list[tuple[bytes, int]]:
        """Frames the district knows reached a gateway radio, valid for the registry, and not at the
        platform (a cross-check of the gateway's own count; a heard frame may still be rejected)."""
        from lifeline.tools.demo_stack import sim_district

        want: set[tuple[bytes, int]] = sim_district().heard_valid(self.fleet)
        return sorted(want - self.delivered_keys)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
