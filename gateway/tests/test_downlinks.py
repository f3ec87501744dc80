"""Downlinks: ACKs after commit, platform commands queued durably until the node's next window."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from lifeline.gateway.clock import lifeline_time
from lifeline.gateway.ingress.base import DownlinkRequest
from lifeline.gateway.registry import Registry
from lifeline.gateway.testing import Harness, MemoryAdapter, TestNode, start_harness
from lifeline.protocols import frame, schema


def _results(h: Harness) -> list[dict[str, Any]]:
    return [json.loads(p) for p in h.pub.topics("/down/result")]


async def _results_published(h: Harness) -> list[dict[str, Any]]:
    await h.gw.commands.drain_results(h.pub)
    assert not h.gw.commands.results
    return _results(h)


class CommitCheckingAdapter(MemoryAdapter):
    """Looks at the database (another connection) at the moment the gateway asks it to transmit."""

    def __init__(self, db: Path) -> None:
        super().__init__()
        self.db = db
        self.seen_committed: list[bool] = []

    async def send_downlink(self, request: DownlinkRequest) -> bool:
        with sqlite3.connect(self.db) as c:
            row = c.execute("SELECT up FROM counters WHERE device=?", (request.device_id,)).fetchone()
            n = c.execute("SELECT count(*) FROM readings").fetchone()[0]
        self.seen_committed.append(row is not None and n > 0)
        return await super().send_downlink(request)


async def test_ack_after_commit_with_alarm_state(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("7000000000000001"))
    ad = CommitCheckingAdapter(tmp_path / "buffer.db")
    h = await start_harness(tmp_path, [n], adapters=[ad])
    try:
        await h.hear(n.uplink(schema.K_ALARM_RAISED, {1: 42, 2: 0}, flags=frame.FLAG_ACK_REQ))
        await h.hear(n.smoke(0))  # no ACK_REQ, nothing queued: no downlink
        [req] = ad.downlinks
        assert ad.seen_committed == [True]
        f = n.decode_downlink(req.payload)
        assert f.header.kind == schema.C_ACK and f.header.flags & frame.FLAG_DOWN
        assert f.fields == {1: 1, 2: 42, 3: 0}
        assert f.header.time == lifeline_time(h.clock.now_ms())
        assert req.reception.adapter == "mem0" and req.deadline_ms == req.reception.rx_ms + 2000
        assert h.gw.stats.downlinks.get("mem0", "ack", "sent") == 1
    finally:
        await h.stop()


async def test_platform_command_waits_for_the_next_uplink(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("7000000000000002"))
    h = await start_harness(tmp_path, [n])
    try:
        cmd = {"id": "c-1", "device": n.hex, "command": "config", "fields": {"config_version": 3, "interval": 600}}
        await h.gw.commands.handle(json.dumps(cmd).encode())
        await h.gw.commands.handle(json.dumps(cmd).encode())  # a QoS 1 redelivery is not queued twice
        assert h.adapter.downlinks == []
        await h.hear(n.smoke(0))
        [req] = h.adapter.downlinks
        f = n.decode_downlink(req.payload)
        assert (f.header.kind, f.fields) == (schema.C_CONFIG, {1: 3, 2: 600})
        await h.hear(n.smoke(0))
        assert len(h.adapter.downlinks) == 1  # delivered once
        results = await _results_published(h)
        assert [(r["id"], r["status"]) for r in results] == [("c-1", "queued"), ("c-1", "queued"), ("c-1", "sent")]
        assert results[2]["fcnt"] == f.header.fcnt and results[2]["device"] == n.hex
    finally:
        await h.stop()


async def test_platform_ack_merges_into_the_gateway_ack(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("7000000000000003"))
    h = await start_harness(tmp_path, [n])
    try:
        await h.hear(n.uplink(schema.K_ALARM_RAISED, {1: 9, 2: 0}, flags=frame.FLAG_ACK_REQ))
        await h.gw.commands.handle(json.dumps({"id": "a-1", "device": n.hex, "command": "ack",
                                               "fields": {"alarm_id": 9, "alarm_state": 1}}).encode())
        await h.gw.commands.handle(json.dumps({"id": "t-1", "device": n.hex, "command": "time_sync"}).encode())
        await h.hear(n.uplink(schema.K_ALARM_RAISED, {1: 9, 2: 0}, flags=frame.FLAG_ACK_REQ))
        second = n.decode_downlink(h.adapter.downlinks[1].payload)
        assert second.fields == {1: 2, 2: 9, 3: 1}  # acks this uplink and carries the platform's state
        await h.hear(n.smoke(0))  # the next window carries the time sync, time filled in at send
        third = n.decode_downlink(h.adapter.downlinks[2].payload)
        assert third.header.kind == schema.C_TIME_SYNC and third.fields == {1: lifeline_time(h.clock.now_ms())}
        assert [d.header.fcnt for d in map(n.decode_downlink, (r.payload for r in h.adapter.downlinks))] == [1, 2, 3]
    finally:
        await h.stop()


async def test_invalid_commands_are_rejected_with_reasons(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("7000000000000004"))
    gone = TestNode(bytes.fromhex("7000000000000005"))
    h = await start_harness(tmp_path, [n, gone])
    with Registry(h.config.gateway.registry_db) as reg:
        reg.revoke(gone.device_id, now_ms=h.clock.now_ms())
    await h.gw.reload_devices()
    bad: list[tuple[bytes, str]] = [
        (b"{nope", "bad_json"),
        (b"[]", "bad_json"),
        (json.dumps({"device": n.hex, "command": "config"}).encode(), "bad_id"),
        (json.dumps({"id": "x1", "device": "zz", "command": "config"}).encode(), "bad_device"),
        (json.dumps({"id": "x2", "device": "7000000000000099", "command": "config"}).encode(), "unknown_device"),
        (json.dumps({"id": "x3", "device": gone.hex, "command": "config"}).encode(), "revoked_device"),
        (json.dumps({"id": "x4", "device": n.hex, "command": "smoke"}).encode(), "unknown_command"),
        (json.dumps({"id": "x5", "device": n.hex, "command": "config", "fields": {"colour": 1}}).encode(),
         "unknown_field:colour"),
        (json.dumps({"id": "x6", "device": n.hex, "command": "config", "fields": {"config_version": 1,
                                                                                  "interval": 5}}).encode(),
         "out_of_range"),
        (json.dumps({"id": "x7", "device": n.hex, "command": "config", "fields": {}}).encode(), "missing_field"),
        (json.dumps({"id": "x8", "device": n.hex, "command": "config", "fields": {"config_version": "1"}}).encode(),
         "bad_value:config_version"),
        (json.dumps({"id": "x9", "device": n.hex, "command": "config", "extra": 1}).encode(), "unknown_key:extra"),
        (b"x" * 5000, "too_large"),
    ]
    try:
        for payload, _ in bad:
            await h.gw.commands.handle(payload)
        results = await _results_published(h)
        assert [r["reason"] for r in results] == [reason for _, reason in bad]
        assert all(r["status"] == "rejected" for r in results)
        assert h.gw.stats.commands.get("rejected") == len(bad)
    finally:
        await h.stop()


async def test_commands_survive_restart_expire_and_retry_when_not_sent(tmp_path: Path) -> None:
    n = TestNode(bytes.fromhex("7000000000000006"))
    h = await start_harness(tmp_path, [n], sections={"downlinks": {"command_ttl_s": 60, "max_per_device": 2}})
    for i in range(3):
        await h.gw.commands.handle(json.dumps({"id": f"m-{i}", "device": n.hex, "command": "maintenance",
                                               "fields": {"duration": 300}}).encode())
    assert [r["status"] for r in await _results_published(h)] == ["queued", "queued", "rejected"]
    await h.stop()

    refusing = MemoryAdapter(accept_downlinks=False)  # e.g. duty cycle exhausted
    h2 = await start_harness(tmp_path, [n], provision_nodes=False, clock=h.clock, adapters=[refusing])
    try:
        await h2.hear(n.smoke(0))
        assert len(refusing.downlinks) == 1
        refusing.accept_downlinks = True
        await h2.hear(n.smoke(0))  # the same command again, in the next window, with a fresh counter
        fr = [n.decode_downlink(r.payload) for r in refusing.downlinks]
        assert [f.header.kind for f in fr] == [schema.C_MAINTENANCE] * 2
        assert fr[1].header.fcnt > fr[0].header.fcnt
        h2.clock.advance(61_000)
        await h2.gw.maintain()
        results = await _results_published(h2)
        assert [(r["id"], r["status"]) for r in results] == [("m-0", "sent"), ("m-1", "expired")]
        await h2.hear(n.smoke(0))
        assert len(refusing.downlinks) == 2  # nothing left to send
    finally:
        await h2.stop()
