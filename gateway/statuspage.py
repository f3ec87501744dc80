"""A small read-only status page for a technician's phone, on its own port beside /metrics.

``GET /`` is a mobile-friendly HTML page (no script, no framework, every value escaped), ``GET
/status.json`` the same facts as JSON (``lifeline gateway status`` reads its last alarms from it). Both
need the token from ``[status_page] token_file`` (created 0600 by ``lifeline gateway init``), as
``Authorization: Bearer <token>`` or ``?token=<token>`` (a phone browser cannot set headers); it is
compared in constant time. Anything else: 401 without a valid token, then 404 / 405. The page refreshes
itself every 15 s. The facts come from :mod:`statusinfo` (the metrics summary plus per-device receptions).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from lifeline.gateway.log import Log
from lifeline.gateway.metrics import Counter
from lifeline.gateway.statusinfo import age_text, size_text
from lifeline.protocols import keys

if TYPE_CHECKING:
    from lifeline.gateway.daemon import Gateway

_log = Log("statuspage")
MAX_REQUEST = 8192
MAX_TOKEN_FILE = 4096
MIN_TOKEN_LEN = 16
MAX_CLIENTS = 8
REFRESH_S = 15
DEVICE_ROWS = 200
Snapshot = Callable[[str, int], Mapping[str, Any]]  # (device id prefix, row limit) -> facts
SECURITY_HEADERS = (
    "Cache-Control: no-store\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'\r\n"
)
_TOKEN_TEXT = re.compile(r"^[\x21-\x7e]+$")
_HEX = re.compile(r"^[0-9a-f]{0,16}$")


class StatusPageError(Exception):
    """The status page cannot start (token file, port). The message never contains the token."""


# ---------------------------------------------------------------------------------------------- token


def new_token() -> str:
    return secrets.token_urlsafe(32)


def create_token_file(path: Path) -> bool:
    """Write a new token to ``path`` (mode 0600, O_EXCL, fsynced). False if the file already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (new_token() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def load_token(path: Path) -> str:
    """The token in ``path``: a regular file, not readable by group/others, one line of >= 16 visible
    ASCII characters. Raises StatusPageError naming the file and the problem (never the content)."""
    where = f"status_page.token_file {path}"

    def refused(reason: str, message: str) -> StatusPageError:
        hint = " (lifeline gateway init creates it)" if reason == "missing" else ""
        return StatusPageError(message + hint)

    data = keys.read_private_file(path, "status_page.token_file", max_bytes=MAX_TOKEN_FILE, error=refused)
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise StatusPageError(f"{where} is not ASCII text") from None
    if len(token) < MIN_TOKEN_LEN or not _TOKEN_TEXT.match(token):
        raise StatusPageError(f"{where} must hold one token of {MIN_TOKEN_LEN} or more visible characters")
    return token


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


# ---------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font:16px/1.4 system-ui,sans-serif;margin:0;padding:0 12px 24px;background:#f6f7f9;color:#1b1f24}
header{padding:12px 0}h1{font-size:1.3em;margin:0}h2{font-size:1.05em;margin:0 0 6px}
section{background:#fff;border-radius:10px;padding:10px 12px;margin:10px 0;box-shadow:0 1px 2px #0002}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:3px 6px 3px 0;vertical-align:top}
th{font-weight:600;color:#555;font-size:.85em}.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:999px;padding:2px 10px;font-weight:600;font-size:.9em}
.ok{background:#d7f5dd;color:#11602a}.warn{background:#fff0c2;color:#7a5200}.bad{background:#ffd9d6;color:#8e1b12}
.muted{color:#666;font-size:.85em}.dev{font-family:ui-monospace,monospace;font-size:.9em}
form{display:flex;gap:6px;margin-bottom:8px}input[type=search]{flex:1;font-size:16px;padding:6px}
button{font-size:16px;padding:6px 12px}.scroll{overflow-x:auto}td.num{white-space:nowrap}
ul.list{list-style:none;margin:0;padding:0}ul.list li{padding:6px 0;border-top:1px solid #eee}
.top{display:flex;flex-wrap:wrap;gap:4px 10px;align-items:baseline}.age{margin-left:auto;white-space:nowrap}
"""


def _e(v: object) -> str:
    return escape(str(v), quote=True)


def _badge(text: str, level: str) -> str:
    return f'<span class="badge {_e(level)}">{_e(text)}</span>'


def _rows(pairs: Iterable[tuple[str, str]], cls: str = "") -> str:
    """Key/value rows; values are already-escaped HTML."""
    return "".join(f'<tr{f" class={chr(34)}{_e(cls)}{chr(34)}" if cls else ""}><th>{_e(k)}</th><td>{v}</td></tr>'
                   for k, v in pairs)


def _table(head: Iterable[str], rows: Iterable[Iterable[tuple[str, str]]], row_ids: Iterable[str] = ()) -> str:
    """rows: cells as (css class, escaped html)."""
    ids = list(row_ids)
    body = []
    for i, cells in enumerate(rows):
        rid = f' id="{_e(ids[i])}"' if i < len(ids) else ""
        body.append(f"<tr{rid}>" + "".join(f'<td class="{_e(c)}">{v}</td>' if c else f"<td>{v}</td>"
                                           for c, v in cells) + "</tr>")
    return ('<div class="scroll"><table><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")


def _n(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return _e(v)


def _dbm(v: Any) -> str:
    return "-" if v is None else f"{_e(v)} dBm"


def overall(s: Mapping[str, Any]) -> tuple[str, str]:
    """(text, level) of the one-line verdict at the top."""
    health = s.get("health", {})
    if health.get("state") != "ok":
        return f"stage stalled: {', '.join(health.get('stale_stages', []))}", "bad"
    if s.get("disk", {}).get("over_quota"):
        return "over disk quota", "bad"
    if s.get("uplink") and not s.get("uplink_connected"):
        return "uplink down, buffering", "warn"
    if not s.get("uplink"):
        return "no uplink configured, buffering", "warn"
    return "ok", "ok"


def _plural(n: Any, word: str) -> str:
    return f"{_n(n)} {word}" + ("" if n == 1 else "s")


def _item(item_id: str, top: Iterable[str], bottom: Iterable[str]) -> str:
    """One card line pair of a list (device, alarm); parts are escaped HTML."""
    rid = f' id="{_e(item_id)}"' if item_id else ""
    return (f'<li{rid}><div class="top">{" ".join(top)}</div>'
            f'<div class="muted">{" · ".join(bottom)}</div></li>')


def render_html(s: Mapping[str, Any], *, query: str = "", token: str = "") -> str:
    """The page. Every value from ``s`` passes :func:`html.escape`."""
    verdict, level = overall(s)
    parts: list[str] = []
    gid = _e(s.get("gateway_id", "?"))
    parts.append(f'<header><h1>Gateway <span id="gateway-id">{gid}</span></h1>'
                 f'<p id="verdict">{_badge(verdict, level)}</p>'
                 f'<p class="muted">updated {_e(s.get("generated_at", ""))} · up {_e(age_text(s.get("uptime_s")))}'
                 f' · refreshes every {REFRESH_S} s</p></header>')

    health = s.get("health", {})
    stages = health.get("stages", {})
    stale = set(health.get("stale_stages", []))
    parts.append('<section id="health"><h2>Health</h2>'
                 f'<p>{_n(len(stages) - len(stale))} of {_plural(len(stages), "stage")} beating</p><table>'
                 + _rows((name, _badge(f"{age:.0f} s ago", "bad" if name in stale else "ok"))
                         for name, age in stages.items()) + "</table></section>")

    radio_rows = []
    radio_ids = []
    adapters = []
    for name, r in sorted(s.get("radios", {}).items()):
        radio_ids.append(f"radio-{name}")
        radio_rows.append([("", _e(name)), ("num", _n(r["frames_in"])), ("num", _n(r["accepted"])),
                           ("num", _n(r["duplicates"])), ("num", _n(r["rejected"]))])
        adapters += [f"{_e(a)}: {_plural(x['frames_in'], 'frame')}" for a, x in sorted(r["adapters"].items())]
    parts.append('<section id="radios"><h2>Radios</h2>' + (
        _table(("radio", "frames", "accepted", "dupes", "rejected"), radio_rows, radio_ids)
        + f'<p class="muted">adapters: {" · ".join(adapters)}</p>'
        if radio_rows else '<p class="muted">no frames yet</p>') + "</section>")

    backlog = s.get("backlog", {})
    pending = any(backlog.values()) if backlog else False
    eta = s.get("drain_eta_s")
    parts.append('<section id="backlog"><h2>Backlog</h2><table>' + _rows([
        ("alarm", _n(backlog.get("alarm", 0))), ("event", _n(backlog.get("event", 0))),
        ("periodic", _n(backlog.get("periodic", 0))),
        ("outbox batches", _n(s.get("outbox_batches", 0))),
        ("oldest buffered", _e(age_text(s.get("oldest_buffered_age_s"))) if pending else "-"),
        ("drain rate", f"{_n(s.get('drain_rate', 0))} /s"),
        ("drain ETA", _e("not draining" if eta == -1 else age_text(eta)) if pending else "-"),
    ]) + "</table></section>")

    uplink = s.get("uplink", {})
    parts.append('<section id="uplink"><h2>Uplink</h2>' + ("<table>" + _rows(
        (name, _badge(state, "ok" if state == "connected" else "warn")) for name, state in sorted(uplink.items()))
        + "</table>" if uplink else '<p class="muted">no endpoints configured (buffering only)</p>') + "</section>")

    alarms = s.get("last_alarms", [])
    parts.append('<section id="alarms"><h2>Last alarms</h2>' + ('<ul class="list">' + "".join(_item(
        "", [f'<span class="dev">{_e(a["device_id"])}</span>', f"<b>{_e(a['kind'])}</b>"
             + (" " + _badge("test", "warn") if a["test"] else ""), f'<span class="age">{_e(age_text(a["age_s"]))} ago'
             "</span>"],
        [_e(a["adapter"]), _dbm(a["rssi"])]) for a in alarms) + "</ul>"
        if alarms else '<p class="muted">none since start</p>') + "</section>")

    rules = s.get("rules")
    if rules:
        stages = rules.get("alarm_stages", {})
        open_alarms = s.get("open_alarms", [])
        firings = s.get("active_firings", [])
        mode = rules.get("mode") or "?"
        parts.append(
            '<section id="rules"><h2>Rules and node alarms</h2><table>' + _rows([
                ("mode", _badge(mode, "warn" if mode == "emergency" else "ok")
                 + (" " + _badge("failover: uplink down", "warn") if rules.get("failover") else "")),
                ("rules", f"{_n(rules.get('loaded', 0))} loaded · {_n(rules.get('active', 0))} firing"),
                ("alarm stages", _e(" · ".join(f"{k} {_n(v)}" for k, v in stages.items() if v) or "none")),
            ]) + "</table>"
            + ('<h2>Open alarms</h2><ul class="list">' + "".join(_item(
                "", [f'<span class="dev">{_e(a["device_id"])}</span>', f"<b>{_e(a['cause'])}</b>",
                     _badge(a["stage"], "ok" if a["acked"] else "bad")
                     + (" " + _badge("escalated", "bad") if a["escalated"] else ""),
                     f'<span class="age">{_e(age_text(a["raised_age_s"]))} ago</span>'],
                [f"alarm {_n(a['alarm_id'])}"]) for a in open_alarms) + "</ul>" if open_alarms else "")
            + ('<h2>Active rule firings</h2><ul class="list">' + "".join(_item(
                "", [f"<b>{_e(f['rule'])}</b>", f'<span class="dev">{_e(f["device_id"])}</span>',
                     f'<span class="age">since {_e(age_text(f["since_age_s"]))}</span>'],
                ["value " + ("-" if f["value"] is None else _n(f["value"]))]) for f in firings) + "</ul>"
               if firings else "")
            + "</section>")

    d = s.get("disk", {})
    free = d.get("free_bytes")
    total = d.get("total_bytes")
    parts.append('<section id="disk"><h2>Disk</h2><table>' + _rows([
        ("buffer", f"{_e(size_text(d.get('buffer_bytes')))} of {_e(size_text(d.get('quota_bytes')))} quota"
         + (" " + _badge("over quota", "bad") if d.get("over_quota") else "")),
        ("registry", _e(size_text(d.get("registry_bytes")))),
        ("free", _e(f"{size_text(free)} of {size_text(total)}") if free is not None else "-"),
    ]) + "</table></section>")

    devs = s.get("devices_seen", [])
    registered = s.get("devices", {})
    hidden = f'<input type="hidden" name="token" value="{_e(token)}">' if token else ""
    parts.append(
        '<section id="devices"><h2>Devices</h2>'
        f'<p class="muted">{_n(sum(registered.values()) if registered else 0)} registered '
        f'({", ".join(f"{_e(k)} {_n(v)}" for k, v in sorted(registered.items()))}); '
        f'{_n(s.get("devices_heard", 0))} heard since start</p>'
        f'<form method="get" action="/">{hidden}<input type="search" name="q" value="{_e(query)}" '
        'placeholder="device id (hex prefix)" autocomplete="off" spellcheck="false"><button>Find</button></form>'
        + ('<ul class="list">' + "".join(_item(
            f"dev-{r['device_id']}",
            [f'<span class="dev">{_e(r["device_id"])}</span>'
             + ("" if r["status"] == "active" else " " + _badge(r["status"], "bad")),
             f'<span class="age">{_e(age_text(r["last_seen_s"]))} ago</span>'],
            [f'<span class="rssi">{_dbm(r["rssi"])}</span>',
             "SNR " + ("-" if r["snr"] is None else f"{_e(r['snr'])} dB"), _e(r["adapter"]),
             _e(r["kind"]) + (" (test)" if r["test"] else ""), f"fcnt {_n(r['fcnt'])}"]) for r in devs) + "</ul>"
           if devs else '<p class="muted">no device heard' + (" with that id" if query else " since start")
           + "</p>") + "</section>")

    title = f"Lifeline gateway {gid}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="refresh" content="{REFRESH_S}"><meta name="referrer" content="no-referrer">'
            f"<title>{title}</title><style>{_CSS}</style></head><body>"
            + "".join(parts) + "</body></html>\n")


# ---------------------------------------------------------------------------------------------- server


class StatusServer:
    def __init__(self, snapshot: Snapshot, token: str, host: str, port: int,
                 requests: Counter | None = None) -> None:
        self.snapshot = snapshot
        self._token_digest = _digest(token)
        self.host = host
        self.port = port
        self.requests = requests
        self._server: asyncio.Server | None = None
        self._clients = 0

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST)
        self.port = int(self._server.sockets[0].getsockname()[1])
        _log.info("listening", address=f"{self.host}:{self.port}")
        return self.host, self.port

    def write_address(self, path: Path) -> None:
        path.write_text(f"{self.host}:{self.port}\n", encoding="utf-8")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    def authorised(self, headers: Mapping[str, str], params: Mapping[str, list[str]]) -> bool:
        given = ""
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif params.get("token"):
            given = params["token"][0]
        return bool(given) and hmac.compare_digest(_digest(given), self._token_digest)

    def respond(self, method: str, target: str, headers: Mapping[str, str]) -> tuple[int, str, bytes, str]:
        """(status, content type, body, extra headers) for one request."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"GET only\n", "Allow: GET, HEAD\r\n"
        url = urlsplit(target)
        params = parse_qs(url.query, keep_blank_values=True)
        if not self.authorised(headers, params):
            body = (b"<!doctype html><html><head><meta name=\"viewport\" content=\"width=device-width\">"
                    b"<title>401</title></head><body><h1>401: token required</h1><p>Open this page with "
                    b"?token=... (the token is in the gateway's status token file).</p></body></html>\n")
            return 401, "text/html; charset=utf-8", body, 'WWW-Authenticate: Bearer realm="lifeline-gateway"\r\n'
        query = params.get("q", [""])[0].strip().lower()
        if not _HEX.match(query):
            query = "\x00"  # matches no device; shown back to the user escaped
            shown = params.get("q", [""])[0]
        else:
            shown = query
        if url.path == "/":
            snap = self.snapshot(query, DEVICE_ROWS)
            token = params.get("token", [""])[0] if "token" in params else ""
            return 200, "text/html; charset=utf-8", render_html(snap, query=shown, token=token).encode(), ""
        if url.path == "/status.json":
            try:
                limit = max(0, min(100_000, int(params.get("limit", [str(DEVICE_ROWS)])[0])))
            except ValueError:
                limit = DEVICE_ROWS
            snap = self.snapshot(query, limit)
            return 200, "application/json", json.dumps(snap, sort_keys=True).encode(), ""
        return 404, "text/plain; charset=utf-8", b"not found\n", ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            method, target = (parts[0], parts[1]) if len(parts) >= 3 else ("", "/")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if self._clients > MAX_CLIENTS:
                code, ctype, body, extra = 503, "text/plain; charset=utf-8", b"busy\n", "Retry-After: 2\r\n"
            else:
                try:
                    code, ctype, body, extra = self.respond(method, target, headers)
                except Exception as e:  # a page bug must not take the daemon down
                    _log.warning("status page failed", error=type(e).__name__)
                    code, ctype, body, extra = 500, "text/plain; charset=utf-8", b"internal error\n", ""
            if self.requests is not None:
                self.requests.inc(str(code))
            reason = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                      500: "Internal Server Error", 503: "Service Unavailable"}[code]
            writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"{SECURITY_HEADERS}{extra}Connection: close\r\n\r\n".encode()
                         + (body if method != "HEAD" else b""))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def start(gw: Gateway) -> StatusServer | None:
    """Start the page for a running gateway if ``[status_page] token_file`` is set; None otherwise.
    Raises StatusPageError (the daemon exits 3)."""
    from lifeline.gateway.statusinfo import snapshot

    cfg = gw.config.status_page
    if cfg.token_file is None:
        return None
    token = await asyncio.to_thread(load_token, cfg.token_file)
    requests = gw.metrics.counter("status_page_requests_total", "Status page requests by HTTP status.", ("code",))
    server = StatusServer(lambda q, n: snapshot(gw, query=q, limit=n), token, cfg.listen, cfg.port, requests)
    try:
        await server.start()
        server.write_address(gw.config.gateway.state_dir / "status.addr")
    except OSError as e:
        await server.close()
        raise StatusPageError(f"status page port {cfg.listen}:{cfg.port}: {e.strerror or e}") from None
    return server
