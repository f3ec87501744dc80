"""The real gateway daemon as a child process of the demo: ``lifeline gateway run --config FILE``.

The child is started in its own process group (a Ctrl-C in the terminal reaches the demo, which stops the
gateway with SIGTERM in its own time) and asks the kernel for SIGTERM should the demo die first, so no
gateway outlives it. Its Prometheus endpoint and status page listen on free loopback ports, which the
daemon writes to ``metrics.addr`` / ``status.addr`` in its state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

from lifeline.gateway.metrics import parse_text

Parsed = dict[str, list[tuple[dict[str, str], float]]]
STOP_TIMEOUT_S = 15.0

# Runs in the child before it becomes the daemon: SIGTERM when the demo (its parent) dies, then exec.
_LAUNCH = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"  # PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)\n"  # the parent is already gone
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class GatewayError(RuntimeError):
    """The gateway did not start or stopped on its own; the message carries its log's tail."""


def lifeline_executable() -> str:
    """The ``lifeline`` console script next to this interpreter (the venv's), else the one on PATH."""
    here = Path(sys.executable).with_name("lifeline")
    if here.is_file():
        return str(here)
    found = shutil.which("lifeline")
    if found is None:
        raise GatewayError("the lifeline command is not installed (run tools/bootstrap.sh setup)")
    return found


def _get(url: str, token: str | None, timeout_s: float) -> bytes:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        body: bytes = resp.read()
        return body


class GatewayProcess:
    def __init__(self, config: Path, state_dir: Path, log_path: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.metrics_url: str | None = None
        self.status_url: str | None = None
        self._token: str | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def argv(self) -> list[str]:
        return [lifeline_executable(), "gateway", "run", "--config", str(self.config)]

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _LAUNCH, str(os.getpid()), *self.argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, process_group=0)
        finally:
            log.close()

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until both ports are written and /metrics answers (raises GatewayError if the daemon exits)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        metrics_addr = self.state_dir / "metrics.addr"
        status_addr = self.state_dir / "status.addr"
        while True:
            if not self.running():
                raise GatewayError(f"the gateway exited with {self.exit_code()} during start:\n{self.log_tail()}")
            if metrics_addr.exists() and status_addr.exists():
                self.metrics_url = f"http://{metrics_addr.read_text().strip()}/metrics"
                self.status_url = f"http://{status_addr.read_text().strip()}/status.json"
                token = self.state_dir / "status.token"
                self._token = token.read_text().strip() if token.exists() else None
                with contextlib.suppress(OSError):
                    await self.scrape()
                    return
            if loop.time() > deadline:
                raise GatewayError(f"the gateway was not ready within {timeout_s:g} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def scrape(self, timeout_s: float = 2.0) -> Parsed:
        """Its /metrics, parsed (raises OSError when it does not answer)."""
        if self.metrics_url is None:
            raise OSError("metrics address unknown")
        body = await asyncio.to_thread(_get, self.metrics_url, None, timeout_s)
        return parse_text(body.decode("utf-8", "replace"))

    async def status(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """Its status page's JSON (open alarms with their life-cycle stage, active rule firings)."""
        if self.status_url is None:
            raise OSError("status address unknown")
        body = await asyncio.to_thread(_get, self.status_url + "?limit=0", self._token, timeout_s)
        out = json.loads(body)
        if not isinstance(out, dict):
            raise OSError("status.json is not an object")
        return out

    def exit_code(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (the daemon commits what it has and keeps its outbox), then SIGKILL after the timeout."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return proc.returncode

    def kill_now(self) -> None:
        """Last resort from a synchronous context (an exception while the loop is gone)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
