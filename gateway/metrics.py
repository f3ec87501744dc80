"""Prometheus text-format metrics on a loopback HTTP port (asyncio server, no framework).

Counters are plain dicts keyed by label values (cheap on the hot path); gauges are callbacks evaluated
at scrape time from in-memory state (values that need the database are refreshed by the maintenance
task). ``GET /metrics`` answers text format 0.0.4; anything else is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterable
from pathlib import Path

from lifeline.gateway.log import Log

_log = Log("metrics")
Labels = tuple[str, ...]
GaugeFn = Callable[[], Iterable[tuple[Labels, float]]]
MAX_REQUEST = 8192
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return str(int(v))
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class Counter:
    __slots__ = ("help", "labelnames", "name", "values")

    def __init__(self, name: str, help: str, labelnames: Labels) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self.values: dict[Labels, int] = {}

    def inc(self, *labels: str, n: int = 1) -> None:
        v = self.values
        v[labels] = v.get(labels, 0) + n

    def get(self, *labels: str) -> int:
        return self.values.get(labels, 0)

    def total(self) -> int:
        return sum(self.values.values())


class Gauge:
    __slots__ = ("fn", "help", "labelnames", "name")

    def __init__(self, name: str, help: str, labelnames: Labels, fn: GaugeFn) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self.fn = fn


class Metrics:
    def __init__(self, prefix: str = "lifeline_gateway_") -> None:
        self.prefix = prefix
        self._items: list[Counter | Gauge] = []

    def counter(self, name: str, help: str, labelnames: Labels = ()) -> Counter:
        c = Counter(self.prefix + name, help, labelnames)
        self._items.append(c)
        return c

    def gauge(self, name: str, help: str, fn: GaugeFn, labelnames: Labels = ()) -> Gauge:
        g = Gauge(self.prefix + name, help, labelnames, fn)
        self._items.append(g)
        return g

    def value(self, name: str) -> float | None:
        """Current value of an unlabelled metric (tests, status)."""
        for item in self._items:
            if item.name == self.prefix + name:
                if isinstance(item, Counter):
                    return item.total()
                return sum(v for _, v in item.fn())
        return None

    def render(self) -> str:
        out: list[str] = []
        for item in self._items:
            kind = "counter" if isinstance(item, Counter) else "gauge"
            out.append(f"# HELP {item.name} {item.help}")
            out.append(f"# TYPE {item.name} {kind}")
            if isinstance(item, Counter):
                samples: Iterable[tuple[Labels, float]] = sorted(item.values.items())
                if not item.labelnames and not item.values:
                    samples = [((), 0)]
            else:
                try:
                    samples = list(item.fn())
                except Exception as e:  # a broken gauge must not break the scrape
                    _log.warning("gauge failed", name=item.name, error=type(e).__name__)
                    continue
            for labels, v in samples:
                if item.labelnames:
                    lab = ",".join(f'{k}="{_escape(str(x))}"' for k, x in zip(item.labelnames, labels, strict=False))
                    out.append(f"{item.name}{{{lab}}} {_fmt(v)}")
                else:
                    out.append(f"{item.name} {_fmt(v)}")
        return "\n".join(out) + "\n"


def parse_text(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse Prometheus text format (what ``render`` writes) into name -> [(labels, value)]."""
    result: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labeltext, value = rest.rsplit("}", 1)
            labels: dict[str, str] = {}
            i = 0
            while i < len(labeltext):
                eq = labeltext.index("=", i)
                key = labeltext[i:eq].strip(", ")
                j = eq + 2
                buf = []
                while labeltext[j] != '"':
                    if labeltext[j] == "\\":
                        j += 1
                        buf.append({"n": "\n"}.get(labeltext[j], labeltext[j]))
                    else:
                        buf.append(labeltext[j])
                    j += 1
                labels[key] = "".join(buf)
                i = j + 1
        else:
            name, value = line.split(" ", 1)
            labels = {}
        result.setdefault(name.strip(), []).append((labels, float(value.strip())))
    return result


class MetricsServer:
    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_REQUEST)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])
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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
            if method in (b"GET", b"HEAD") and path.split(b"?")[0] == b"/metrics":
                status, body, ctype = "200 OK", self.metrics.render().encode(), CONTENT_TYPE
            elif method not in (b"GET", b"HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + (body if method != b"HEAD" else b""))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
