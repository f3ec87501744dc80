"""How the demo looks: the live dashboard (rich), plain log lines (``--no-tui``), the summary table.

Everything here draws from a :class:`~lifeline.tools.demo_watch.Snapshot` and the summary dict; nothing
here gathers data.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lifeline.tools.demo_story import Story
from lifeline.tools.demo_watch import RADIOS, Latency, Snapshot

PHASE_STYLE = {"normal": "green", "fire": "bold red", "outage": "bold yellow", "restored": "cyan", "drain": "cyan",
               "summary": "bold"}


SHORT_KINDS = {"electricity_meter": "electricity", "manhole_tilt": "manhole", "water_meter": "water meter",
               "gas_meter": "gas meter", "water_level": "water level", "alarm_raised": "alarm raised",
               "alarm_cleared": "alarm cleared"}


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.1f} s" if v >= 1000 else f"{v:.0f} ms"


def _t(v: float | None) -> str:
    return "-" if v is None else f"{v:5.1f}s"


def _lat(name: str, lat: Latency) -> list[str]:
    return [name, str(lat.n), _ms(lat.p50_ms), _ms(lat.p99_ms), _ms(lat.max_ms)]


# ---------------------------------------------------------------------------------------------- panels


def readings_table(s: Snapshot) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    t.add_column("kind")
    for r in RADIOS:
        t.add_column(r, justify="right")
    t.add_column("total", justify="right", style="bold")
    kinds = sorted({k for k, _ in s.sent} | {k for k, _ in s.delivered})
    for k in kinds:
        cells = []
        for r in RADIOS:
            sent, got = s.sent.get((k, r), 0), s.delivered.get((k, r), 0)
            cells.append(f"{got}/{sent}" if sent or got else "")
        tot_got = sum(v for (kk, _), v in s.delivered.items() if kk == k)
        tot_sent = sum(v for (kk, _), v in s.sent.items() if kk == k)
        t.add_row(SHORT_KINDS.get(k, k), *cells, f"{tot_got}/{tot_sent}")
    return t


def gateway_table(s: Snapshot) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    g = s.gateway
    if g is None:
        t.add_row("gateway", "[yellow]no answer yet[/]")
        return t
    up = g["uplink_connected"]
    states = ", ".join(f"{k} {v}" for k, v in sorted(g["uplink"].items())) or "-"
    t.add_row("uplink", f"[green]● connected[/] ({states})" if up else f"[red]● down[/] ({states})")
    b = g["backlog"]
    depth = int(sum(b.values()))
    t.add_row("backlog", f"{depth} ({int(b.get('alarm', 0))} alarm · {int(b.get('event', 0))} event · "
                         f"{int(b.get('periodic', 0))} periodic) · outbox {int(g['outbox_batches'])}")
    t.add_row("oldest", f"{g['oldest_buffered_age_s']:.1f} s · drain {g['drain_rate']:.0f}/s · worst "
                        f"{s.max_backlog} deep, {s.max_oldest_s:.0f} s old")
    acc = int(sum(g["accepted"].values()))
    dup = sum(int(r["duplicates"]) for r in g["radios"].values())
    t.add_row("accepted", f"{acc} readings · {dup} duplicate receptions dropped")
    per = " · ".join(f"{k} {int(v)}" for k, v in sorted(g["accepted"].items()))
    t.add_row("by radio", per or "-")
    rej = " · ".join(f"{k} {int(v)}" for k, v in sorted(g["rejects"].items()) if v)
    t.add_row("rejected", rej or "0")
    t.add_row("platform", f"{s.delivered_total} readings ({s.backlog_delivered} via backlog) · "
                          f"{s.audit_records} audit records")
    if s.gateway_age_s is not None and s.gateway_age_s > 3:
        t.add_row("", f"[yellow]metrics {s.gateway_age_s:.0f} s old[/]")
    return t


def latency_table(s: Snapshot) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("node frame → platform", "n", "p50", "p99", "max"):
        t.add_column(c, justify="left" if c.startswith("node") else "right")
    t.add_row(*_lat("live readings", s.live))
    t.add_row(*_lat("alarms (live)", s.alarm_latency))
    t.add_row(*_lat("backlog (outage)", s.backlog_latency))
    return t


def _stage(t: float | None) -> str:
    return f"[green]✓ {t:.1f}s[/]" if t is not None else "[dim]·[/]"


def alarms_table(s: Snapshot) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for c in ("alarm", "where", "raised", "at platform", "platform ack", "node ack", "cleared", "gateway"):
        t.add_column(c)
    for a in s.alarms:
        local = a.gateway_stage or ("done" if a.steps else "-")
        if "escalated" in a.steps or a.escalated_live:
            local += " [yellow]escalated[/]"
        t.add_row(f"{a.node} #{a.alarm_id} {a.cause}", a.where.split(",")[-1].strip(),
                  _stage(a.raised_s),
                  _stage(a.stored_s) + (f" {a.lane}" if a.lane else ""),
                  _stage(a.platform_ack_s),
                  _stage(a.steps.get("ack_delivered")) if "ack_delivered" in a.steps
                  else ("[yellow]next uplink[/]" if a.platform_ack_s is not None and a.cleared_s is None
                        else "[dim]·[/]"),
                  _stage(a.cleared_s), local)
    if not s.alarms:
        t.add_row("[dim]no alarm yet[/]", "", "", "", "", "", "", "")
    return t


def rules_table(s: Snapshot) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    rules = (s.gateway or {}).get("rules") or {}
    fired = rules.get("fired") or {}
    t.add_row("mode", f"{rules.get('mode') or '-'}" + (" · [yellow]failover (uplink down)[/]"
                                                        if rules.get("failover") else ""))
    t.add_row("fired", " · ".join(f"{k} {int(v)}" for k, v in sorted(fired.items())) or "-")
    actions = rules.get("actions") or {}
    t.add_row("actions", " · ".join(f"{k} {int(v)}" for k, v in sorted(actions.items())) or "-")
    sirens = [p for _, topic, p in s.lan if topic.endswith("/siren")]
    siren = "-" if not sirens else ("[red]ON[/]" if '"on": true' in sirens[-1] else "off")
    t.add_row("siren", f"{siren} ({len(sirens)} commands on the site LAN)")
    for ts, number, text in s.sms[-3:]:
        t.add_row("SMS", Text(f"{ts:.1f}s {number}: {text}", no_wrap=True, overflow="ellipsis"))
    if not s.sms:
        t.add_row("SMS", "-")
    return t


def events_text(s: Snapshot, n: int = 7) -> Group:
    lines = []
    for ts, text in s.events[-n:]:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append(f"{ts:6.1f}s ", style="dim")
        line.append(text)
        lines.append(line)
    return Group(*lines)


def header(s: Snapshot, story: Story, phase: str, meta: Mapping[str, Any]) -> Text:
    h = Text()
    h.append("Lifeline demo ", style="bold")
    h.append(f"· {phase} ", style=PHASE_STYLE.get(phase, ""))
    h.append(f"· {s.t_s:5.1f} s of {story.duration_s:.0f} s · {meta.get('nodes', '?')} nodes · district ×"
             f"{story.speed:.0f} ({meta.get('clock', '')}) · gateway pid {meta.get('gateway_pid', '?')}")
    steps = " → ".join(f"[{'bold ' if p.name == phase else ''}{PHASE_STYLE[p.name]}]{p.title}[/]"
                       for p in story.phases)
    return Text.assemble(h, "\n", Text.from_markup(steps))


def dashboard(s: Snapshot, story: Story, phase: str, meta: Mapping[str, Any]) -> RenderableType:
    """The live dashboard: two rows of two panels, the alarm life cycle, the story so far."""
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(Panel(readings_table(s), title="readings delivered/sent by kind × node radio"),
                 Panel(gateway_table(s), title="gateway (its /metrics)"))
    grid.add_row(Panel(latency_table(s), title="latency"), Panel(rules_table(s), title="local rules"))
    return Group(header(s, story, phase, meta), grid,
                 Panel(alarms_table(s), title="alarm life cycle: raised → platform → ack → node ack → cleared"),
                 Panel(events_text(s), title="story"))


def status_line(s: Snapshot, phase: str) -> str:
    g = s.gateway or {}
    up = "connected" if g.get("uplink_connected") else "down"
    depth = int(sum((g.get("backlog") or {}).values()))
    acc = int(sum((g.get("accepted") or {}).values()))
    return (f"{s.t_s:6.1f}s [{phase}] sent {s.frames_sent} heard {s.frames_heard} accepted {acc} "
            f"delivered {s.delivered_total} backlog {depth} oldest {g.get('oldest_buffered_age_s', 0):.0f}s "
            f"uplink {up} live p50 {_ms(s.live.p50_ms)} p99 {_ms(s.live.p99_ms)} alarms {len(s.alarms)} "
            f"sms {len(s.sms)}")


# ---------------------------------------------------------------------------------------------- summary


def summary_table(summary: Mapping[str, Any]) -> Table:
    t = Table(title="Lifeline demo: summary", box=box.ROUNDED)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_column("meaning")
    lost = summary["lost"]
    dups = summary["duplicates_removed"]
    lat = summary["latency_ms"]
    rows = [
        ("frames sent", summary["sent"], "by the district's nodes (every kind, four radios)"),
        ("heard", summary["heard"], "reached a gateway radio (the rest collided or were out of range)"),
        ("accepted", summary["accepted"], "readings the gateway verified and committed (its metrics)"),
        ("delivered", summary["delivered"], "distinct readings stored by the platform"),
        ("duplicates removed", dups["gateway_receptions"] + dups["platform_records"],
         f"{dups['gateway_receptions']} extra receptions at the gateway, "
         f"{dups['platform_records']} re-sent records at the platform"),
        ("lost", f"[{'green' if lost == 0 else 'red'}]{lost}[/]", "accepted − delivered"),
        ("live latency p50 / p99", f"{_ms(lat['live']['p50_ms'])} / {_ms(lat['live']['p99_ms'])}",
         "node frame → stored by the platform"),
        ("alarm latency p50 / p99", f"{_ms(lat['alarms']['p50_ms'])} / {_ms(lat['alarms']['p99_ms'])}",
         "alarm-priority readings on the live lane"),
        ("backlog", f"{summary['backlog']['delivered']} / max {summary['backlog']['max_depth']}",
         f"delivered on the backlog lane / deepest; oldest {summary['backlog']['max_oldest_s']:.0f} s, drained in "
         f"{_ms(None if summary['backlog']['drain_s'] is None else summary['backlog']['drain_s'] * 1000)}"
         + {True: ", alarms first", False: ", [red]alarms NOT first[/]", None: ""}[summary["backlog"]["alarms_first"]]),
        ("alarms", len(summary["alarms"]), "node alarms (life cycle above)"),
        ("rule firings", sum(summary["rules"]["fired"].values()),
         ", ".join(f"{k} {v}" for k, v in sorted(summary["rules"]["fired"].items())) or "-"),
        ("SMS / LAN messages", f"{summary['sms']} / {summary['lan_messages']}", "sent by the gateway's local rules"),
        ("hash chain", "intact" if summary["chain_intact"] else "[red]BROKEN[/]",
         "the platform's check of the batches"),
    ]
    for what, value, meaning in rows:
        t.add_row(what, str(value), meaning)
    return t


def capture_text(renderable: RenderableType, width: int = 150) -> str:
    """A screenshot-like text capture (what a terminal of ``width`` columns shows)."""
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text()
