"""The Semtech UDP (GWMP v2) adapter against emulated packet forwarders over real loopback UDP."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from lifeline.gateway.ingress import lora_p2p
from lifeline.gateway.ingress.base import DownlinkRequest, RawFrame
from lifeline.gateway.ingress.semtech_udp import SemtechUdpAdapter, SemtechUdpConfig
from lifeline.sim_devices.air import (
    AirChannel,
    LoraParams,
    PathLossModel,
    Radio,
    Transmission,
    VirtualClock,
    open_rx_window,
)
from lifeline.sim_devices.packet_forwarder_emulator import PacketForwarderEmulator, Scheduled

EUI = bytes.fromhex("b827ebfffe000001")
UPLINK = LoraParams(869_525_000, 9, 125)


class CollectSink:
    def __init__(self) -> None:
        self.frames: asyncio.Queue[RawFrame] = asyncio.Queue()

    async def submit(self, frame: RawFrame) -> None:
        await self.frames.put(frame)

    async def next(self, timeout: float = 5.0) -> RawFrame:
        return await asyncio.wait_for(self.frames.get(), timeout)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


@dataclass
class Rig:
    clock: VirtualClock
    air: AirChannel
    adapter: SemtechUdpAdapter
    fwd: PacketForwarderEmulator
    sink: CollectSink
    node: Radio

    def uplink(self, payload: bytes, node: Radio | None = None, params: LoraParams = UPLINK) -> Transmission:
        tx = (node or self.node).transmit(payload, params)
        self.clock.advance(tx.toa_ms)
        return tx

    def count(self, key: str) -> int:
        return self.adapter.counters().get(key, 0)


async def make_rig(*, seed: int = 11, air_kw: dict[str, object] | None = None,
                   fwd_kw: dict[str, object] | None = None, **options: object) -> Rig:
    clock = VirtualClock()
    air = AirChannel(clock, seed=seed, **(air_kw or {}))  # type: ignore[arg-type]
    config = SemtechUdpConfig(name="udp0", port=0, tx_ack_timeout_s=2.0, **options)  # type: ignore[arg-type]
    adapter = SemtechUdpAdapter(config, clock=clock, sleep=clock.sleep)
    sink = CollectSink()
    await adapter.start(sink)
    fwd = PacketForwarderEmulator(air, "concentrator", EUI, adapter.local_address, **(fwd_kw or {}))  # type: ignore[arg-type]
    await fwd.start()
    node = air.add_radio("node-1", 60.0, 0.0, duty_cycle=False)
    return Rig(clock, air, adapter, fwd, sink, node)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = await make_rig()
    yield r
    await r.fwd.stop()
    await r.adapter.stop()


async def test_push_data_becomes_frames_and_is_acked(rig: Rig) -> None:
    tx = rig.uplink(b"\x11meter reading")
    frame = await rig.sink.next()
    heard = rig.air.received_by("concentrator")[-1]
    r = frame.reception
    assert frame.payload == b"\x11meter reading"
    assert (r.radio, r.adapter, r.freq_hz, r.sf) == ("lora-udp", "udp0", 869_525_000, 9)
    assert r.rssi == round(heard.rssi_dbm) and r.snr_x10 == round(10 * round(heard.snr_db, 1))
    assert abs(r.rx_ms - tx.end_ms) < 1
    await eventually(lambda: rig.fwd.counters["push_ack"] == 1)  # PUSH_ACK with the same token
    assert rig.count("push_data") == 1 and rig.count("pull_data") == 1


async def test_several_rxpk_in_one_datagram(rig: Rig) -> None:
    other = rig.air.add_radio("node-2", 0.0, 60.0, duty_cycle=False)
    a = rig.node.transmit(b"first", UPLINK)
    b = other.transmit(b"second", LoraParams(868_300_000, 7, 125))
    rig.clock.advance(max(a.toa_ms, b.toa_ms))  # both end in one instant of the concentrator's loop
    got = {(await rig.sink.next()).payload, (await rig.sink.next()).payload}
    assert got == {b"first", b"second"}
    assert rig.fwd.counters["push_data"] == 1  # one datagram carried both
    assert rig.count("push_data") == 1 and rig.count("frames") == 2


async def test_crc_errors_are_counted_and_dropped() -> None:
    rig = await make_rig(air_kw={"path_loss": PathLossModel(sigma_db=0.0), "capture": False},
                         fwd_kw={"forward_crc_errors": True})
    try:
        twin = rig.air.add_radio("node-2", -60.0, 0.0, duty_cycle=False)
        a = rig.node.transmit(b"collide-a", UPLINK)
        twin.transmit(b"collide-b", UPLINK)
        rig.clock.advance(a.toa_ms)
        await eventually(lambda: rig.count("rxpk_reject.crc_bad") == 2)
        rig.uplink(b"clean")
        assert (await rig.sink.next()).payload == b"clean"
        assert rig.count("frames") == 1
    finally:
        await rig.fwd.stop()
        await rig.adapter.stop()


async def test_protocol_version_1_and_garbage_are_counted(rig: Rig) -> None:
    rig.fwd.send_raw(struct.pack(">BHB", 1, 5, 0) + EUI + b'{"rxpk":[]}')
    rig.fwd.send_raw(b"\x02\x00")
    rig.fwd.send_raw(struct.pack(">BHB", 2, 6, 0) + EUI + b'{"rxpk":[{"stat":1,"modu":"FSK"}]}')
    await eventually(lambda: rig.count("reject.unsupported_version") == 1 and rig.count("reject.truncated") == 1
                     and rig.count("rxpk_reject.not_lora") == 1)
    rig.fwd.send_stat()
    await eventually(lambda: rig.count("stat") == 1)
    assert rig.adapter.forwarders[EUI].stat is not None


async def test_downlink_is_timed_on_tmst_inside_the_window(rig: Rig) -> None:
    tx = rig.uplink(b"alarm")
    window = open_rx_window(rig.node, tx)
    frame = await rig.sink.next()
    ok = await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"ACK", frame.reception,
                                                         frame.reception.rx_ms + 5000))
    assert ok and rig.fwd.tx_acks == ["NONE"]
    rig.clock.advance(3000)
    (got,) = rig.air.received_by("node-1")
    assert got.tx.payload == b"ACK" and got.tx.params == UPLINK.downlink()
    assert window.start_ms <= got.tx.start_ms < window.end_ms
    assert got.tx.start_ms - tx.end_ms == pytest.approx(lora_p2p.RX1_DELAY_MS + lora_p2p.TX_OFFSET_MS, abs=1)
    assert rig.count("tx_ack.NONE") == 1 and rig.count("downlinks_sent") == 1


async def test_tx_ack_errors_fail_the_downlink() -> None:
    rig = await make_rig(region="CN470", duty_cycle=1.0, tx_power_dbm=20,
                         fwd_kw={"channels_hz": [470_300_000], "tx_freq_range_hz": (470_000_000, 510_000_000),
                                 "max_power_dbm": 17},
                         air_kw={"region": "CN470"})
    try:
        params = LoraParams(470_300_000, 9, 125)
        rig.uplink(b"x", params=params)
        frame = await rig.sink.next()
        assert not await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"A", frame.reception, 2**62))
        assert rig.count("downlink_failed.tx_ack.TX_POWER") == 1
    finally:
        await rig.fwd.stop()
        await rig.adapter.stop()


async def test_a_slot_taken_in_the_forwarder_gives_collision_packet(rig: Rig) -> None:
    tx = rig.uplink(b"a" * 10)
    frame = await rig.sink.next()
    # Something else (another server, a beacon) already holds the forwarder's TX slot at that moment.
    busy_at = tx.end_ms + lora_p2p.RX1_DELAY_MS
    rig.fwd.scheduled.append(Scheduled(busy_at, busy_at + 500, b"other", UPLINK.downlink(), 14))
    assert not await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"1" * 10, frame.reception, 2**62))
    assert rig.fwd.tx_acks == ["COLLISION_PACKET"]
    assert rig.count("downlink_failed.tx_ack.COLLISION_PACKET") == 1


async def test_too_late_and_unknown_forwarder(rig: Rig) -> None:
    rig.uplink(b"slow pipeline")
    frame = await rig.sink.next()
    rig.clock.advance(lora_p2p.RX1_DELAY_MS + lora_p2p.TX_OFFSET_MS - 10)
    assert not await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"late", frame.reception, 2**62))
    assert rig.count("downlink_failed.too_late") == 1
    bogus = frame.reception.__class__(**{**{f: getattr(frame.reception, f) for f in
                                            ("radio", "adapter", "rx_ms", "rssi", "snr_x10", "freq_hz", "sf")},
                                         "context": b"\xee" * 8 + frame.reception.context[8:]})
    assert not await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"x", bogus, 2**62))
    assert rig.count("downlink_failed.no_forwarder") == 1


async def test_downlinks_respect_the_duty_cycle(rig: Rig) -> None:
    rig.uplink(b"one")
    f1 = await rig.sink.next()
    assert await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"x" * 30, f1.reception, 2**62))
    rig.uplink(b"two")  # its answer would start ~0.1 s after the first ended; g3 (10 %) wants 9 x 226 ms
    f2 = await rig.sink.next()
    assert not await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"x" * 30, f2.reception, 2**62))
    assert rig.count("downlink_failed.duty_cycle") == 1


async def test_restarted_forwarder_is_picked_up_again(rig: Rig) -> None:
    old_port = rig.fwd.source_port
    await rig.fwd.restart()
    assert rig.fwd.source_port != old_port
    assert rig.adapter.forwarders[EUI].pull_addr == ("127.0.0.1", rig.fwd.source_port)
    assert rig.count("forwarder_moved") == 1
    tx = rig.uplink(b"after restart")
    open_rx_window(rig.node, tx)
    frame = await rig.sink.next()
    assert await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"ACK", frame.reception, 2**62))
    rig.clock.advance(3000)
    assert [d.tx.payload for d in rig.air.received_by("node-1")] == [b"ACK"]
    await eventually(lambda: rig.fwd.counters["push_ack"] == 1)  # acks go to the new port


async def test_forwarder_without_tx_ack_times_out() -> None:
    clock = VirtualClock()
    adapter = SemtechUdpAdapter(SemtechUdpConfig(name="udp0", port=0, tx_ack_timeout_s=0.2), clock=clock)
    sink = CollectSink()
    await adapter.start(sink)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        addr = adapter.local_address
        sock.sendto(struct.pack(">BHB", 2, 1, 2) + EUI, addr)  # PULL_DATA
        rxpk = {"tmst": 5, "freq": 868.1, "rfch": 0, "stat": 1, "modu": "LORA", "datr": "SF9BW125",
                "codr": "4/5", "rssi": -70, "lsnr": 7.5, "size": 2, "data": "AAE="}
        sock.sendto(struct.pack(">BHB", 2, 2, 0) + EUI + json.dumps({"rxpk": [rxpk]}).encode(), addr)
        frame = await sink.next()
        assert frame.reception.snr_x10 == 75
        assert not await adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"x", frame.reception, 2**62))
        assert adapter.counters()["downlink_failed.tx_ack_timeout"] == 1
        got = sock.recv(4096), sock.recv(4096), sock.recv(4096)  # PULL_ACK, PUSH_ACK, PULL_RESP
        assert [g[3] for g in got] == [4, 1, 3]
    finally:
        sock.close()
        await adapter.stop()


def _mutations(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 3)):
        if data and rng.random() < 0.5:
            data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            del data[rng.randrange(len(data) + 1):]
    return bytes(data)


async def test_malformed_datagrams_over_the_socket_never_stop_it(rig: Rig) -> None:
    rng = random.Random(99)
    good = json.dumps({"rxpk": [{"tmst": 1, "freq": 868.1, "stat": 1, "modu": "LORA", "datr": "SF7BW125",
                                 "codr": "4/5", "rssi": -60, "lsnr": 9.0, "size": 1, "data": "AA=="}]}).encode()
    seeds = [struct.pack(">BHB", 2, 1, 0) + EUI + good, struct.pack(">BHB", 2, 1, 2) + EUI,
             struct.pack(">BHB", 2, 1, 5) + EUI + b'{"txpk_ack":{"error":"TOO_LATE"}}']
    sent = rig.count("datagrams")
    for _ in range(20):  # 2000 datagrams, in bursts the socket buffer can hold
        for _ in range(100):
            datagram = _mutations(rng, seeds) if rng.random() < 0.9 else rng.randbytes(rng.randrange(64))
            if datagram:  # asyncio does not send empty datagrams
                rig.fwd.send_raw(datagram)
                sent += 1
        await eventually(lambda target=sent: rig.count("datagrams") >= target)  # type: ignore[misc]
    counters = rig.adapter.counters()
    assert sum(v for k, v in counters.items() if k.startswith("reject.")) > 500
    while not rig.sink.frames.empty():  # mutations that stayed valid are real frames
        rig.sink.frames.get_nowait()
    rig.uplink(b"still serving")
    assert (await rig.sink.next()).payload == b"still serving"


def test_config_from_table_names_the_bad_key() -> None:
    cfg = SemtechUdpConfig.from_config({"name": "udp0", "bind": "0.0.0.0", "port": 1700, "region": "CN470"})
    assert cfg.power_dbm == 17
    adapter = SemtechUdpAdapter.from_config({"port": 1701}, name="udp1")
    assert adapter.name == "udp1" and adapter.config.port == 1701
    cases: list[tuple[dict[str, object], str]] = [
        ({"name": "u", "port": 70000}, "port:"),
        ({"name": "u", "port": "1700"}, "port:"),
        ({"name": "u", "region": "AS923"}, "region:"),
        ({"name": "u", "tx_ack_timeout_s": 0}, "tx_ack_timeout_s:"),
        ({"name": "u", "listen": "x"}, "listen:"),
        ({"name": "bad name"}, "name:"),
        ({}, "name:"),
    ]
    for table, key in cases:
        with pytest.raises(ValueError) as info:
            SemtechUdpConfig.from_config(table)
        assert str(info.value).startswith(key), (table, str(info.value))
