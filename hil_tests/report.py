"""The drill report: one HTML page (self-contained) and the same in Markdown, for a city engineer.

Everything comes from the run's files: ``kpi.jsonl`` (the drills' results and the figures they measured,
written as they ran) and ``junit.xml`` (pytest's own account, cross-checked). A headline figure that no
drill of this run measured is shown as "not measured in this run", never filled in.
"""

from __future__ import annotations

import html
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lifeline.hil_tests.kpi import read, summarize

DRILL_TITLES = {
    1: "Provision, boot, first report, registered at the platform",
    2: "Periodic cadence held for a day, heartbeats present",
    3: "Alarm end-to-end latency per node kind",
    4: "Platform outage of one hour: local rules, buffering, drain, zero loss, alarms first",
    5: "Gateway killed with SIGKILL 20 times under load: zero accepted readings lost",
    6: "Platform broker restarted 10 times under load: zero loss, reconnects alone",
    7: "Disk full on the gateway: policy applies, alarms survive, drops counted",
    8: "Radio outage at the node: queue delivers afterwards, in order, alarms first",
    9: "Replay, forgery, wrong key, revoked device: rejected, nothing forwarded",
    10: "Config downlink applied and acknowledged; alarm ack reaches the node",
    11: "OTA: good bundle adopted, bad bundle rolled back, power cut during OTA recovers",
    12: "Serial modem unplugged and replugged: the gateway recovers alone",
}

KPI_DEFINITIONS = [
    ("Delivery ratio", "Readings the platform stored divided by readings the node sent (simulator: every frame a "
     "monitor receiver beside the node logged; bench: the span of frame counters) or the gateway accepted. "
     "1.000 means nothing was lost."),
    ("Alarm latency", "Time from the alarm frame leaving the node (end of its transmission; on a bench: the "
     "gateway's first reception) to the platform sink committing it, in milliseconds; p50/p95/p99 over every "
     "alarm of the run."),
    ("Recovery time after outage", "Seconds from the platform's broker being back to every reading the gateway "
     "buffered during the outage being stored by the platform."),
    ("Backlog drained", "Readings buffered by the gateway during the outage and delivered afterwards (with the "
     "number missing, which must be 0)."),
    ("Frames rejected by reason", "The gateway's reject counters (rejects_total) at the end of the security "
     "drill: replay, bad_mic (forged or wrong key), revoked_device, and the frame codec's reasons for noise."),
    ("Node battery estimate", "tools/battery.py's life estimate (ER34615 19 Ah cell, datasheet currents) at the "
     "report cadence the platform observed for a day, next to the simulator's own charge count."),
]


KPI_LABELS = {
    "alarm_latency_ms": "alarm latency node -> platform", "alarm_detection_s": "detection time (event -> alarm sent)",
    "delivery_ratio": "delivery ratio", "battery_life_years": "battery estimate",
    "sim_charge_mah_per_day": "simulator charge count", "provisioning_s": "provisioning time",
    "provisioning_modelled_hw_s": "same traffic on real hardware (modelled)",
    "first_report_after_boot_s": "first report after boot", "reports_per_day": "reports in the day",
    "heartbeats_per_day": "heartbeats in the day", "report_interval_s": "interval between reports",
    "readings_delivered_twice": "readings delivered twice", "outage_buffered_readings": "buffered during the outage",
    "reconnect_s": "gateway reconnect time", "recovery_s": "recovery (backlog stored)",
    "backlog_drained": "backlog drained", "alarm_stored_before_backlog": "alarm stored before the backlog",
    "outage_alarm_delay_s": "alarm delay across the outage", "local_rule_latency_ms": "local rule (siren) latency",
    "kills": "SIGKILLs", "accepted_readings_checked": "accepted readings checked",
    "gateway_restart_s": "gateway restart time", "node_delivery_ratio": "node delivery ratio",
    "chain_gaps": "gaps in the batch chain", "broker_restarts": "broker restarts",
    "publish_failures": "publishes without PUBACK", "buffer_drops": "readings dropped by the quota",
    "drops_reported_to_platform": "drops reported to the platform",
    "drop_event_rows_stored_by_sink": "drop-event rows kept by the sink",
    "accepted_equals_stored_plus_dropped": "accepted = stored + dropped", "quota_bytes": "buffer quota",
    "queued_during_outage": "queued at the node during the outage", "queued_delivered": "queued readings delivered",
    "queue_drain_s": "queue drain time", "alarm_ahead_of_backlog": "alarm sent ahead of the backlog",
    "blind_reports_lost": "reports lost before the link check", "frames_rejected": "frames rejected",
    "attacker_frames": "attacker frames", "records_from_attacks": "records from attacks at the platform",
    "command_to_node_s": "command to the node", "config_applied": "configuration applied",
    "alarm_ack_to_node_s": "alarm acknowledgement to the node", "escalation_stopped_by_ack": "escalation stopped",
    "update_adopted": "update adopted", "rollback_after_boots": "rolled back after", "report_after_power_cut_s":
    "report after the power cut", "power_cut_recovered": "power cut recovered", "modem_recovery_s":
    "modem recovery", "frames_lost_while_unplugged": "frames lost while unplugged", "adapter_events": "adapter events",
}


@dataclass(slots=True)
class DrillItem:
    nodeid: str
    drill: int | None
    title: str
    outcome: str = "not run"
    duration_s: float = 0.0
    message: str = ""
    logs: list[str] = field(default_factory=list)
    kpis: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = self.nodeid.split("::")[-1]
        return name[name.index("[") + 1:-1] if "[" in name else ""


@dataclass(slots=True)
class Report:
    meta: dict[str, Any]
    items: list[DrillItem]
    junit: dict[str, int]
    headlines: list[tuple[str, str, str]]  # (name, value, detail)

    @property
    def passed(self) -> bool:
        return bool(self.items) and all(i.outcome == "passed" for i in self.items)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.passed,
            "dut": self.meta.get("dut"),
            "drills": len({i.drill for i in self.items}),
            "items": len(self.items),
            "passed": sum(i.outcome == "passed" for i in self.items),
            "failed": [i.nodeid for i in self.items if i.outcome != "passed"],
            "headlines": {n: v for n, v, _ in self.headlines},
        }


# ------------------------------------------------------------------------------------------------ building


def _junit(path: Path | None) -> dict[str, int]:
    if path is None or not path.exists():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return {"unreadable": 1}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in out:
            out[k] += int(s.get(k, 0))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def kpi_text(k: Mapping[str, Any]) -> str:
    unit = f" {k['unit']}" if k.get("unit") else ""
    labels = {a: b for a, b in k.get("labels", {}).items() if a != "note"}
    extra = ", ".join(f"{a}={_fmt(b)}" for a, b in labels.items())
    if "summary" in k:
        s = k["summary"]
        body = (f"p50 {_fmt(s['p50'])}, p95 {_fmt(s['p95'])}, p99 {_fmt(s['p99'])}, max {_fmt(s['max'])}{unit} "
                f"(n={s['n']})")
    elif "counts" in k:
        body = ", ".join(f"{a} {_fmt(b)}" for a, b in k["counts"].items()) or "none"
    else:
        body = f"{_fmt(k.get('value'))}{unit}"
    name = KPI_LABELS.get(str(k["name"]), str(k["name"]).replace("_", " "))
    return f"{name}: {body}" + (f" [{extra}]" if extra else "")


def _headlines(kpis: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    def named(*names: str) -> list[Mapping[str, Any]]:
        return [k for k in kpis if k.get("name") in names]

    out: list[tuple[str, str, str]] = []
    missing = "not measured in this run"
    # delivery ratio: overall over every drill that measured one
    ratios = named("delivery_ratio")
    if ratios:
        stored = sum(int(k["labels"].get("stored", 0)) for k in ratios)
        total = sum(int(k["labels"].get("sent", k["labels"].get("accepted", 0))) for k in ratios)
        worst = min(float(k["value"]) for k in ratios)
        out.append(("Delivery ratio", f"{stored / total:.4f}" if total else "n/a",
                    f"{stored:,} of {total:,} readings over {len(ratios)} drill(s); worst drill {worst:.4f}"))
    else:
        out.append(("Delivery ratio", missing, ""))
    lat = [float(x) for k in named("alarm_latency_ms") for x in k.get("samples", [])]
    if lat:
        s = summarize(lat)
        bases = sorted({str(k["labels"].get("basis", "")) for k in named("alarm_latency_ms")})
        out.append(("Alarm latency node -> platform", f"p50 {s['p50']:g} / p95 {s['p95']:g} / p99 {s['p99']:g} ms",
                    f"{s['n']} alarms, max {s['max']:g} ms; measured from {', '.join(bases)}"))
    else:
        out.append(("Alarm latency node -> platform", missing, ""))
    rec = named("recovery_s")
    modem = named("modem_recovery_s")
    if rec or modem:
        parts, details = [], []
        if rec:
            parts.append(f"platform outage {max(float(k['value']) for k in rec):g} s")
            details.append("platform back -> whole backlog stored")
            rc = named("reconnect_s")
            vals = [float(k["value"]) for k in rc if "value" in k] + [
                float(x) for k in rc for x in k.get("samples", [])]
            if vals:
                details.append(f"gateway reconnected within {max(vals):g} s")
        if modem:
            parts.append(f"modem unplug {max(float(k['value']) for k in modem):g} s")
            details.append("modem back -> receiving again")
        out.append(("Recovery time after outage", "; ".join(parts), "; ".join(details)))
    else:
        out.append(("Recovery time after outage", missing, ""))
    drained = named("backlog_drained")
    if drained:
        out.append(("Backlog drained", f"{sum(int(k['value']) for k in drained):,} readings",
                    f"missing {sum(int(k['labels'].get('missing', 0)) for k in drained)}"))
    else:
        out.append(("Backlog drained", missing, ""))
    rej = named("frames_rejected")
    if rej:
        counts: dict[str, int] = {}
        for k in rej:
            for reason, n in k["counts"].items():
                counts[reason] = counts.get(reason, 0) + int(n)
        out.append(("Frames rejected by reason", ", ".join(f"{r} {n}" for r, n in sorted(counts.items())),
                    f"{sum(counts.values())} frames, 0 forwarded"))
    else:
        out.append(("Frames rejected by reason", missing, ""))
    bat = named("battery_life_years")
    if bat:
        observed = [k for k in bat if "observed" in str(k["labels"].get("basis", ""))]
        k = (observed or bat)[0]
        sim = named("sim_charge_mah_per_day")
        detail = (f"{k['labels'].get('kind', 'water_level')}: {k['labels'].get('mah_per_day', '?')} mAh/day at a "
                  f"{k['labels'].get('interval_s', '?')} s cadence ({k['labels'].get('basis', 'tools/battery.py')})")
        if sim:
            detail += f"; simulator charge count {sim[0]['value']} mAh/day"
        others = [f"{x['labels'].get('kind')} {float(x['value']):g} y" for x in bat if x is not k]
        if others:
            detail += "; other nodes: " + ", ".join(others)
        out.append(("Node battery estimate", f"{float(k['value']):g} years", detail))
    else:
        out.append(("Node battery estimate", missing, ""))
    return out


def build(kpi_path: Path, junit_path: Path | None = None, meta: Mapping[str, Any] | None = None) -> Report:
    lines = read(kpi_path)
    sessions = [x for x in lines if x.get("type") == "session"]
    results = [x for x in lines if x.get("type") == "result"]
    kpis = [x for x in lines if x.get("type") == "kpi"]
    items: dict[str, DrillItem] = {}
    for s in sessions:
        for c in s.get("collected", []):
            items.setdefault(c["nodeid"], DrillItem(c["nodeid"], c.get("drill"), str(c.get("title", ""))))
    for r in results:
        it = items.setdefault(r["nodeid"], DrillItem(r["nodeid"], r.get("drill"), str(r.get("title", ""))))
        it.outcome = str(r.get("outcome", "failed"))
        it.duration_s = float(r.get("duration_s", 0.0))
        it.message = str(r.get("message", ""))
        it.logs = list(r.get("logs", []))
    for k in kpis:
        owner = items.get(k.get("nodeid", ""))
        if owner is not None:
            owner.kpis.append(k)
    m = dict(meta or {})
    if sessions:
        m.setdefault("dut", sessions[-1].get("dut"))
        m.setdefault("fast", sessions[-1].get("fast"))
    ordered = sorted(items.values(), key=lambda i: (i.drill if i.drill is not None else 999, i.nodeid))
    return Report(m, ordered, _junit(junit_path), _headlines(kpis))


# ------------------------------------------------------------------------------------------------ rendering


def _drills(items: Iterable[DrillItem]) -> list[tuple[int | None, str, list[DrillItem]]]:
    groups: dict[int | None, list[DrillItem]] = {}
    for it in items:
        groups.setdefault(it.drill, []).append(it)
    out = []
    for number, its in groups.items():
        title = DRILL_TITLES.get(number or 0) or its[0].title
        out.append((number, title, its))
    return out


def _verdict(its: Sequence[DrillItem]) -> str:
    if all(i.outcome == "passed" for i in its):
        return "PASS"
    if any(i.outcome == "failed" for i in its):
        return "FAIL"
    return "NOT RUN"


def render_markdown(r: Report) -> str:
    m = r.meta
    out = [f"# Lifeline HIL drill report: {'PASS' if r.passed else 'FAIL'}", ""]
    out.append(f"- Device under test: `{m.get('dut', '?')}`" + (" (CI subset, --fast)" if m.get("fast") else ""))
    for key, label in (("started", "Started"), ("duration_s", "Duration (s)"), ("commit", "Code version"),
                       ("host", "Host")):
        if m.get(key) is not None:
            out.append(f"- {label}: {m[key]}")
    passed = sum(i.outcome == "passed" for i in r.items)
    out += [f"- Drill runs: {passed} of {len(r.items)} passed", ""]
    if r.junit:
        out += [f"- pytest (junit.xml): {r.junit.get('tests', 0)} tests, {r.junit.get('failures', 0)} failures, "
                f"{r.junit.get('errors', 0)} errors, {r.junit.get('skipped', 0)} skipped", ""]
    out += ["## Key figures", "", "| Figure | Value | Detail |", "| --- | --- | --- |"]
    out += [f"| {n} | {v} | {d} |" for n, v, d in r.headlines]
    out += ["", "## Drills", "", "| # | Drill | Result | Time (s) | Figures |", "| --- | --- | --- | --- | --- |"]
    for number, title, its in _drills(r.items):
        figs = "<br>".join(
            (f"**{i.label}**: " if i.label else "") + "; ".join(kpi_text(k) for k in i.kpis) for i in its if i.kpis)
        out.append(f"| {number or ''} | {title} | {_verdict(its)} | {sum(i.duration_s for i in its):.1f} | "
                   f"{figs.replace('|', '/')} |")
    failed = [i for i in r.items if i.outcome != "passed"]
    if failed:
        out += ["", "## Failures", ""]
        for i in failed:
            out += [f"### {i.nodeid} ({i.outcome})", "", "```", i.message or "(no message)", "```", ""]
            if i.logs:
                out += ["Logs:", *[f"- `{p}`" for p in i.logs], ""]
    out += ["", "## What the figures mean", ""]
    out += [f"- **{n}**: {d}" for n, d in KPI_DEFINITIONS]
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1b1f24;
padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
table{border-collapse:collapse;width:100%;font-size:.92rem}th,td{border:1px solid #d0d7de;padding:.35rem .5rem;
vertical-align:top;text-align:left}th{background:#f6f8fa}.PASS{color:#fff;background:#1a7f37}
.FAIL{color:#fff;background:#cf222e}.NOTRUN,.NOT{background:#eaeef2}.PASSED{color:#1a7f37;border:1px solid #1a7f37}
.FAILED{color:#cf222e;border:1px solid #cf222e}.badge{font-weight:700;padding:.1rem .5rem;
border-radius:.3rem;white-space:nowrap}.verdict{font-size:1.1rem;margin:.5rem 0 1rem}pre{background:#f6f8fa;
padding:.6rem;overflow-x:auto;font-size:.85rem}.meta{color:#57606a}small{color:#57606a}ul.figs{margin:0;padding-left:1rem}
"""


def render_html(r: Report) -> str:
    e = html.escape
    m = r.meta
    verdict = "PASS" if r.passed else "FAIL"
    passed = sum(i.outcome == "passed" for i in r.items)
    parts = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
             "<meta name=viewport content='width=device-width,initial-scale=1'>",
             f"<title>Lifeline HIL drill report: {verdict}</title><style>{_CSS}</style></head><body>",
             f"<h1>Lifeline HIL drill report</h1><div class=verdict><span class='badge {verdict}'>{verdict}</span> "
             f"{passed} of {len(r.items)} drill runs passed</div><p class=meta>"]
    rows = [("Device under test", f"{m.get('dut', '?')}" + (" (CI subset)" if m.get("fast") else ""))]
    meta_keys = (("started", "Started"), ("duration_s", "Duration (s)"), ("commit", "Code version"), ("host", "Host"))
    rows += [(label, m[key]) for key, label in meta_keys if m.get(key) is not None]
    if r.junit:
        rows.append(("pytest", f"{r.junit.get('tests', 0)} tests, {r.junit.get('failures', 0)} failures, "
                               f"{r.junit.get('errors', 0)} errors, {r.junit.get('skipped', 0)} skipped"))
    parts.append("<br>".join(f"{e(str(a))}: <b>{e(str(b))}</b>" for a, b in rows) + "</p>")
    parts.append("<h2>Key figures</h2><table><tr><th>Figure</th><th>Value</th><th>Detail</th></tr>")
    parts += [f"<tr><td>{e(n)}</td><td><b>{e(v)}</b></td><td>{e(d)}</td></tr>" for n, v, d in r.headlines]
    parts.append("</table><h2>Drills</h2><table><tr><th>#</th><th>Drill</th><th>Result</th><th>Time&nbsp;(s)</th>"
                 "<th>What was measured</th></tr>")
    for number, title, its in _drills(r.items):
        v = _verdict(its)
        figs = []
        for i in its:
            head = f"<b>{e(i.label)}</b> <span class='badge {i.outcome.upper()}'>{e(i.outcome)}</span>" \
                if len(its) > 1 else ""
            lis = "".join(f"<li>{e(kpi_text(k))}</li>" for k in i.kpis)
            figs.append(f"{head}<ul class=figs>{lis}</ul>" if lis or head else "")
        parts.append(f"<tr><td>{number or ''}</td><td>{e(title)}</td><td><span class='badge "
                     f"{v.replace(' ', '')}'>{v}</span></td><td>{sum(i.duration_s for i in its):.1f}</td>"
                     f"<td>{''.join(figs)}</td></tr>")
    parts.append("</table>")
    failed = [i for i in r.items if i.outcome != "passed"]
    if failed:
        parts.append("<h2>Failures</h2>")
        for i in failed:
            parts.append(f"<h3>{e(i.nodeid)} ({e(i.outcome)})</h3><pre>{e(i.message or '(no message)')}</pre>")
            if i.logs:
                parts.append("<p>Logs:<br>" + "<br>".join(f"<code>{e(p)}</code>" for p in i.logs) + "</p>")
    parts.append("<h2>What the figures mean</h2><ul>")
    parts += [f"<li><b>{e(n)}</b>: {e(d)}</li>" for n, d in KPI_DEFINITIONS]
    parts.append(f"</ul><p><small>Generated {e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} from kpi.jsonl and "
                 "junit.xml of this run.</small></p></body></html>")
    return "\n".join(parts)


def write(out_dir: Path, kpi_path: Path, junit_path: Path | None = None,
          meta: Mapping[str, Any] | None = None) -> Report:
    r = build(kpi_path, junit_path, meta)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.html").write_text(render_html(r), encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(r), encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(r.summary(), indent=1, default=str), encoding="utf-8")
    return r
