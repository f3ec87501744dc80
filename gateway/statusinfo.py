"""The facts `lifeline gateway status` and the status page show, from one source.

:func:`summarise` turns the daemon's Prometheus text into the status summary (health, radios, backlog,
uplink, disk, ...); the CLI applies it to a scrape of ``/metrics``, the status page to the same text
rendered in-process, so both show the same figures. What metrics cannot carry (a reception per device,
the last alarms) is kept by :class:`Seen`, which watches the ingest stage's output on its way to the
commit stage (:class:`ObservedQueue`): verified readings only, never a forged or rejected frame. It is
memory since the daemon started (one small entry per device heard), not a history.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lifeline.gateway.records import RF_TEST, Reading, ReceptionUpdate
from lifeline.protocols import schema

if TYPE_CHECKING:
    from lifeline.gateway.daemon import Gateway

P = "lifeline_gateway_"
STALE_S = 15.0  # a stage heartbeat older than this is what stops the systemd watchdog (WatchdogSec/2)
ALARMS_KEPT = 20
Parsed = Mapping[str, list[tuple[dict[str, str], float]]]


# ---------------------------------------------------------------------------------------------- summary


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def summarise(parsed: Parsed, now_s: float | None = None) -> dict[str, Any]:
    """The status summary from parsed metrics (:func:`metrics.parse_text`). The keys of earlier versions
    (running .. devices) keep their meaning; health, radios, disk, uplink_connected, inflight_batches and
    last_alarm_age_s were added."""
    now = time.time() if now_s is None else now_s

    def one(name: str) -> float:
        return sum(v for _, v in parsed.get(P + name, []))

    def has(name: str) -> bool:
        return P + name in parsed

    def by(name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, v in parsed.get(P + name, []):
            key = labels.get(label, "")
            out[key] = out.get(key, 0) + v
        return out

    stages = {lab.get("stage", ""): v for lab, v in parsed.get(P + "stage_heartbeat_age_seconds", [])}
    stale = sorted(n for n, age in stages.items() if age > STALE_S)
    radios: dict[str, dict[str, Any]] = {}

    def radio(name: str) -> dict[str, Any]:
        return radios.setdefault(name, {"frames_in": 0, "accepted": 0, "duplicates": 0, "rejected": 0,
                                        "adapters": {}})

    for lab, v in parsed.get(P + "frames_in_total", []):
        r = radio(lab.get("radio", ""))
        r["frames_in"] += _num(v)
        ad = r["adapters"].setdefault(lab.get("adapter", ""), {"frames_in": 0, "counters": {}})
        ad["frames_in"] += _num(v)
    for name, key in (("readings_accepted_total", "accepted"), ("duplicate_receptions_total", "duplicates"),
                      ("rejects_total", "rejected")):
        for lab, v in parsed.get(P + name, []):
            radio(lab.get("radio", ""))[key] += _num(v)
    for lab, v in parsed.get(P + "adapter_counter", []):
        adapter = lab.get("adapter", "")
        for r in radios.values():
            if adapter in r["adapters"]:
                r["adapters"][adapter]["counters"][lab.get("counter", "")] = _num(v)
                break
        else:
            radio("?")["adapters"].setdefault(adapter, {"frames_in": 0, "counters": {}})["counters"][
                lab.get("counter", "")] = _num(v)
    disk_bytes = by("disk_bytes", "db")
    last_alarm = one("last_alarm_timestamp_seconds")
    rules = None
    if has("rules_loaded"):  # the rules engine runs ([rules] files configured)
        modes = [lab.get("mode", "") for lab, v in parsed.get(P + "rules_mode", []) if v]
        fired: dict[str, float] = {}
        for lab, v in parsed.get(P + "rules_fired_total", []):
            if lab.get("state") == "fired":
                fired[lab.get("rule", "")] = fired.get(lab.get("rule", ""), 0) + _num(v)
        rules = {"loaded": _num(one("rules_loaded")), "active": _num(one("rules_active")),
                 "mode": modes[0] if modes else None, "failover": bool(one("rules_failover")),
                 "fired": fired, "actions": by("rules_actions_total", "result"),
                 "alarm_stages": by("alarms", "stage")}
    return {
        "running": True,
        "health": {"state": "stale" if stale else "ok", "stale_stages": stale,
                   "stages": {k: round(v, 1) for k, v in sorted(stages.items())}},
        "backlog": by("backlog", "priority"),
        "outbox_batches": one("outbox_batches"),
        "inflight_batches": one("inflight_batches"),
        "oldest_buffered_age_s": one("oldest_buffered_age_seconds"),
        "drain_rate": one("drain_rate"),
        "drain_eta_s": one("drain_eta_seconds"),
        "uplink": {lab.get("endpoint", ""): lab.get("state", "") for lab, _ in parsed.get(P + "uplink_up", [])},
        "uplink_connected": bool(one("uplink_connected")),
        "radios": radios,
        "frames_in": by("frames_in_total", "radio"),
        "accepted": by("readings_accepted_total", "radio"),
        "out": by("readings_out_total", "lane"),
        "rejects": by("rejects_total", "reason"),
        "drops": by("buffer_drops_total", "reason"),
        "disk_bytes": disk_bytes,
        "disk": {
            "buffer_bytes": _num(disk_bytes.get("buffer", 0)),
            "registry_bytes": _num(disk_bytes.get("registry", 0)),
            "quota_bytes": _num(one("disk_quota_bytes")),
            "over_quota": bool(one("over_quota")),
            "free_bytes": _num(one("disk_free_bytes")) if has("disk_free_bytes") else None,
            "total_bytes": _num(one("disk_total_bytes")) if has("disk_total_bytes") else None,
        },
        "next_seq": one("next_seq"),
        "devices": by("devices", "status"),
        "last_alarm_age_s": round(max(0.0, now - last_alarm), 1) if last_alarm > 0 else None,
        "rules": rules,
        "keys": {lab.get("key", ""): {"where": lab.get("where", ""), "cipher": lab.get("cipher", "")}
                 for lab, _ in parsed.get(P + "key_storage", [])},
        "certificate_expires_in_s": (_num(one("certificate_expires_in_seconds"))
                                     if has("certificate_expires_in_seconds") else None),
    }


def age_text(seconds: float | None) -> str:
    """12 s, 4 min, 3 h, 2 d: how long ago, at a glance."""
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 36 * 3600:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def size_text(n: float | None) -> str:
    """Binary units, as quota_mb is (MiB)."""
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # not reached


# ---------------------------------------------------------------------------------------------- seen


class DeviceSeen:
    """The last verified frame of one device and its best reception."""

    __slots__ = ("adapter", "fcnt", "kind", "radio", "receptions", "rssi", "rx_ms", "snr_x10", "test")

    def __init__(self, r: Reading) -> None:
        self.update(r)

    def update(self, r: Reading) -> None:
        rc = r.receptions[0]
        self.rx_ms = rc.rx_ms
        self.fcnt = r.fcnt
        self.kind = r.kind
        self.test = bool(r.flags & RF_TEST)
        self.radio = rc.radio
        self.adapter = rc.adapter
        self.rssi = rc.rssi
        self.snr_x10 = rc.snr_x10
        self.receptions = len(r.receptions)


class AlarmSeen:
    __slots__ = ("adapter", "device_id", "fcnt", "kind", "radio", "rssi", "rx_ms", "test")

    def __init__(self, r: Reading) -> None:
        rc = r.receptions[0]
        self.device_id = r.device_id
        self.kind = r.kind
        self.fcnt = r.fcnt
        self.rx_ms = rc.rx_ms
        self.radio = rc.radio
        self.adapter = rc.adapter
        self.rssi = rc.rssi
        self.test = bool(r.flags & RF_TEST)


class Seen:
    """Per device: the last verified frame and its best reception; and the last alarms (bounded)."""

    def __init__(self, started_ms: int, alarms_kept: int = ALARMS_KEPT) -> None:
        self.started_ms = started_ms
        self.devices: dict[bytes, DeviceSeen] = {}
        self.alarms: deque[AlarmSeen] = deque(maxlen=alarms_kept)
        self.last_alarm_ms = 0
        self.errors = 0

    def observe(self, item: object) -> None:
        """One ingest output batch (a list of records; anything else is ignored). Never raises."""
        if not isinstance(item, list):
            return
        try:
            for x in item:
                if type(x) is Reading:
                    d = self.devices.get(x.device_id)
                    if d is None:
                        self.devices[x.device_id] = DeviceSeen(x)
                    else:
                        d.update(x)
                    if x.priority == schema.P_ALARM:
                        self.alarms.append(AlarmSeen(x))
                        self.last_alarm_ms = max(self.last_alarm_ms, x.rx_ms)
                elif type(x) is ReceptionUpdate:
                    d = self.devices.get(x.device_id)
                    if d is not None and d.fcnt == x.fcnt:
                        d.receptions += 1
                        rc = x.reception
                        if rc.rssi is not None and (d.rssi is None or rc.rssi > d.rssi):
                            d.rssi, d.snr_x10, d.radio, d.adapter = rc.rssi, rc.snr_x10, rc.radio, rc.adapter
        except Exception:  # the status view must never cost the ingest stage anything
            self.errors += 1


class ObservedQueue(asyncio.Queue[Any]):
    """The ingest -> commit queue, showing each batch to an observer as it is queued."""

    def __init__(self, observe: Callable[[object], None], maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._observe = observe

    def _put(self, item: Any) -> None:
        self._observe(item)
        super()._put(item)


# ---------------------------------------------------------------------------------------------- daemon side


def register_gauges(gw: Gateway) -> None:
    """Gauges the status needs that the stages do not keep: file system space, the last alarm."""
    state_dir = gw.config.gateway.state_dir

    def usage() -> tuple[int, int]:
        with contextlib.suppress(OSError):
            u = shutil.disk_usage(state_dir)
            return u.free, u.total
        return 0, 0

    m = gw.metrics
    m.gauge("disk_free_bytes", "Free space on the file system of the state directory (for the daemon user).",
            lambda: [((), usage()[0])])
    m.gauge("disk_total_bytes", "Size of the file system of the state directory.", lambda: [((), usage()[1])])
    m.gauge("last_alarm_timestamp_seconds", "Receive time of the last alarm-priority reading (0: none yet).",
            lambda: [((), gw.seen.last_alarm_ms / 1000)])
    m.gauge("devices_heard", "Devices with a verified frame since the daemon started.",
            lambda: [((), len(gw.seen.devices))])


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _kind(k: int) -> str:
    entry = schema.KINDS.get(k)
    return str(entry[0]) if entry else f"kind_{k}"


def device_rows(gw: Gateway, now_ms: int, query: str = "", limit: int = 200) -> list[dict[str, Any]]:
    """Devices heard since start, most recent first (``query``: a device id prefix, hex)."""
    q = query.strip().lower()
    items: Iterable[tuple[bytes, DeviceSeen]] = gw.seen.devices.items()
    if q:
        items = [(d, s) for d, s in items if d.hex().startswith(q)]
    ordered = sorted(items, key=lambda i: i[1].rx_ms, reverse=True)[:max(0, limit)]
    rows = []
    for dev, s in ordered:
        info = gw.devices.get(dev)
        rows.append({
            "device_id": dev.hex(), "status": info.status if info is not None else "unknown",
            "last_seen_s": round(max(0, now_ms - s.rx_ms) / 1000, 1), "last_seen": _iso(s.rx_ms),
            "kind": _kind(s.kind), "fcnt": s.fcnt, "test": s.test, "radio": s.radio, "adapter": s.adapter,
            "rssi": s.rssi, "snr": None if s.snr_x10 is None else s.snr_x10 / 10, "receptions": s.receptions,
        })
    return rows


def alarm_rows(gw: Gateway, now_ms: int) -> list[dict[str, Any]]:
    """The last alarm-priority readings, newest first."""
    return [{"device_id": a.device_id.hex(), "kind": _kind(a.kind), "fcnt": a.fcnt, "test": a.test,
             "age_s": round(max(0, now_ms - a.rx_ms) / 1000, 1), "time": _iso(a.rx_ms), "radio": a.radio,
             "adapter": a.adapter, "rssi": a.rssi} for a in reversed(gw.seen.alarms)]


def _cause(c: int) -> str:
    causes = schema.ALARM_CAUSES
    return str(causes[c]) if 0 <= c < len(causes) else f"cause_{c}"


def rules_rows(gw: Gateway, now_ms: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(open node alarms with their life-cycle stage, active rule firings) from the rules engine, when it
    runs; newest first."""
    import sys

    if "lifeline.gateway.rules_engine.service" not in sys.modules:  # never imported: no rules engine
        return [], []
    from lifeline.gateway.rules_engine.service import RulesService

    svc = gw.rules
    if not isinstance(svc, RulesService):
        return [], []

    def age(ms: int | None) -> float | None:
        return None if ms is None else round(max(0, now_ms - ms) / 1000, 1)

    alarms = [{"device_id": a.device.hex(), "alarm_id": a.alarm_id, "cause": _cause(a.cause), "stage": a.stage,
               "raised_age_s": age(a.raised_ms), "acked": a.acked, "escalated": a.escalated_ms is not None}
              for a in sorted(svc.tracker.open_alarms(), key=lambda a: a.raised_ms, reverse=True)]
    firings = [{"rule": s.rule, "device_id": s.device.hex(), "since_age_s": age(s.since_ms), "value": s.value}
               for s in sorted(svc.engine.active(), key=lambda s: s.since_ms, reverse=True)]
    return alarms, firings


def snapshot(gw: Gateway, *, query: str = "", limit: int = 200) -> dict[str, Any]:
    """Everything the status page shows: the status summary plus devices and alarms."""
    from lifeline.gateway.metrics import parse_text

    now_ms = gw.clock.now_ms()
    out = summarise(parse_text(gw.metrics.render()), now_s=now_ms / 1000)
    out["gateway_id"] = gw.config.gateway.id
    out["generated_at"] = _iso(now_ms)
    out["uptime_s"] = round(max(0, now_ms - gw.seen.started_ms) / 1000, 1)
    out["last_alarms"] = alarm_rows(gw, now_ms)
    out["open_alarms"], out["active_firings"] = rules_rows(gw, now_ms)
    out["devices_heard"] = len(gw.seen.devices)
    out["devices_seen"] = device_rows(gw, now_ms, query, limit)
    return out
