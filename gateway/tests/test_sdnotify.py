"""sd_notify over a real unix datagram socket, and the watchdog that pings only while stages progress."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifeline.gateway.clock import ManualClock
from lifeline.gateway.daemon import Watchdog, watchdog_max_age
from lifeline.gateway.health import Heartbeats
from lifeline.gateway.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    try:
        yield s, str(path)
    finally:
        s.close()


def _pending(s: socket.socket) -> list[bytes]:
    out = []
    s.setblocking(False)
    try:
        while True:
            out.append(s.recv(4096))
    except BlockingIOError:
        pass
    finally:
        s.settimeout(5)
    return out


def test_notifier_sends_datagrams(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_s == 4.0
    assert n.ready("3 devices")
    assert s.recv(4096) == b"READY=1\nSTATUS=3 devices"
    assert n.watchdog()
    assert s.recv(4096) == b"WATCHDOG=1"
    assert n.stopping()
    assert s.recv(4096) == b"STOPPING=1"


def test_abstract_socket_and_absent_systemd() -> None:
    name = f"lifeline-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert s.recv(4096) == b"READY=1"
    finally:
        s.close()
    off = Notifier({})
    assert not off.enabled and off.watchdog_s is None
    assert not off.ready() and not off.watchdog()
    # the watchdog belongs to another process (e.g. a forked helper): do not ping
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None
    # a vanished socket is not an error
    assert not Notifier({"NOTIFY_SOCKET": "/nonexistent/sock"}).ready()


def test_watchdog_pings_only_while_every_stage_is_fresh(notify_socket: tuple[socket.socket, str]) -> None:
    s, path = notify_socket
    clock = ManualClock()
    hbs = Heartbeats(clock)
    ingest, commit = hbs.register("ingest"), hbs.register("commit")
    wd = Watchdog(Notifier({"NOTIFY_SOCKET": path}), hbs, max_age_s=3.0)
    assert wd.tick()
    assert _pending(s) == [b"WATCHDOG=1"]
    clock.advance(2000)
    ingest.beat()
    clock.advance(2000)  # commit last beat 4 s ago: stuck
    assert not wd.tick()
    assert _pending(s) == []
    assert hbs.stale(3.0) == ["commit"]
    commit.beat()
    assert wd.tick()
    assert _pending(s) == [b"WATCHDOG=1"]
    assert (wd.pings, wd.withheld) == (2, 1)
    assert watchdog_max_age(30.0) == 15.0 and watchdog_max_age(1.0) == 3.0
