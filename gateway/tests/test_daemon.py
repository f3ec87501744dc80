"""`lifeline gateway run` as a real subprocess: READY/WATCHDOG/STOPPING over $NOTIFY_SOCKET, journald-style
logs on stderr, clean SIGTERM, exit 3 on configuration and key errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from lifeline.gateway.testing import TestNode, config_text

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
JOURNAL_LINE = re.compile(r"^<[0-7]>[a-z_-]+: \S")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LIFELINE, "gateway", *args], capture_output=True, text=True, timeout=60, env=env)


def _recv_until(s: socket.socket, want: bytes, deadline_s: float = 30) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        s.settimeout(max(0.1, end - time.monotonic()))
        try:
            msg = s.recv(4096)
        except TimeoutError:
            break
        got.append(msg)
        if want in msg.split(b"\n"):
            return got
    raise AssertionError(f"no {want!r} within {deadline_s}s; got {got}")


def test_run_notify_watchdog_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(config_text(state), encoding="utf-8")
    key = state / "gateway.key"
    r = _cli("keygen", "--out", str(key))
    assert r.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}\n", r.stdout)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _cli("keygen", "--out", str(key)).returncode == 1  # never overwrites silently
    node = TestNode(bytes.fromhex("a100000000000001"))
    prov = tmp_path / "prov.jsonl"
    prov.write_text(json.dumps(node.record()) + "\n")
    r = _cli("devices", "import", str(prov), "--config", str(cfg))
    assert r.returncode == 0, r.stderr

    sock_path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([LIFELINE, "gateway", "run", "--config", str(cfg)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        msgs = _recv_until(s, b"READY=1")
        assert any(b"STATUS=gateway gw-test: 1 devices" in m for m in msgs)
        _recv_until(s, b"WATCHDOG=1", 10)
        _recv_until(s, b"WATCHDOG=1", 10)  # keeps pinging while every stage beats
        r = _cli("status", "--config", str(cfg), "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["running"] and st["devices"] == {"active": 1, "revoked": 0}
        assert stat.S_IMODE((state / "buffer.db").stat().st_mode) == 0o600
        proc.send_signal(signal.SIGTERM)
        _recv_until(s, b"STOPPING=1", 20)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        s.close()
    stderr = proc.stderr.read() if proc.stderr else ""
    lines = [ln for ln in stderr.splitlines() if ln]
    assert lines and all(JOURNAL_LINE.match(ln) for ln in lines), stderr
    assert any(ln.startswith("<6>daemon: started gateway=gw-test devices=1") for ln in lines), stderr
    assert any(ln.startswith("<6>daemon: shutdown complete") for ln in lines), stderr
    assert node.root_key.hex() not in stderr


def test_run_refuses_bad_config_and_missing_key(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(config_text(tmp_path, extra="[forwarder]\nbatch_maximum = 5\n"), encoding="utf-8")
    r = _cli("run", "--config", str(cfg))
    assert r.returncode == 3
    assert f"{cfg}: forwarder.batch_maximum: unknown key" in r.stderr
    assert all(JOURNAL_LINE.match(ln) for ln in r.stderr.splitlines() if ln)

    cfg.write_text(config_text(tmp_path), encoding="utf-8")
    r = _cli("run", "--config", str(cfg))  # no key file yet
    assert r.returncode == 3
    assert "<3>daemon: cannot start" in r.stderr and "gateway.key" in r.stderr

    key = tmp_path / "gateway.key"
    assert _cli("keygen", "--out", str(key)).returncode == 0
    os.chmod(key, 0o644)
    r = _cli("run", "--config", str(cfg))
    assert r.returncode == 3 and "mode 0644" in r.stderr
    assert "PRIVATE KEY" not in r.stderr
