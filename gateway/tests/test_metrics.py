"""Metrics over real HTTP, and `lifeline gateway status` reading them (or the buffer when stopped)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from lifeline.gateway.cli import gateway
from lifeline.gateway.metrics import Metrics, parse_text
from lifeline.gateway.testing import TestNode, start_harness

REQUIRED = ("frames_in_total", "readings_accepted_total", "readings_out_total", "rejects_total", "backlog",
            "oldest_buffered_age_seconds", "drain_rate", "drain_eta_seconds", "uplink_up", "disk_bytes",
            "buffer_drops_total", "stage_heartbeat_age_seconds", "outbox_batches")


async def _http(host: str, port: int, request: bytes) -> tuple[str, dict[str, str], str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    status, *hdrs = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in hdrs)}
    return status, headers, body


def test_render_and_parse_round_trip() -> None:
    m = Metrics(prefix="t_")
    c = m.counter("x_total", "help", ("reason",))
    c.inc('we"ird\\label\n')
    c.inc("a", n=3)
    m.gauge("g", "gauge", lambda: [((), 1.5)])
    m.gauge("broken", "raises", lambda: [((), 1 / 0)])
    text = m.render()
    parsed = parse_text(text)
    assert sorted(parsed["t_x_total"], key=lambda x: x[1]) == [({"reason": 'we"ird\\label\n'}, 1.0),
                                                                ({"reason": "a"}, 3.0)]
    assert parsed["t_g"] == [({}, 1.5)]
    assert "t_broken" not in parsed
    assert "# TYPE t_x_total counter" in text


async def test_metrics_endpoint_and_status(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("9000000000000001"))
    h = await start_harness(tmp_path, [n], serve_metrics=True)
    try:
        assert h.gw.metrics_address is not None
        host, port = h.gw.metrics_address
        assert host == "127.0.0.1"
        await h.hear(n.smoke(0))
        await h.hear(b"junk")
        await h.gw.maintain()
        status, headers, body = await _http(host, port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(headers["content-length"]) == len(body.encode())
        parsed = parse_text(body)
        for name in REQUIRED:
            assert f"# TYPE lifeline_gateway_{name} " in body, name
        assert parsed["lifeline_gateway_rejects_total"] == [({"reason": "truncated", "radio": "lora-udp"}, 1.0)]
        backlog = {lab["priority"]: v for lab, v in parsed["lifeline_gateway_backlog"]}
        assert backlog == {"alarm": 0, "event": 0, "periodic": 1}
        assert ({"endpoint": "memory", "state": "connected"}, 1.0) in parsed["lifeline_gateway_uplink_up"]
        assert (await _http(host, port, b"GET /secret HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 404 Not Found"
        assert (await _http(host, port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0].startswith("HTTP/1.1 405")
        assert (await _http(host, port, b"\x00" * 20000))[0] == ""  # oversized garbage: connection closed

        cfg_file = str(tmp_path / "gateway.toml")
        r = await asyncio.to_thread(CliRunner().invoke, gateway, ["status", "--config", cfg_file, "--json"])
        assert r.exit_code == 0, r.output
        st = json.loads(r.output)
        assert st["running"] is True and st["backlog"]["periodic"] == 1 and st["rejects"] == {"truncated": 1}
        r = await asyncio.to_thread(CliRunner().invoke, gateway, ["status", "--config", cfg_file])
        assert r.exit_code == 0 and "running" in r.output
    finally:
        await h.stop()
    r = CliRunner().invoke(gateway, ["status", "--config", str(tmp_path / "gateway.toml"), "--json"])
    assert r.exit_code == 1
    st = json.loads(r.output)
    assert st["running"] is False and st["backlog"] == {"alarm": 0, "event": 0, "periodic": 1}
