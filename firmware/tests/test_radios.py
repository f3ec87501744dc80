"""Radio links: RAK3172 RUI3 AT bytes, LoRa airtime and duty cycle, MQTT 3.1.1 against a real Mosquitto,
BLE advertising segments."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from lifeline.firmware import config
from lifeline.firmware.hal import sim
from lifeline.firmware.radios import airtime, ble, lora_at, mqtt, nbiot
from lifeline.firmware.simnode import SimNode, config_for
from lifeline.protocols import frame, lora_phy, schema


class ScriptedModem:
    """Records the exact bytes the driver writes; answers from a script (line -> reply lines)."""

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self.replies = replies
        self.written = b""
        self._out = b""

    def rx(self, hal: Any, data: bytes) -> None:
        self.written += data
        for line in data.decode().split("\r\n"):
            if line:
                for r in self.replies.get(line, self.replies.get(line.split("=")[0] + "=*", ["OK"])):
                    self._out += r.encode() + b"\r\n"

    def tx(self, hal: Any) -> bytes:
        out, self._out = self._out, b""
        return out


def test_at_command_bytes_are_exactly_the_rui3_p2p_set() -> None:
    modem = ScriptedModem({"AT+NWM=*": ["OK", "RAKwireless RAK3172-E Example", "Version: RUI_4.0.6_RAK3172-E"],
                           "AT+PSEND=*": ["OK", "+EVT:TXP2P DONE"],
                           "AT+PRECV=*": ["OK", "+EVT:RXP2P:-87:6:C0FFEE"]})
    hal = sim.SimHal(uart_devices={"lora": modem})
    r = lora_at.Rak3172(hal, hal.uart("lora", 115200))
    assert r.setup(869525000, 9, 125, 0, 8, 14)
    assert r.send(b"\x11\x01\xab", 1000)
    assert r.receive(1000) == (b"\xc0\xff\xee", -87, 6)
    assert modem.written == (b"AT\r\nAT+NWM=0\r\nAT\r\nAT+PRECV=0\r\nAT+P2P=869525000:9:125:0:8:14\r\n"
                             b"AT+PSEND=1101ab\r\nAT+PRECV=1000\r\n")


@pytest.mark.parametrize("reply", [["AT_BUSY_ERROR"], ["AT_PARAM_ERROR"], [], ["garbage \xff"]])
def test_modem_errors_and_silence_are_failures_not_exceptions(reply: list[str]) -> None:
    modem = ScriptedModem({"AT": ["OK"], "AT+PSEND=*": reply})
    hal = sim.SimHal(uart_devices={"lora": modem})
    r = lora_at.Rak3172(hal, hal.uart("lora", 115200))
    t0 = hal.clock.ms
    assert r.send(b"\x01", 500) is False
    assert r.errors == 1 and hal.clock.ms - t0 <= 2000  # bounded by the deadlines


def test_malformed_rx_event_is_counted() -> None:
    assert lora_at.parse_rx("+EVT:RXP2P:-87:6:C0FFEE") == (b"\xc0\xff\xee", -87, 6)
    for bad in ("+EVT:RXP2P:-87:6:C0F", "+EVT:RXP2P:x:6:00", "+EVT:RXP2P:-87:6", "+EVT:TXP2P DONE"):
        assert lora_at.parse_rx(bad) is None


@pytest.mark.parametrize("sf", range(7, 13))
@pytest.mark.parametrize("bw", [125, 250, 500])
def test_integer_airtime_matches_the_reference(sf: int, bw: int) -> None:
    for n in (1, 27, 51, 100):
        for cr in (1, 4):
            ref = lora_phy.time_on_air_ms(n, sf, bw, cr, 8)
            assert airtime.time_on_air_ms(n, sf, bw, cr, 8) == -(-int(ref * 1000) // 1000) or abs(
                airtime.time_on_air_ms(n, sf, bw, cr, 8) - ref) < 1.0


def test_duty_cycle_ledger_refuses_over_the_hourly_budget() -> None:
    st: dict[str, Any] = {}
    dc = airtime.DutyCycle(st, 10)  # 1 %: 36 s of airtime per hour
    for i in range(36):
        assert dc.allowed(i, 1000)
        dc.record(i, 1000)
    assert not dc.allowed(40, 1000)
    assert dc.allowed(3600 + 1, 1000)  # the oldest transmission left the window


def test_lora_link_denies_transmissions_over_the_duty_cycle() -> None:
    sn = SimNode("tilt", config_extra={"region": "AS923", "interval": 10,
                                       "lora": {"sf": 12, "bw": 125, "rx_ms": 0}})
    denied = 0
    for _ in range(120):  # 20 minutes of 10-second reports at SF12 (~1.3 s each): far over 1 %
        sn.wake()
        denied += sn.node.radio.denied if sn.node.radio is not None else 0
        sn.sleep(10_000)
    toa = sum(t for _, _, t in sn.hal.tx_log)
    assert toa <= 36_000  # never more than 1 % of an hour on the air
    assert denied > 0
    assert "/queue" in sn.hal.fs.files  # what could not go out is kept


def test_mqtt_client_against_mosquitto_publish_and_downlink(mosquitto: Any, real_net: Any) -> None:
    import paho.mqtt.client as paho

    sn = SimNode("tilt", radio="nbiot", net=real_net,
                 config_extra={"nbiot": {"host": "127.0.0.1", "port": mosquitto.port, "rx_ms": 300}})
    got: list[bytes] = []
    ready = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="platform")
    c.on_connect = lambda *a: (c.subscribe(nbiot.up_topic(sn.dev_id), 1), ready.set())
    c.on_message = lambda cl, u, msg: got.append(msg.payload)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    try:
        assert ready.wait(5)
        sn.wake()  # connects, subscribes (persistent session), publishes QoS 1, waits for PUBACK
        sn.sleep()
        # while the node sleeps the platform queues a time sync; the broker keeps it for the session
        keys = frame.derive_keys(sn.root_key, sn.dev_id)
        down = frame.encode(keys, sn.dev_id, 1, 0, schema.C_TIME_SYNC, {1: 190_000_000}, frame.FLAG_DOWN)
        c.publish(nbiot.down_topic(sn.dev_id), down, qos=1).wait_for_publish(5)
        sn.wake()
        for _ in range(50):
            if len(got) >= 3:
                break
            threading.Event().wait(0.05)
    finally:
        c.loop_stop()
        c.disconnect()
    kinds = [frame.decode(p, keys).header.kind for p in got]
    assert schema.K_TILT in kinds and schema.K_HEARTBEAT in kinds
    assert sn.node.rtc.get("ts") == 1  # the downlink arrived through the persistent session


def test_mqtt_deadline_against_a_silent_peer(real_net: Any) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts TCP, never speaks MQTT (a stalled broker)
    try:
        hal = sim.SimHal(net=real_net)
        client = mqtt.Mqtt(hal, "node", 60)
        t0 = hal.clock.ms
        with pytest.raises(mqtt.MqttError) as info:
            client.connect("127.0.0.1", srv.getsockname()[1], hal.ticks_ms() + 1000)
        assert info.value.reason == "timeout"
        assert 1000 <= hal.clock.ms - t0 <= 1300
    finally:
        srv.close()


def test_mqtt_packets_and_malformed_input() -> None:
    assert mqtt.connect_packet("n1", 60, False) == bytes.fromhex("100e00044d5154540400003c00026e31")
    assert mqtt.publish_packet("a/b", b"\x01", 1, 7) == bytes.fromhex("3208" "0003612f62" "0007" "01")
    assert mqtt._remaining(321) == b"\xc1\x02"

    class Feed:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def write(self, b: bytes) -> None:
            pass

        def recv(self, n: int, t: int) -> bytes:
            out, self.data = self.data[:n], self.data[n:]
            if not out:
                raise OSError(104, "reset")
            return out

    hal = sim.SimHal()
    for data, reason in ((b"\x20\x03\x00\x00\x00", "bad_packet"), (b"\x20\x02\x00\x05", "refused"),
                         (b"\x20\xff\xff\xff\xff\x01", "bad_packet")):
        c = mqtt.Mqtt(hal, "n")
        c._sock = Feed(data)
        with pytest.raises((mqtt.MqttError, OSError)) as info:
            first, body = c._read_packet(hal.ticks_ms() + 1000)
            if first != mqtt.CONNACK or len(body) != 2:
                raise mqtt.MqttError("bad_packet")
            if body[1]:
                raise mqtt.MqttError("refused")
        assert getattr(info.value, "reason", "io") == reason


def test_ble_advertising_follows_docs_ble_md() -> None:
    data = bytes(range(51))
    ads = ble.segments(data, seq=3)
    assert [len(a) for a in ads] == [31, 30]  # 5 bytes of overhead + 26, then the rest
    assert ads[0][:5] == bytes((30, 0xFF, 0xFF, 0xFF, 0x17)) and ads[1][4] == 0x1B
    assert ble.reassemble(ads) == data
    whole = ble.segments(data, extended=True)
    assert len(whole) == 1 and whole[0][4] == 0x10 and ble.reassemble(whole) == data
    assert ble.reassemble([ads[0]]) is None
    assert ble.reassemble([bytes((4, 0xFF, 0xFF, 0xFF, 0x24))]) is None  # wrong mapping version


def test_ble_node_broadcasts_its_frames_and_takes_downlinks_over_gatt() -> None:
    sn = SimNode("tilt", radio="ble", config_extra={"heartbeat": 3600})
    sn.wake()
    adverts = [a for _, a, _, _ in sn.hal.ble().adverts]
    frames = []
    for i in range(0, len(adverts), 20):  # one burst of 20 events per frame, alternating the halves
        burst = adverts[i:i + 20]
        assert burst[0] != burst[1] and burst[0] == burst[2]
        frames.append(ble.reassemble(burst[:2]))
    assert [f.header.kind for f in sn.decoded(frames)] == [schema.K_TILT, schema.K_HEARTBEAT]
    keys = frame.derive_keys(sn.root_key, sn.dev_id)
    down = frame.encode(keys, sn.dev_id, 1, 0, schema.C_TIME_SYNC, {1: 150_000_000}, frame.FLAG_DOWN)
    gatt = sn.hal.ble()
    assert gatt.write(ble.CHAR_DOWNLINK, b"short") == ble.ERR_LENGTH
    sn.sleep(3_600_000)
    sn.hal.ble_pending.append((ble.CHAR_DOWNLINK, down))  # the gateway connects in the heartbeat's window
    sn.wake()
    assert sn.hal.ble().results == [ble.OK]
    assert sn.node.rtc.get("ts") == 1


def test_config_region_table_is_sane() -> None:
    for name, (freq, duty, power, _dwell) in config.REGIONS.items():
        assert 400_000_000 < freq < 930_000_000 and 0 <= duty <= 100 and power <= 22, name
    assert config.Config(config_for("tilt", "lora", bytes(8), bytes(32))).region == "EU868"


def test_queued_acks_are_paced_to_the_gateways_duty_cycle() -> None:
    """At SF9 in EU868 an ACK costs ~290 ms of the gateway's 10 % budget: it must stay silent ~2.6 s, so
    queued readings that each ask for an ACK cannot go back to back (every second ACK would be refused)."""
    sn = SimNode("tilt", config_extra={"region": "EU868", "lora": {"sf": 9, "bw": 125}})
    sn.wake()
    link = sn.node.radio
    assert link is not None
    ack = link.airtime_ms(40)
    silent = ack * 9  # after an ACK of ack ms at 10 %
    right_after = link.ack_pause_ms(0, 30)
    # the next ACK starts about 1050 ms + the uplink's airtime after the uplink begins: pause for the rest
    assert right_after == pytest.approx(silent - link.airtime_ms(30) - 1050 + 100, abs=2)
    assert right_after > 1000
    assert link.ack_pause_ms(int(silent), 30) == 0  # long after the last ACK: no pause
    cn = SimNode("tilt", config_extra={"region": "CN470", "lora": {"sf": 9, "bw": 125}})
    cn.wake()
    assert cn.node.radio is not None and cn.node.radio.gw_duty == 10  # the gateway's 1 % default
