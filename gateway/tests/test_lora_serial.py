"""The RAK3172 serial adapter against the emulated modem over a real pseudo-terminal and the virtual air."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lifeline.gateway.ingress import lora_p2p
from lifeline.gateway.ingress.base import DownlinkRequest, RawFrame
from lifeline.gateway.ingress.lora_serial import LoraSerialAdapter, LoraSerialConfig
from lifeline.protocols import lora_phy
from lifeline.sim_devices.air import AirChannel, LoraParams, Radio, Transmission, VirtualClock, open_rx_window
from lifeline.sim_devices.lora_modem_emulator import Rak3172Emulator

CONFIGURE = ["AT", "AT+NWM=0", "AT", "AT+PRECV=0", "AT+P2P=869525000:9:125:0:8:14", "AT+PRECV=65534"]
UPLINK = LoraParams(869_525_000, 9, 125)


class CollectSink:
    def __init__(self) -> None:
        self.frames: asyncio.Queue[RawFrame] = asyncio.Queue()

    async def submit(self, frame: RawFrame) -> None:
        await self.frames.put(frame)

    async def next(self, timeout: float = 5.0) -> RawFrame:
        return await asyncio.wait_for(self.frames.get(), timeout)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded, real time) for something another task does; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


@dataclass
class Rig:
    clock: VirtualClock
    air: AirChannel
    modem: Rak3172Emulator
    adapter: LoraSerialAdapter
    sink: CollectSink
    node: Radio

    def uplink(self, payload: bytes, node: Radio | None = None) -> Transmission:
        tx = (node or self.node).transmit(payload, UPLINK)
        self.clock.advance(tx.toa_ms)  # the packet ends; the modem prints +EVT:RXP2P
        return tx


def make_adapter(path: Path, clock: VirtualClock, **options: object) -> LoraSerialAdapter:
    config = LoraSerialConfig(name="lora0", port=str(path), reconnect_min_s=0.05, reconnect_max_s=0.4,
                              **options)  # type: ignore[arg-type]
    return LoraSerialAdapter(config, clock=clock, sleep=clock.sleep)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = VirtualClock()
    air = AirChannel(clock, seed=7)
    modem = Rak3172Emulator(air, "gw-modem", tmp_path / "ttyLORA0")
    await modem.start()
    node = air.add_radio("node-1", 60.0, 0.0, duty_cycle=False)
    adapter = make_adapter(modem.path, clock)
    sink = CollectSink()
    await adapter.start(sink)
    await adapter.wait_connected(5)
    yield Rig(clock, air, modem, adapter, sink, node)
    await adapter.stop()
    await modem.stop()


async def test_configures_the_modem_with_the_documented_sequence(rig: Rig) -> None:
    assert rig.modem.commands == CONFIGURE  # docs/radios.md 1.2, in this order
    assert rig.modem.work_mode == 0 and rig.modem.rx_mode == 65534
    assert rig.adapter.counters()["line.banner"] == 2  # the module restarted for AT+NWM=0: expected
    assert "modem_resets" not in rig.adapter.counters()


async def test_receives_frames_with_rssi_and_snr(rig: Rig) -> None:
    tx = rig.uplink(b"\x11lifeline-frame")
    frame = await rig.sink.next()
    heard = rig.air.received_by("gw-modem")[-1]
    assert frame.payload == b"\x11lifeline-frame"
    r = frame.reception
    assert (r.radio, r.adapter, r.freq_hz, r.sf) == ("lora-serial", "lora0", 869_525_000, 9)
    assert r.rssi == round(heard.rssi_dbm) and r.snr_x10 == 10 * round(heard.snr_db)
    assert -135 < r.rssi < -60
    assert abs(r.rx_ms - tx.end_ms) < 1
    assert rig.adapter.counters()["frames"] == 1


async def test_downlink_is_sent_inside_the_node_receive_window(rig: Rig) -> None:
    tx = rig.uplink(b"alarm, please ack")
    window = open_rx_window(rig.node, tx)
    frame = await rig.sink.next()
    rig.modem.commands.clear()
    ok = await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"ACK-123", frame.reception,
                                                         frame.reception.rx_ms + 5000))
    assert ok
    (got,) = rig.air.received_by("node-1")
    assert got.tx.payload == b"ACK-123" and got.tx.params == UPLINK.downlink()
    assert window.start_ms <= got.tx.start_ms < window.end_ms
    assert got.tx.start_ms - tx.end_ms == pytest.approx(lora_p2p.RX1_DELAY_MS + lora_p2p.TX_OFFSET_MS, abs=10)
    assert rig.modem.commands == ["AT+PRECV=0", "AT+PSEND=" + b"ACK-123".hex().upper(), "AT+PRECV=65534"]
    # and it listens again
    rig.uplink(b"next")
    assert (await rig.sink.next()).payload == b"next"
    assert rig.adapter.counters()["downlinks_sent"] == 1


async def test_downlink_after_the_window_is_refused(rig: Rig) -> None:
    rig.uplink(b"late")
    frame = await rig.sink.next()
    rig.clock.advance(lora_p2p.RX1_DELAY_MS + lora_p2p.RX_WINDOW_MS)
    ok = await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"too late", frame.reception,
                                                         frame.reception.rx_ms + 60_000))
    assert not ok
    assert rig.adapter.counters()["downlink_failed.too_late"] == 1
    assert rig.modem.transmissions == []


async def test_downlinks_respect_the_eu868_duty_cycle(rig: Rig) -> None:
    payload = b"D" * 50
    toa = lora_phy.time_on_air_ms(len(payload), 9, 125)
    rig.uplink(b"one")
    first = await rig.sink.next()
    assert await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, payload, first.reception, 2**62))
    rig.uplink(b"two")
    second = await rig.sink.next()
    assert not await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, payload, second.reception, 2**62))
    assert rig.adapter.counters()["downlink_failed.duty_cycle"] == 1
    rig.clock.advance(9 * toa)  # 869.525 MHz is in g3, 10 %: silent for 9 times the airtime
    rig.uplink(b"three")
    third = await rig.sink.next()
    assert await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, payload, third.reception, 2**62))
    assert len(rig.modem.transmissions) == 2


async def test_unplug_and_replug_recover_without_restarting(rig: Rig) -> None:
    rig.uplink(b"before")
    assert (await rig.sink.next()).payload == b"before"
    rig.modem.unplug()
    assert not rig.modem.path.exists()
    await eventually(lambda: rig.adapter.counters().get("disconnects") == 1)
    await eventually(lambda: rig.adapter.counters().get("port_absent") == 1)
    assert not rig.adapter.connected.is_set()
    rig.uplink(b"lost while unplugged")  # nobody receives it
    rig.modem.replug()
    await rig.adapter.wait_connected(5)
    assert rig.adapter.counters()["reconnects"] == 1
    rig.uplink(b"after")
    assert (await rig.sink.next()).payload == b"after"
    # and once more, to show it is not a one-off
    rig.modem.unplug()
    await eventually(lambda: rig.adapter.counters().get("disconnects") == 2)
    rig.modem.replug()
    await rig.adapter.wait_connected(5)
    rig.uplink(b"again")
    assert (await rig.sink.next()).payload == b"again"
    assert rig.adapter.counters()["reconnects"] == 2
    assert rig.sink.frames.empty()


async def test_modem_reset_mid_stream_is_reconfigured(rig: Rig) -> None:
    rig.modem.reset()  # brown-out: receive stops, banner printed
    assert rig.modem.rx_mode == 0
    await eventually(lambda: rig.adapter.counters().get("reconfigures") == 1)
    await rig.adapter.wait_connected(5)
    assert rig.adapter.counters()["modem_resets"] == 1
    assert rig.modem.rx_mode == 65534
    rig.uplink(b"after reset")
    assert (await rig.sink.next()).payload == b"after reset"


async def test_garbage_partial_overlong_and_unsolicited_lines_are_counted(rig: Rig) -> None:
    rig.modem.inject(b"\x00\xff\xfe\x80 line noise\r\n")
    rig.modem.inject(b"Z" * 5000 + b"\r\n")
    rig.modem.inject(b"OK\r\nAT_ERROR\r\n+EVT:TXP2P DONE\r\nhello?\r\n")
    rig.modem.inject(b"+EVT:RXP2P:-50:7:0G\r\n+EVT:RXP2P:-50:7\r\n+EVT:SOMETHING\r\n")
    rig.modem.inject(b"+EVT:RXP2P:-61:4:C0")  # a line arriving in pieces
    rig.modem.inject(b"FFEE\r\n")
    frame = await rig.sink.next()
    assert frame.payload == b"\xc0\xff\xee" and frame.reception.rssi == -61
    c = rig.adapter.counters()
    assert c["reject.not_ascii"] == 1
    assert c["reject.overlong"] == 1
    assert c["unsolicited_response"] == 2
    assert c["unsolicited_txdone"] == 1
    assert c["unsolicited_line"] == 1
    assert c["reject.bad_hex"] == 1 and c["reject.bad_rxp2p"] == 1 and c["reject.unknown_event"] == 1
    rig.uplink(b"still fine")
    assert (await rig.sink.next()).payload == b"still fine"


async def test_unplug_during_a_downlink_fails_it_and_recovers(rig: Rig) -> None:
    rig.uplink(b"needs an answer")
    frame = await rig.sink.next()
    real_sleep = rig.clock.sleep

    async def sleep_then_pull_the_cable(seconds: float) -> None:
        rig.modem.unplug()  # while the adapter waits for the window
        await real_sleep(seconds)

    rig.adapter._sleep = sleep_then_pull_the_cable
    ok = await rig.adapter.send_downlink(DownlinkRequest(b"\x01" * 8, b"ACK", frame.reception, 2**62))
    rig.adapter._sleep = real_sleep
    assert not ok
    assert rig.adapter.counters()["downlink_failed.modem_gone"] == 1
    await eventually(lambda: rig.adapter.counters().get("disconnects") == 1)
    rig.modem.replug()
    await rig.adapter.wait_connected(5)
    rig.uplink(b"back")
    assert (await rig.sink.next()).payload == b"back"


async def test_a_hung_modem_is_detected_by_the_health_probe(tmp_path: Path) -> None:
    clock = VirtualClock()
    air = AirChannel(clock, seed=8)
    modem = Rak3172Emulator(air, "gw-modem", tmp_path / "ttyLORA0")
    await modem.start()
    adapter = make_adapter(modem.path, clock, health_interval_s=0.05, command_timeout_s=0.1)
    await adapter.start(CollectSink())
    await adapter.wait_connected(5)
    modem.hung = True  # firmware lock-up: silent, answers nothing
    await eventually(lambda: adapter.counters().get("modem_unresponsive") == 1)
    assert adapter.counters()["health_probes"] >= 2
    await eventually(lambda: adapter.counters().get("disconnects") == 1)
    modem.reset()  # watchdog reboot of the module
    await adapter.wait_connected(5)
    assert adapter.counters()["reconnects"] == 1
    await adapter.stop()
    await modem.stop()


async def test_device_absent_at_start_is_waited_for(tmp_path: Path) -> None:
    clock = VirtualClock()
    air = AirChannel(clock, seed=3)
    modem = Rak3172Emulator(air, "gw-modem", tmp_path / "ttyLORA0")
    adapter = make_adapter(modem.path, clock)
    sink = CollectSink()
    await adapter.start(sink)  # returns at once; the supervisor polls for the device
    await eventually(lambda: adapter.counters().get("port_absent") == 1)
    await modem.start()
    await adapter.wait_connected(5)
    node = air.add_radio("n", 50.0, 0.0)
    tx = node.transmit(b"hi", UPLINK)
    clock.advance(tx.toa_ms)
    assert (await sink.next()).payload == b"hi"
    await adapter.stop()
    await modem.stop()


async def test_cn470_plan_and_configurable_duty_cycle(tmp_path: Path) -> None:
    clock = VirtualClock()
    air = AirChannel(clock, seed=5, region="CN470")
    modem = Rak3172Emulator(air, "gw-modem", tmp_path / "ttyS1", work_mode=0)
    await modem.start()
    adapter = make_adapter(modem.path, clock, region="CN470", sf=9, duty_cycle=0.5)
    sink = CollectSink()
    await adapter.start(sink)
    await adapter.wait_connected(5)
    assert "AT+P2P=470300000:9:125:0:8:17" in modem.commands
    assert modem.banner_count == 0  # already in P2P mode: no restart
    node = air.add_radio("n", 80.0, 0.0, duty_cycle=False)
    params = LoraParams(470_300_000, 9, 125)
    replies = []
    for i in range(2):
        tx = node.transmit(bytes([i]) * 10, params)
        clock.advance(tx.toa_ms)
        frame = await sink.next()
        replies.append(await adapter.send_downlink(DownlinkRequest(b"\x02" * 8, b"ok", frame.reception, 2**62)))
        clock.advance(1500)
    assert replies == [True, True]  # 50 %: the second answer 1.5 s later is allowed
    await adapter.stop()
    await modem.stop()


def test_config_from_table_names_the_bad_key() -> None:
    good = LoraSerialConfig.from_config({"name": "lora0", "port": "/dev/ttyUSB0", "region": "CN470"})
    assert good.p2p_command() == "AT+P2P=470300000:9:125:0:8:17"
    adapter = LoraSerialAdapter.from_config({"port": "/dev/ttyUSB0", "sf": 12}, name="lora1")
    assert adapter.name == "lora1" and adapter.config.p2p_command().startswith("AT+P2P=869525000:12:")
    cases: list[tuple[dict[str, object], str]] = [
        ({"name": "x", "port": "/dev/x", "sf": 13}, "sf:"),
        ({"name": "x", "port": "/dev/x", "sf": "7"}, "sf:"),
        ({"name": "x", "port": "/dev/x", "sf": True}, "sf:"),
        ({"name": "x", "port": "/dev/x", "region": "US915"}, "region:"),
        ({"name": "x", "port": "/dev/x", "freq_hz": 915_000_000}, "freq_hz:"),
        ({"name": "x", "port": "/dev/x", "baud": 9600}, "baud:"),
        ({"name": "x", "port": "/dev/x", "duty_cycle": 2}, "duty_cycle:"),
        ({"name": "x", "port": ""}, "port:"),
        ({"port": "/dev/x"}, "name"),
    ]
    for table, key in cases:
        with pytest.raises(ValueError) as info:
            LoraSerialConfig.from_config(table)
        assert key in str(info.value), (table, str(info.value))
