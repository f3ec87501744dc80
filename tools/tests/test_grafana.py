"""The Grafana dashboard (tools/grafana/lifeline-gateway.json) asks only for what the gateway exports: every
PromQL expression is checked against a scrape of a running gateway's /metrics (names, counter vs gauge,
the labels it groups by), and the panels an operator needs are there and laid out without overlap."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lifeline.gateway.metrics import parse_text
from lifeline.gateway.testing import MemoryAdapter, TestNode, start_harness

DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "lifeline-gateway.json"
NAME = re.compile(r"\blifeline_gateway_[a-z0-9_]+\b")
RATE_OF = re.compile(r"\b(rate|increase|irate)\(\s*(lifeline_gateway_[a-z0-9_]+)")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^}]*)\}")
PROMETHEUS_LABELS = {"instance", "job"}  # added by the scrape
RULES = """\
[[rule]]
name = "warm"
when = { type = "threshold", kind = "smoke", field = "temperature", above = "20 degC", clear = "15 degC" }
[[rule.action]]
type = "priority"
level = "event"
"""


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from _panels(p.get("panels", []))


async def _scrape(tmp_path: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    """(metric name -> type, metric name -> label names seen) from a running gateway with some traffic."""
    node, other = TestNode(bytes.fromhex("5100000000000001")), TestNode(bytes.fromhex("5100000000000002"))
    lora, ble = MemoryAdapter("lora0", "lora-udp"), MemoryAdapter("ble0", "ble")
    (tmp_path / "rules.toml").write_text(RULES)  # the rules engine's metrics exist only when it runs
    h = await start_harness(tmp_path, [node, other], adapters=[lora, ble], serve_metrics=True, run_forwarder=True,
                            sections={"rules": {"files": ["rules.toml"]}})
    try:
        now = h.clock.now_ms()
        await lora.hear(node.smoke(alarm_state=2, flags=1), now)  # ACK_REQ: a downlink too
        frame = other.smoke(0)
        await lora.hear(frame, now)
        await ble.hear(frame, now + 10)
        await lora.hear(b"junk", now)
        await h.gw.flush()
        await h.gw.maintain()
        assert h.gw.metrics_address is not None
        host, port = h.gw.metrics_address
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await h.stop()
    body = data.decode().partition("\r\n\r\n")[2]
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M))
    labels: dict[str, set[str]] = {}
    for name, samples in parse_text(body).items():
        for lab, _ in samples:
            labels.setdefault(name, set()).update(lab)
    return types, labels


def test_dashboard_layout_and_panels() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dash["uid"] == "lifeline-gateway" and dash["title"] == "Lifeline gateway"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
            assert p.get("description"), p["title"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("readings in per radio", "readings out per radio", "rejects by reason", "backlog per priority",
                  "oldest buffered", "drain eta", "uplink state", "disk", "drops", "node alarms by stage",
                  "rule firings"):
        assert topic in titles, topic


async def test_every_expression_uses_exported_metrics(tmp_path: Path) -> None:
    types, labels = await _scrape(tmp_path)
    assert len(types) > 30
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [(p["title"], t["expr"]) for p in _panels(dash["panels"]) for t in p.get("targets", [])]
    exprs += [("variable " + v["name"], v["definition"]) for v in dash["templating"]["list"] if "definition" in v]
    assert len(exprs) >= 30
    label_checked = 0
    for title, expr in exprs:
        names = set(NAME.findall(expr))
        assert names, f"{title}: {expr} names no gateway metric"
        unknown = names - set(types)
        assert not unknown, f"{title}: {expr} uses metrics the gateway does not export: {unknown}"
        for fn, name in RATE_OF.findall(expr):
            assert types[name] == "counter", f"{title}: {fn}() of {name}, a {types[name]}"
        for name in names:
            if types[name] == "counter" and not name.endswith("_total"):
                raise AssertionError(f"counter {name} without _total")
        if all(n in labels for n in names):  # every metric had samples: the labels are known
            known = set().union(*(labels[n] for n in names)) | PROMETHEUS_LABELS
            used = {x.strip() for group in BY.findall(expr) for x in group.split(",") if x.strip()}
            used |= {m.split("=")[0].strip(" !~") for group in MATCHERS.findall(expr) for m in group.split(",")
                     if "=" in m}
            assert used <= known, f"{title}: {expr} uses labels {used - known} (known: {known})"
            label_checked += 1
    assert label_checked >= 20, label_checked
