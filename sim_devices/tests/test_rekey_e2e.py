"""Over-the-air re-key end to end (docs/keys.md, "Rotating a device key"): a simulated node running the real
firmware (SimNode: sim HAL, RAK3172 model) talks through a bridge to the real in-process gateway daemon
(registry, pipeline, commit stage, downlink sender); the platform asks for `rekey`, the node confirms under
the pending keys with counter 1, the gateway switches in one registry transaction and acknowledges under the
new keys. Then old-key frames are refused and new-key frames accepted with the counter restarted; and a power
loss of the node after the gateway switched but before the node heard the ACK continues correctly. Both
crypto suites."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from lifeline.firmware import storage
from lifeline.firmware.simnode import SimNode
from lifeline.gateway.registry import Registry
from lifeline.gateway.testing import Harness, TestNode, start_harness
from lifeline.protocols import frame, rekey, schema, schema_table, suites

DEV = bytes.fromhex("70b3d57ed00000a1")


class GatewayAir:
    """The node's air, ending at the real gateway: every uplink is heard by the daemon's memory adapter and
    the downlink it hands back (if any) is returned in the node's receive window. The node runs in a worker
    thread; the gateway in the event loop."""

    def __init__(self, h: Harness, loop: asyncio.AbstractEventLoop) -> None:
        self.h = h
        self.loop = loop
        self.frames: list[bytes] = []
        self.drop_down_after: Any = None  # callable(uplink) -> True: the downlink answering it is lost

    async def _exchange(self, payload: bytes) -> bytes | None:
        before = len(self.h.adapter.downlinks)
        await self.h.hear(payload)
        await self.h.gw.sender.wait_idle()
        new = self.h.adapter.downlinks[before:]
        return new[-1].payload if new else None

    def uplink(self, hal: Any, payload: bytes, params: Any) -> bytes | None:
        self.frames.append(payload)
        down = asyncio.run_coroutine_threadsafe(self._exchange(payload), self.loop).result(30)
        if down is not None and self.drop_down_after is not None and self.drop_down_after(payload):
            return None
        return down

    def poll(self, hal: Any, dev_id: bytes) -> None:
        return None

    def register(self, *a: Any) -> None:
        pass


def _registry(h: Harness) -> Registry:
    return Registry(h.config.gateway.registry_db, h.gw.gateway_keys.kek)


async def _wake(sn: SimNode, h: Harness) -> None:
    await asyncio.to_thread(sn.wake)
    sn.hal.resume(3, "timer", 1_000_000)  # past the report interval: every wake sends a periodic report
    h.clock.advance(1_000_000)  # the gateway's clock moves on with the node's sleep


def _kinds(frames: list[bytes]) -> list[tuple[int, int]]:
    return [(frame.parse_header(f).kind, frame.parse_header(f).fcnt) for f in frames]


async def _setup(tmp_path: Path, suite: str) -> tuple[Harness, SimNode, GatewayAir, TestNode]:
    root = hashlib.sha256(b"rekey-e2e" + suite.encode()).digest()
    tn = TestNode(DEV, kind="manhole_tilt", root_key=root, suite=suite)
    h = await start_harness(tmp_path / "gw", [tn])
    air = GatewayAir(h, asyncio.get_running_loop())
    sn = SimNode("tilt", dev_id=DEV, root_key=root, air=air, config_extra={"suite": suite, "interval": 600})
    return h, sn, air, tn


async def _ask_rekey(h: Harness) -> None:
    await h.gw.commands.handle(json.dumps({"id": "rk-1", "device": DEV.hex(), "command": "rekey"}).encode())
    assert h.gw.commands.results[-1]["status"] == "queued", h.gw.commands.results[-1]


@pytest.mark.parametrize("suite", ["intl", "sm"])
async def test_rekey_end_to_end(tmp_path: Path, suite: str) -> None:
    h, sn, air, tn = await _setup(tmp_path, suite)
    try:
        await _wake(sn, h)
        assert h.rejects() == {}
        assert any(k == schema.K_TILT for k, _ in _kinds(air.frames))
        with _registry(h) as reg:
            assert reg.get(DEV).key_epoch == 0  # type: ignore[union-attr]
        await _ask_rekey(h)
        with _registry(h) as reg:
            pending = reg.pending(DEV)
        assert pending is not None and pending.epoch == 1
        n_before = len(air.frames)
        await _wake(sn, h)  # the periodic report opens the window for `rekey`; confirm; ACK; switch
        new_root = rekey.pending_root(suites.suite_id(suite), tn.root_key, DEV, 1, pending.seed)
        assert new_root == pending.root_key
        sent = _kinds(air.frames[n_before:])
        assert (schema_table.K_REKEY_CONFIRM, 1) in sent, sent
        with _registry(h) as reg:
            d = reg.get(DEV)
            assert d is not None and d.key_epoch == 1 and d.root_key == new_root
            assert reg.pending(DEV) is None
        assert sn.node.cfg.root_key == new_root
        assert not sn.hal.fs.exists("/rekey")
        # the gateway's own table switched too, and its ACK for the confirm was under the new keys
        assert h.gw.devices.get(DEV).key_epoch == 1  # type: ignore[union-attr]
        new_keys = frame.derive_keys(new_root, DEV, suites.suite_id(suite))
        ack = [frame.decode(r.payload, new_keys, True) for r in h.adapter.downlinks[-1:]]
        assert ack[0].header.kind == schema.C_ACK and ack[0].fields[1] == 1

        # afterwards: the node's frames are under the new key, counting on from the confirm's 1
        n_before = len(air.frames)
        await _wake(sn, h)
        after = air.frames[n_before:]
        assert after and frame.decode(after[0], new_keys).header.fcnt == 2
        assert "bad_mic" not in h.rejects()
        # an old-key frame (even with a fresh counter) is refused; a new-key frame is accepted
        old = frame.encode(tn.keys, DEV, 100_000, 5, schema.K_TILT, {1: 7, 2: 0})
        await h.hear(old)
        assert h.rejects().get("bad_mic") == 1
        ok = frame.encode(new_keys, DEV, 100_001, 5, schema.K_TILT, {1: 7, 2: 0})
        accepted = h.gw.stats.accepted.values.copy()
        await h.hear(ok)
        assert h.gw.stats.accepted.values != accepted
        assert h.rejects().get("bad_mic") == 1
    finally:
        await h.stop()


@pytest.mark.parametrize("suite", ["intl", "sm"])
async def test_rekey_survives_a_node_power_loss_before_the_ack(tmp_path: Path, suite: str) -> None:
    h, sn, air, tn = await _setup(tmp_path, suite)
    try:
        await _wake(sn, h)
        await _ask_rekey(h)
        # the gateway hears the confirm and switches, but its ACK is lost; then the node loses power
        air.drop_down_after = lambda up: frame.parse_header(up).kind == schema_table.K_REKEY_CONFIRM
        await _wake(sn, h)
        with _registry(h) as reg:
            d = reg.get(DEV)
            assert d is not None and d.key_epoch == 1
            new_root = d.root_key
        assert sn.hal.fs.exists("/rekey") and sn.node.cfg.root_key == tn.root_key  # old key still active
        rec = storage.load_record(sn.hal.fs, "/rekey")
        assert rec is not None and rec[34:66] == new_root and rec[2:34] == tn.root_key
        sn.hal.power_loss(1000)
        air.drop_down_after = None
        n_before = len(air.frames)
        await _wake(sn, h)  # resume: the confirm again (counter 1), acknowledged again, the node switches
        sent = _kinds(air.frames[n_before:])
        assert sent[0] == (schema_table.K_REKEY_CONFIRM, 1), sent
        assert not sn.hal.fs.exists("/rekey")
        assert json.loads(storage.read(sn.hal.fs, "/config.json"))["root_key"] == new_root.hex()
        new_keys = frame.derive_keys(new_root, DEV, suites.suite_id(suite))
        for f in air.frames[n_before:]:
            frame.decode(f, new_keys)  # everything after the resume is under the new key
        assert [frame.parse_header(f).fcnt for f in air.frames[n_before + 1:]][:1] == [2]
        assert "bad_mic" not in h.rejects(), h.rejects()
        # and the node keeps working across a further power loss (flash holds the new key and counter)
        sn.hal.power_loss(1000)
        n_before = len(air.frames)
        await _wake(sn, h)
        assert air.frames[n_before:] and all(frame.decode(f, new_keys) for f in air.frames[n_before:])
        assert "bad_mic" not in h.rejects() and "replay" not in h.rejects(), h.rejects()
    finally:
        await h.stop()
