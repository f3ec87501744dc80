"""The status page over real HTTP on a running in-process gateway: token rules, the facts it shows
(per-device last reception and RSSI, last alarms), escaping, `lifeline gateway status` using it, and the
page in a real browser: Debian's headless Chromium (installed by tools/bootstrap.sh) loads it and the
rendered DOM shows the facts; without the token it shows a 401."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifeline.gateway import statuspage
from lifeline.gateway.cli import gateway
from lifeline.gateway.daemon import Gateway, StartupError
from lifeline.gateway.metrics import parse_text
from lifeline.gateway.statusinfo import Seen, age_text, size_text
from lifeline.gateway.testing import (
    Harness,
    MemoryAdapter,
    MemoryPublisher,
    TestNode,
    make_config,
    start_harness,
    write_signing_key,
)

ALARM_HEX, QUIET_HEX, STRANGER_HEX = "70b3d57ed0000001", "70b3d57ed0000002", "70b3d57ed00000ff"
CHROMIUM = Path("/usr/bin/chromium")


async def _http(port: int, request: bytes) -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    status, *hdrs = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in hdrs)}
    return (int(status.split(" ")[1]) if status else 0), headers, body  # 0: closed without an answer


def _get(path: str, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n".encode()


async def start_with_page(tmp_path: Path) -> tuple[Harness, str, int]:
    """A gateway with two radios, the status page on a free port, and some traffic heard."""
    token_file = tmp_path / "status.token"
    assert statuspage.create_token_file(token_file)
    alarm_node = TestNode(bytes.fromhex(ALARM_HEX))
    quiet_node = TestNode(bytes.fromhex(QUIET_HEX), kind="water_level")
    stranger = TestNode(bytes.fromhex(STRANGER_HEX))  # not provisioned
    lora, ble = MemoryAdapter("lora0", "lora-udp"), MemoryAdapter("ble0", "ble")
    h = await start_harness(tmp_path, [alarm_node, quiet_node], adapters=[lora, ble], serve_metrics=True,
                            run_forwarder=True,
                            sections={"status_page": {"listen": "127.0.0.1", "port": 0,
                                                      "token_file": str(token_file)}})
    await lora.hear(alarm_node.smoke(alarm_state=2), h.clock.now_ms(), rssi=-87, snr_x10=55)
    h.clock.advance(1000)
    periodic = quiet_node.uplink(3, {1: 1234})
    await lora.hear(periodic, h.clock.now_ms(), rssi=-112, snr_x10=-75)
    await ble.hear(periodic, h.clock.now_ms() + 40, rssi=-64, snr_x10=None)  # a better copy of the same frame
    await lora.hear(stranger.smoke(alarm_state=2), h.clock.now_ms(), rssi=-30)  # unknown device: rejected
    await lora.hear(b"\x01junk", h.clock.now_ms(), rssi=-30)
    await h.gw.flush()
    h.clock.advance(12_000)  # under the 15 s after which a stage counts as stalled
    await h.gw.maintain()
    port = int((h.config.gateway.state_dir / "status.addr").read_text().rsplit(":", 1)[1])
    return h, token_file.read_text().strip(), port


def test_token_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "status.token"
    assert statuspage.create_token_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    token = statuspage.load_token(path)
    assert len(token) >= 32 and path.read_text() == token + "\n"
    assert not statuspage.create_token_file(path)  # never replaced
    assert statuspage.load_token(path) == token
    os.chmod(path, 0o640)
    with pytest.raises(statuspage.StatusPageError, match="chmod 600") as e:
        statuspage.load_token(path)
    assert token not in str(e.value)
    os.chmod(path, 0o600)
    link = tmp_path / "link.token"
    link.symlink_to(path)
    with pytest.raises(statuspage.StatusPageError, match="cannot open"):
        statuspage.load_token(link)
    short = tmp_path / "short.token"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(statuspage.StatusPageError, match="16 or more"):
        statuspage.load_token(short)
    with pytest.raises(statuspage.StatusPageError, match="does not exist"):
        statuspage.load_token(tmp_path / "missing")


async def test_page_needs_token_and_shows_the_facts(tmp_path: Path) -> None:
    h, token, port = await start_with_page(tmp_path)
    try:
        # without a token, or with a wrong one: 401 and nothing about the devices
        wrong = "x" * len(token)
        for req in (_get("/"), _get("/", wrong), _get(f"/?token={wrong}"), _get("/status.json"),
                    _get("/nope"), f"GET / HTTP/1.1\r\nAuthorization: Basic {token}\r\n\r\n".encode()):
            code, headers, body = await _http(port, req)
            assert code == 401, req
            assert headers["www-authenticate"].startswith("Bearer")
            assert ALARM_HEX not in body and "gw-test" not in body
        code, headers, body = await _http(port, _get("/", token))
        assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "<script" not in body and 'name="viewport"' in body
        assert f'<li id="dev-{ALARM_HEX}">' in body and f'<li id="dev-{QUIET_HEX}">' in body
        assert STRANGER_HEX not in body  # rejected frames never show up as "seen"
        row = re.search(rf'<li id="dev-{QUIET_HEX}">(.*?)</li>', body)
        assert row and "-64 dBm" in row.group(1) and "ble0" in row.group(1)  # the best of its two receptions
        alarms = body.split('<section id="alarms">')[1].split("</section>")[0]
        assert ALARM_HEX in alarms and "smoke" in alarms and "-87 dBm" in alarms and "13 s ago" in alarms
        assert QUIET_HEX not in alarms

        code, _, body = await _http(port, _get(f"/?token={token}&q=70b3d57ed0000002"))
        assert code == 200 and QUIET_HEX in body and f"dev-{ALARM_HEX}" not in body
        assert f'name="token" value="{token}"' in body  # the search form keeps the token
        code, _, body = await _http(port, _get(f"/?token={token}&q=%3Cscript%3E"))
        assert code == 200 and "&lt;script&gt;" in body and "<script>" not in body and "dev-70b3" not in body

        code, headers, body = await _http(port, _get("/status.json", token))
        assert code == 200 and headers["content-type"] == "application/json"
        s = json.loads(body)
        assert s["gateway_id"] == "gw-test" and s["running"] is True and s["health"]["state"] == "ok"
        rows = {r["device_id"]: r for r in s["devices_seen"]}
        assert set(rows) == {ALARM_HEX, QUIET_HEX}
        q = rows[QUIET_HEX]
        assert (q["rssi"], q["radio"], q["adapter"], q["receptions"], q["kind"]) == (-64, "ble", "ble0", 2,
                                                                                    "water_level")
        a = rows[ALARM_HEX]
        assert (a["rssi"], a["snr"], a["last_seen_s"], a["status"]) == (-87, 5.5, 13.0, "active")
        assert [x["device_id"] for x in s["last_alarms"]] == [ALARM_HEX]
        assert s["radios"]["lora-udp"]["rejected"] == 2 and s["radios"]["ble"]["duplicates"] == 1
        assert s["radios"]["lora-udp"]["adapters"]["lora0"]["frames_in"] == 4
        assert s["uplink"] == {"memory": "connected"} and s["devices_heard"] == 2
        assert s["disk"]["free_bytes"] > 0 and s["disk"]["buffer_bytes"] > 0
        code, _, body = await _http(port, _get("/status.json?limit=1", token))
        assert [r["device_id"] for r in json.loads(body)["devices_seen"]] == [QUIET_HEX]  # newest first

        assert (await _http(port, _get("/nope", token)))[0] == 404
        assert (await _http(port, f"POST / HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode()))[0] == 405
        code, headers, body = await _http(port, f"HEAD / HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        assert code == 200 and body == "" and int(headers["content-length"]) > 1000
        assert (await _http(port, b"\x00" * 20000))[0] == 0  # oversized garbage: closed, daemon unharmed

        h.clock.advance(20_000)  # no stage has beaten for 32 s (on the gateway's clock): the page says so
        code, _, body = await _http(port, _get("/", token))
        verdict = body.split('<p id="verdict">')[1].split("</p>")[0]
        assert "stage stalled: " in verdict and "commit" in verdict and 'class="badge bad"' in verdict

        parsed = parse_text(h.gw.metrics.render())
        codes = {lab["code"]: v for lab, v in parsed["lifeline_gateway_status_page_requests_total"]}
        assert codes["401"] == 6 and codes["200"] >= 7 and codes["404"] == 1
        assert parsed["lifeline_gateway_devices_heard"] == [({}, 2.0)]
        assert parsed["lifeline_gateway_last_alarm_timestamp_seconds"] == [({}, 1_700_000_000.0)]
    finally:
        await h.stop()


async def test_status_cli_reads_the_page(tmp_path: Path) -> None:
    h, _, _ = await start_with_page(tmp_path)
    cfg = str(tmp_path / "gateway.toml")
    try:
        r = await asyncio.to_thread(CliRunner().invoke, gateway, ["status", "--config", cfg, "--json"])
        assert r.exit_code == 0, r.output
        s = json.loads(r.output)
        # the keys of earlier versions are still there, with their meaning
        for key in ("running", "backlog", "outbox_batches", "oldest_buffered_age_s", "drain_rate", "drain_eta_s",
                    "uplink", "frames_in", "accepted", "out", "rejects", "drops", "disk_bytes", "next_seq",
                    "devices", "gateway_id"):
            assert key in s, key
        assert s["rejects"] == {"unknown_device": 1, "truncated": 1}
        assert s["status_page"] == "ok" and s["devices_heard"] == 2
        assert [a["device_id"] for a in s["last_alarms"]] == [ALARM_HEX]
        assert s["health"]["state"] == "ok" and set(s["radios"]) == {"lora-udp", "ble"}
        r = await asyncio.to_thread(CliRunner().invoke, gateway, ["status", "--config", cfg])
        assert r.exit_code == 0, r.output
        text = r.output
        for needle in ("● running", "health ok", "lora-udp: 4 frames", f"{ALARM_HEX} smoke", "-87 dBm",
                       "quota", "2 heard since start", "unknown_device 1", "memory connected"):
            assert needle in text, (needle, text)
    finally:
        await h.stop()
    r = await asyncio.to_thread(CliRunner().invoke, gateway, ["status", "--config", cfg, "--json"])
    assert r.exit_code == 1
    s = json.loads(r.output)
    assert s["running"] is False and s["disk"]["buffer_bytes"] > 0 and "last_alarms" not in s
    r = await asyncio.to_thread(CliRunner().invoke, gateway, ["status", "--config", cfg])
    assert r.exit_code == 1 and "not running" in r.output and "backlog" in r.output


async def test_daemon_refuses_a_readable_token(tmp_path: Path) -> None:
    token_file = tmp_path / "status.token"
    statuspage.create_token_file(token_file)
    token_file.chmod(0o644)
    config = make_config(tmp_path, sections={"status_page": {"port": 0, "token_file": str(token_file)}})
    write_signing_key(config.gateway.key_file)
    gw = Gateway(config, publisher=MemoryPublisher(), adapters=[MemoryAdapter()])
    with pytest.raises(StartupError, match=r"status_page\.token_file .* mode 0644"):
        await gw.start()
    await gw.stop()


def test_render_escapes_everything() -> None:
    evil = '<script>alert(1)</script>"\' onload="x'
    snap = {
        "gateway_id": evil, "generated_at": evil, "uptime_s": 5, "running": True,
        "health": {"state": "ok", "stale_stages": [], "stages": {evil: 0.2}},
        "radios": {evil: {"frames_in": 1, "accepted": 1, "duplicates": 0, "rejected": 0,
                          "adapters": {evil: {"frames_in": 1, "counters": {}}}}},
        "backlog": {"alarm": 1}, "uplink": {evil: evil}, "uplink_connected": False,
        "last_alarms": [{"device_id": evil, "kind": evil, "test": True, "age_s": 3, "adapter": evil, "rssi": evil}],
        "disk": {"buffer_bytes": 1, "quota_bytes": 2, "registry_bytes": 3, "free_bytes": 4, "total_bytes": 5},
        "devices": {evil: 1}, "devices_heard": 1,
        "devices_seen": [{"device_id": evil, "status": evil, "last_seen_s": 1, "rssi": evil, "snr": evil,
                          "adapter": evil, "kind": evil, "test": False, "fcnt": evil}],
    }
    page = statuspage.render_html(snap, query=evil, token=evil)
    assert "<script" not in page and "onload=\"x" not in page and "' onload" not in page
    assert page.count("&lt;script&gt;") >= 12
    assert 'id="dev-&lt;script&gt;' in page


def test_seen_keeps_the_last_frame_and_best_reception() -> None:
    seen = Seen(0, alarms_kept=2)
    seen.observe("not a list")  # barriers and the like pass untouched
    seen.observe([object(), 42])  # unknown records are ignored, never raised
    assert seen.devices == {} and seen.errors == 0
    assert age_text(None) == "never" and age_text(5) == "5 s" and age_text(600) == "10 min"
    assert age_text(7200) == "2 h" and age_text(3 * 86400) == "3 d"
    assert size_text(999) == "999 B" and size_text(1_500_000) == "1.4 MiB" and size_text(256 << 20) == "256.0 MiB"


# ---------------------------------------------------------------------------------------------- browser


class _Text(HTMLParser):
    """Text per element id (and of the whole body), as the DOM holds it after rendering."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []
        self.by_id: dict[str, list[str]] = {}
        self.all: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "input", "br", "link"):
            return
        self.stack.append(dict(attrs).get("id"))

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("meta", "input", "br", "link") and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.all.append(data)
        for i in self.stack:
            if i:
                self.by_id.setdefault(i, []).append(data)

    def text(self, element_id: str) -> str:
        return " ".join(" ".join(self.by_id.get(element_id, [])).split())


async def _chromium(tmp_path: Path, url: str, *extra: str) -> str:
    assert CHROMIUM.exists(), "chromium missing: run tools/bootstrap.sh setup"
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_chromium_renders_the_status_page(tmp_path: Path) -> None:
    h, token, port = await start_with_page(tmp_path)
    base = f"http://127.0.0.1:{port}/"
    try:
        dom = await _chromium(tmp_path, f"{base}?token={token}", "--dump-dom")
        page = _Text()
        page.feed(dom)
        assert page.text("gateway-id") == "gw-test"
        assert page.text("verdict") == "ok"
        # Idle stages beat on the loop's own schedule at the injected clock's time, so a stage may have
        # beaten again (0 s ago) while Chromium was starting; otherwise its age is 12 or 13 s (it last beat
        # before or after the first 1 s step); anything else is wrong.
        health = page.text("health")
        assert re.fullmatch(r"Health 6 of 6 stages beating"
                            r"( (commit|downlinks|forwarder|ingest|maintenance|results) (0|12|13) s ago){6}",
                            health), health
        radios = page.text("radio-lora-udp")
        assert radios.startswith("lora-udp 4 2 0 2"), radios  # frames, accepted, dupes, rejected
        assert "alarm 0" in page.text("backlog") and "outbox batches" in page.text("backlog")
        assert page.text("uplink") == "Uplink memory connected"
        alarms = page.text("alarms")
        assert f"{ALARM_HEX} smoke 13 s ago lora0 · -87 dBm" in alarms, alarms
        assert "quota" in page.text("disk") and "free" in page.text("disk")
        assert page.text(f"dev-{QUIET_HEX}") == (f"{QUIET_HEX} 12 s ago -64 dBm · SNR - · ble0 · "
                                                      "water_level · fcnt 1")
        assert page.text(f"dev-{ALARM_HEX}") == (f"{ALARM_HEX} 13 s ago -87 dBm · SNR 5.5 dB · lora0 · "
                                                      "smoke · fcnt 1")
        assert "2 registered (active 2, revoked 0); 2 heard since start" in page.text("devices")

        # a phone-sized screenshot: the page lays out at 412 px wide
        shot = tmp_path / "status.png"
        await _chromium(tmp_path, f"{base}?token={token}", f"--screenshot={shot}", "--window-size=412,1400",
                        "--hide-scrollbars")
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", png[16:24]) == (412, 1400)

        denied = _Text()
        denied.feed(await _chromium(tmp_path, base, "--dump-dom"))
        text = " ".join(denied.all)
        assert "401: token required" in text
        assert ALARM_HEX not in text and "gw-test" not in text
        wrong = _Text()
        wrong.feed(await _chromium(tmp_path, f"{base}?token={'A' * len(token)}", "--dump-dom"))
        assert "401: token required" in " ".join(wrong.all)
    finally:
        await h.stop()


# ---------------------------------------------------------------------------------------------- rules

RULES = """\
[[rule]]
name = "warm-kitchen"
when = { type = "threshold", kind = "smoke", field = "temperature", above = "20 degC", clear = "15 degC" }
[[rule.action]]
type = "priority"
level = "event"
"""


async def test_page_and_status_show_rules_and_node_alarms(tmp_path: Path) -> None:
    """With the rules engine running: its mode, firings and the node alarms' life-cycle stages."""
    from lifeline.protocols import schema

    token_file = tmp_path / "status.token"
    statuspage.create_token_file(token_file)
    (tmp_path / "rules.toml").write_text(RULES)
    node = TestNode(bytes.fromhex(ALARM_HEX))
    h = await start_harness(tmp_path, [node], serve_metrics=True, run_forwarder=True, sections={
        "status_page": {"port": 0, "token_file": str(token_file)}, "rules": {"files": ["rules.toml"]}})
    try:
        await h.hear(node.smoke(0))  # 21.5 degC: the rule fires
        h.clock.advance(2000)
        await h.hear(node.uplink(schema.K_ALARM_RAISED, {1: 7, 2: 0, 3: 215}))
        h.clock.advance(3000)
        await h.gw.maintain()
        port = int((tmp_path / "status.addr").read_text().rsplit(":", 1)[1])
        token = token_file.read_text().strip()
        code, _, body = await _http(port, _get("/status.json", token))
        assert code == 200
        s = json.loads(body)
        assert s["rules"]["loaded"] == 1 and s["rules"]["active"] == 1 and s["rules"]["mode"] == "daily"
        assert {k: v for k, v in s["rules"]["alarm_stages"].items() if v} == {"raised": 1}
        assert s["rules"]["fired"] == {"warm-kitchen": 1}
        assert [(f["rule"], f["device_id"]) for f in s["active_firings"]] == [("warm-kitchen", ALARM_HEX)]
        assert [(a["device_id"], a["alarm_id"], a["cause"]) for a in s["open_alarms"]] == [(ALARM_HEX, 7, "smoke")]
        assert (s["open_alarms"][0]["raised_age_s"], s["open_alarms"][0]["stage"]) == (3.0, "raised")
        code, _, body = await _http(port, _get("/", token))
        assert code == 200
        rules = body.split('<section id="rules">')[1].split("</section>")[0]
        assert "daily" in rules and "1 loaded · 1 firing" in rules and "warm-kitchen" in rules and "raised 1" in rules
        assert f'{ALARM_HEX}</span> <b>smoke</b>' in rules and "3 s ago" in rules

        r = await asyncio.to_thread(CliRunner().invoke, gateway, ["status", "--config", str(tmp_path / "gateway.toml")])
        assert r.exit_code == 0, r.output
        assert "mode daily · 1 loaded · 1 firing" in r.output and f"open {ALARM_HEX} smoke #7" in r.output
        assert "firing warm-kitchen" in r.output
    finally:
        await h.stop()
