"""NB-IoT ingress against a real Mosquitto with simulated nodes publishing real protected frames."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest

from lifeline.gateway.clock import SystemClock
from lifeline.gateway.config import IngressSpec
from lifeline.gateway.ingress import registry
from lifeline.gateway.ingress.base import DownlinkRequest, IngressAdapter, RawFrame, Reception
from lifeline.gateway.ingress.nbiot import (
    NbiotAdapter,
    NbiotConfig,
    device_from_topic,
    down_topic,
    up_topic,
)
from lifeline.protocols import frame, schema
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.nbiot_sim import NbiotNodeSim

ROOT = bytes(range(32))
DEV_A = bytes.fromhex("70b3d5000000000a")
DEV_B = bytes.fromhex("70b3d5000000000b")


class Sink:
    """Collects frames; ``gate`` (when cleared) holds ``submit`` like a full pipeline would."""

    def __init__(self) -> None:
        self.frames: list[RawFrame] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def submit(self, raw: RawFrame) -> None:
        await self.gate.wait()
        self.frames.append(raw)


class DurableSink(Sink):
    """Like the pipeline: ``submit_durable`` returns only once the frame is "committed" (``commit`` set)."""

    def __init__(self) -> None:
        super().__init__()
        self.commit = asyncio.Event()
        self.commit.set()
        self.in_progress: list[RawFrame] = []

    async def submit_durable(self, raw: RawFrame) -> str:
        self.in_progress.append(raw)
        await self.commit.wait()
        self.in_progress.remove(raw)
        self.frames.append(raw)
        return "accepted"


async def eventually(pred: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


def adapter(broker: MosquittoBroker, name: str = "nb0", **options: object) -> NbiotAdapter:
    table: dict[str, object] = {"host": broker.host, "port": broker.port, "client_id": f"gw-{name}",
                                "reconnect_min_s": 0.05, "reconnect_max_s": 0.5}
    table.update(options)
    return NbiotAdapter.from_config(table, name=name)


def heartbeat(node: NbiotNodeSim, uptime: int) -> bytes:
    return node.send(schema.K_HEARTBEAT, {1: uptime})


def test_topic_scheme() -> None:
    assert up_topic(DEV_A) == "lifeline/v1/nodes/70b3d5000000000a/up"
    assert down_topic(DEV_A) == "lifeline/v1/nodes/70b3d5000000000a/down"
    assert device_from_topic(up_topic(DEV_A)) == DEV_A
    for bad in ("lifeline/v1/nodes/70B3D5000000000A/up", "lifeline/v1/nodes/70b3d5/up",
                "lifeline/v1/nodes/70b3d5000000000a/down", "lifeline/v1/gw/up/live", "x/70b3d5000000000a/up"):
        assert device_from_topic(bad) is None, bad


async def test_frames_reach_the_sink_with_their_reception(mosquitto: MosquittoBroker) -> None:
    sink = Sink()
    nb = adapter(mosquitto)
    as_adapter: IngressAdapter = nb  # the seam, checked by mypy
    assert as_adapter.radio == "nbiot"
    await nb.start(sink)
    try:
        assert await nb.wait_connected(10)
        with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a, \
                NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_B, ROOT) as b:
            sent = [heartbeat(a, 1), heartbeat(b, 2), heartbeat(a, 3),
                    a.send(schema.K_SMOKE, {1: 2, 2: 150})]  # encrypted kind
        await eventually(lambda: len(sink.frames) == 4)
        assert [f.payload for f in sink.frames] == sent
        for f in sink.frames:
            assert f.reception.radio == "nbiot" and f.reception.adapter == "nb0"
            assert f.reception.context == frame.parse_header(f.payload).dev_id
            assert abs(f.reception.rx_ms - time.time() * 1000) < 60_000
        # the frames are real: they verify with the node's keys
        got = frame.decode(sink.frames[3].payload, frame.derive_keys(ROOT, DEV_A))
        assert got.fields == {1: 2, 2: 150}
        await eventually(lambda: nb.counters()["frames"] == 4, what="acknowledged")
        c = nb.counters()
        assert c["messages"] == 4 and c["connects"] == 1 and c["outcome.submitted"] == 4
    finally:
        await nb.stop()


async def test_bad_input_is_rejected_with_a_reason_and_never_reaches_the_sink(mosquitto: MosquittoBroker) -> None:
    sink = Sink()
    with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a:
        # a stale retained frame waits on the broker before the gateway subscribes
        a.publish_raw(a.encode(schema.K_HEARTBEAT, {1: 9}), retain=True)
        nb = adapter(mosquitto)
        await nb.start(sink)
        try:
            assert await nb.wait_connected(10)
            good = a.encode(schema.K_HEARTBEAT, {1: 1})
            a.publish_raw(good, topic=up_topic(DEV_B))  # B's topic, A's header
            a.publish_raw(good, topic="lifeline/v1/nodes/70B3D5000000000A/up")  # upper-case id
            a.publish_raw(good, topic="lifeline/v1/nodes/not-a-device-id/up")
            a.publish_raw(b"")  # empty
            a.publish_raw(b"\x11garbage")  # truncated
            a.publish_raw(b"\x21" + good[1:])  # version 2
            a.publish_raw(b"\x13" + good[1:])  # suite 3 (1 intl and 2 sm exist)
            a.publish_raw(good[:2] + b"\x70" + good[3:])  # reserved flag bits
            a.publish_raw(os.urandom(300))  # longer than any frame may be
            a.publish_raw(good)  # and one good frame last
            await eventually(lambda: len(sink.frames) == 1, what="the good frame")
            await eventually(lambda: nb.counters()["messages"] == 11, what="all messages")
        finally:
            await nb.stop()
            a.publish_raw(b"", retain=True)  # clear the retained message
    assert [f.payload for f in sink.frames] == [good]
    c = nb.counters()
    rejected = {k.removeprefix("rejected."): v for k, v in c.items() if k.startswith("rejected.")}
    assert rejected == {"retained": 1, "topic_mismatch": 1, "bad_topic": 2, "truncated": 2, "bad_version": 1,
                        "bad_suite": 1, "bad_flags": 1, "too_long": 1}


async def test_frames_published_while_the_gateway_is_away_are_held_by_the_broker(
    mosquitto: MosquittoBroker,
) -> None:
    sink = Sink()
    nb = adapter(mosquitto)
    await nb.start(sink)
    assert await nb.wait_connected(10)
    await nb.stop()  # persistent session: the broker queues for us now
    with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a:
        sent = [heartbeat(a, i) for i in range(20)]
    nb2 = adapter(mosquitto)  # same client id: same session
    await nb2.start(sink)
    try:
        await eventually(lambda: len(sink.frames) == 20)
        assert [f.payload for f in sink.frames] == sent
    finally:
        await nb2.stop()


async def test_a_frame_the_pipeline_had_not_taken_is_delivered_again(mosquitto: MosquittoBroker) -> None:
    held = Sink()
    held.gate.clear()  # the pipeline never takes it: no PUBACK goes to the broker
    nb = adapter(mosquitto)
    await nb.start(held)
    assert await nb.wait_connected(10)
    with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a:
        first = heartbeat(a, 1)
    await eventually(lambda: nb.counters()["messages"] == 1)
    await nb.stop(drain_timeout_s=0.1)  # the gateway goes away with the frame unacknowledged
    assert held.frames == []

    sink = Sink()
    nb2 = adapter(mosquitto)
    await nb2.start(sink)
    try:
        await eventually(lambda: len(sink.frames) == 1, what="redelivery")
        assert sink.frames[0].payload == first
        assert nb2.counters()["redelivered"] == 1
    finally:
        await nb2.stop()


async def test_pipeline_back_pressure_reaches_the_broker(mosquitto: MosquittoBroker) -> None:
    sink = Sink()
    sink.gate.clear()
    nb = adapter(mosquitto, receive_maximum=5)
    await nb.start(sink)
    try:
        assert await nb.wait_connected(10)
        with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a:
            sent = [heartbeat(a, i) for i in range(20)]  # all PUBACKed by the broker
        await eventually(lambda: nb.counters()["received"] == 5, what="receive maximum reached")
        # A round trip on the adapter's own connection (a downlink and its PUBACK): anything the broker
        # had sent before it would have been read by now. It holds the other 15 back.
        rx = Reception("nbiot", "nb0", int(time.time() * 1000), context=DEV_A)
        assert await nb.send_downlink(DownlinkRequest(DEV_A, b"\x00" * 30, rx, rx.rx_ms + 5000))
        assert nb.counters()["received"] == 5
        sink.gate.set()
        await eventually(lambda: len(sink.frames) == 20)
        assert [f.payload for f in sink.frames] == sent
    finally:
        await nb.stop()


async def test_reconnects_by_itself_after_a_broker_restart(mosquitto: MosquittoBroker) -> None:
    sink = Sink()
    nb = adapter(mosquitto)
    await nb.start(sink)
    try:
        assert await nb.wait_connected(10)
        mosquitto.restart()
        await eventually(lambda: nb.counters()["connects"] == 2, timeout_s=15, what="reconnect")
        with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a:
            sent = heartbeat(a, 7)
        await eventually(lambda: [f.payload for f in sink.frames] == [sent])
        assert nb.counters()["connection_losses"] == 1
    finally:
        await nb.stop()


async def test_downlinks_reach_the_node_within_its_window(mosquitto: MosquittoBroker) -> None:
    sink = Sink()
    nb = adapter(mosquitto)
    clock = SystemClock()
    await nb.start(sink)
    try:
        assert await nb.wait_connected(10)
        with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a:
            heartbeat(a, 1)
            await eventually(lambda: len(sink.frames) == 1)
            rx = sink.frames[0].reception
            down = frame.encode(a.keys, DEV_A, 1, 0, schema.C_TIME_SYNC, {1: 12345}, frame.FLAG_DOWN)
            req = DownlinkRequest(DEV_A, down, rx, deadline_ms=clock.now_ms() + 2000)
            assert await nb.send_downlink(req)
            got = await asyncio.to_thread(a.wait_downlinks, 1)
            assert got == [down]
            assert a.decode_downlink(got[0]).fields == {1: 12345}

            late = DownlinkRequest(DEV_A, down, rx, deadline_ms=clock.now_ms() - 1)
            assert not await nb.send_downlink(late)
            other = DownlinkRequest(DEV_A, down, Reception("lora-udp", "lora0", rx.rx_ms), clock.now_ms() + 2000)
            assert not await nb.send_downlink(other)
        c = nb.counters()
        assert c["downlinks_sent"] == 1
        assert c["downlink_failed.window_closed"] == 1 and c["downlink_failed.wrong_adapter"] == 1
    finally:
        await nb.stop()


async def test_two_gateways_share_one_node_broker(mosquitto: MosquittoBroker) -> None:
    s1, s2 = Sink(), Sink()
    g1 = adapter(mosquitto, "nbA", share_group="gws")
    g2 = adapter(mosquitto, "nbB", share_group="gws")
    await g1.start(s1)
    await g2.start(s2)
    try:
        assert await g1.wait_connected(10) and await g2.wait_connected(10)
        with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a:
            sent = [heartbeat(a, i) for i in range(40)]
        await eventually(lambda: len(s1.frames) + len(s2.frames) == 40)
        assert sorted(f.payload for f in s1.frames + s2.frames) == sorted(sent)
        assert s1.frames and s2.frames  # both took a share
    finally:
        await g1.stop()
        await g2.stop()


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "host"),
        ({"host": "h", "prot": "5"}, "prot"),
        ({"host": "h", "port": "1883"}, "port"),
        ({"host": "h", "port": 0}, "port"),
        ({"host": "h", "protocol": "4"}, "protocol"),
        ({"host": "h", "protocol": "3.1.1", "share_group": "g"}, "share_group"),
        ({"host": "h", "tls_cert": "/c.pem"}, "tls_key"),
        ({"host": "h", "receive_maximum": 0}, "receive_maximum"),
        ({"host": "h", "topic_root": "a/#"}, "topic_root"),
        ({"host": "h", "keepalive_s": True}, "keepalive_s"),
    ],
)
def test_options_are_validated_with_the_key_named(options: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{key}: "):
        NbiotConfig.from_config(options, name="nb0")
    spec = IngressSpec(type="nbiot-mqtt", name="nb0", options=MappingProxyType(options))
    ctx = registry.AdapterContext(gateway_id="gw", state_dir=Path("/tmp"), clock=SystemClock())
    with pytest.raises(registry.AdapterOptionError) as info:
        registry.create(spec, ctx)
    assert info.value.option == key


def test_registry_builds_the_adapter() -> None:
    spec = IngressSpec(type="nbiot-mqtt", name="nb0", options=MappingProxyType({"host": "127.0.0.1", "port": 1}))
    ctx = registry.AdapterContext(gateway_id="gw", state_dir=Path("/tmp"), clock=SystemClock())
    built = registry.create(spec, ctx)
    assert isinstance(built, NbiotAdapter) and built.name == "nb0" and built.radio == "nbiot"


async def test_acknowledged_only_after_commit_and_in_device_order(mosquitto: MosquittoBroker) -> None:
    sink = DurableSink()
    sink.commit.clear()  # nothing commits yet
    nb = adapter(mosquitto)
    await nb.start(sink)
    assert await nb.wait_connected(10)
    with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a, \
            NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_B, ROOT) as b:
        sent = [heartbeat(a, 1), heartbeat(b, 1), heartbeat(a, 2), heartbeat(b, 2), heartbeat(a, 3)]
    await eventually(lambda: nb.counters()["messages"] == 5)
    # one frame per device is with the pipeline; the next of the same device waits for its outcome
    await eventually(lambda: len(sink.in_progress) == 2)
    assert {f.payload for f in sink.in_progress} == {sent[0], sent[1]}
    assert nb.counters()["frames"] == 0  # nothing committed, nothing acknowledged
    await nb.stop(drain_timeout_s=0.1)  # the gateway dies before the commit

    again = DurableSink()
    nb2 = adapter(mosquitto)
    await nb2.start(again)
    try:
        await eventually(lambda: len(again.frames) == 5, what="redelivery of every uncommitted frame")
        got = [f.payload for f in again.frames]
        assert [p for p in got if p in sent[0::2]] == sent[0::2]  # device A in order
        assert [p for p in got if p in sent[1::2]] == sent[1::2]  # device B in order
        await eventually(lambda: nb2.counters()["frames"] == 5)
        assert nb2.counters()["outcome.accepted"] == 5
    finally:
        await nb2.stop()

    # committed and acknowledged: a third start gets nothing again
    third = DurableSink()
    nb3 = adapter(mosquitto)
    await nb3.start(third)
    try:
        assert await nb3.wait_connected(10)
        with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT, fcnt=10) as a:
            marker = heartbeat(a, 9)
        await eventually(lambda: len(third.frames) == 1)
        assert third.frames[0].payload == marker
    finally:
        await nb3.stop()


async def test_stop_lets_frames_in_the_pipeline_finish_and_acknowledges_them(mosquitto: MosquittoBroker) -> None:
    sink = DurableSink()
    sink.commit.clear()
    nb = adapter(mosquitto)
    await nb.start(sink)
    assert await nb.wait_connected(10)
    with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT) as a:
        first = heartbeat(a, 1)
    await eventually(lambda: len(sink.in_progress) == 1)
    stopping = asyncio.create_task(nb.stop(drain_timeout_s=30))
    await eventually(lambda: nb._stopping)
    assert not stopping.done()  # waiting for the pipeline's outcome
    sink.commit.set()  # the commit lands during shutdown
    await asyncio.wait_for(stopping, 10)
    assert [f.payload for f in sink.frames] == [first] and nb.counters()["frames"] == 1

    again = DurableSink()
    nb2 = adapter(mosquitto)
    await nb2.start(again)
    try:
        assert await nb2.wait_connected(10)
        with NbiotNodeSim(mosquitto.host, mosquitto.port, DEV_A, ROOT, fcnt=2) as a:
            marker = heartbeat(a, 2)
        await eventually(lambda: len(again.frames) == 1)
        assert again.frames[0].payload == marker  # the committed frame was acknowledged: not sent again
    finally:
        await nb2.stop()
