"""End to end over both LoRa paths: one node's packet is heard by the gateway's own RAK3172 (emulated on a
pty) and by a concentrator behind a Semtech UDP packet forwarder (emulated on loopback UDP). The real
gateway daemon (``lifeline gateway run``, a subprocess) dedupes the two copies, and the reference platform
sink on a real Mosquitto stores the reading once, with both receptions listed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from lifeline.gateway.clock import EPOCH_UNIX
from lifeline.gateway.testing import TestNode, free_udp_port, until
from lifeline.gateway.testing import gateway_cli as cli
from lifeline.gateway.testing_proc import LIFELINE
from lifeline.sim_devices.air import AirChannel, LoraParams, VirtualClock
from lifeline.sim_devices.lora_modem_emulator import Rak3172Emulator
from lifeline.sim_devices.packet_forwarder_emulator import PacketForwarderEmulator
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.platform_sink import PlatformSink

GW = "gw-lora-e2e"
CHANNEL = LoraParams(869_525_000, 9, 125)  # the EU868 Lifeline channel both adapters default to


def write_config(tmp: Path, platform: MosquittoBroker, modem_path: Path, udp_port: int) -> Path:
    state = tmp / "state"
    state.mkdir()
    config = tmp / "gateway.toml"
    config.write_text("\n".join([
        "[gateway]", f'id = "{GW}"', f'state_dir = "{state}"', f'key_file = "{state / "gateway.key"}"',
        "[metrics]", 'listen = "127.0.0.1"', "port = 0",
        "[dedupe]", "window_ms = 2000", "collect_ms = 500",
        "[uplink]", "keepalive_s = 5", "connect_timeout_s = 2", "publish_timeout_s = 3",
        "[[uplink.endpoints]]", 'name = "platform"', 'host = "127.0.0.1"', f"port = {platform.port}",
        "[[ingress]]", 'type = "lora-serial"', 'name = "lora0"', "[ingress.options]",
        f'port = "{modem_path}"', 'region = "EU868"', "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
        "[[ingress]]", 'type = "lora-udp"', 'name = "udp0"', "[ingress.options]",
        'bind = "127.0.0.1"', f"port = {udp_port}", 'region = "EU868"',
    ]) + "\n")
    return config


async def test_one_reading_over_serial_and_udp_arrives_once_with_both_receptions(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    clock = VirtualClock()
    air = AirChannel(clock, seed=21)
    modem = Rak3172Emulator(air, "gw-modem", tmp_path / "ttyLORA0", work_mode=0)
    await modem.start()
    udp_port = free_udp_port()
    fwd = PacketForwarderEmulator(air, "concentrator", bytes.fromhex("b827ebfffe00e2e0"), ("127.0.0.1", udp_port),
                                  x_m=20.0)
    node = TestNode(bytes.fromhex("70ad000000000001"), kind="smoke")
    radio = air.add_radio("node", 50.0, 30.0)

    config = write_config(tmp_path, mosquitto, modem.path, udp_port)
    state = tmp_path / "state"
    public = cli("keygen", "--out", str(state / "gateway.key")).strip()
    devices = tmp_path / "devices.jsonl"
    devices.write_text(json.dumps(node.record()) + "\n")
    cli("devices", "import", str(devices), "--config", str(config))

    log = tmp_path / "gateway.log"
    sink = PlatformSink(mosquitto.host, mosquitto.port, db=tmp_path / "platform.db",
                        trust={GW: bytes.fromhex(public)}).start()
    with open(log, "ab") as out:
        proc = subprocess.Popen([LIFELINE, "gateway", "run", "--config", str(config)], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    try:
        await sink.wait_for_async(lambda s: s.presence.get(GW) == "online", 30, "gateway online")
        # The forwarder marks "uplink back" up to 0.2 s after the connection; a reading committed before
        # that mark would be sent on the backlog lane without waiting for its second reception.
        await until(lambda: b"uplink back" in log.read_bytes(), 30, "the forwarder to see the uplink")
        await until(lambda: modem.rx_mode == 65534, 30, "the gateway configured the modem")
        assert modem.commands[-1] == "AT+PRECV=65534" and "AT+P2P=869525000:9:125:0:8:14" in modem.commands
        for _ in range(100):  # the forwarder's PULL_DATA until the gateway's UDP port answers
            try:
                await fwd.start()
                break
            except TimeoutError:
                await fwd.stop()
        else:
            raise AssertionError("no PULL_ACK from the gateway")

        data = node.smoke(time=int(time.time()) - EPOCH_UNIX)  # a periodic smoke report, fcnt 1, clock set
        tx = radio.transmit(data, CHANNEL)
        clock.advance(tx.toa_ms)  # the modem prints +EVT:RXP2P, the forwarder sends PUSH_DATA
        heard = {d.receiver for d in air.deliveries if d.ok}
        assert heard == {"gw-modem", "concentrator"}
        await sink.wait_records_async(1, 30)
        await until(lambda: fwd.counters["push_ack"] == 1, 10, "PUSH_ACK")
        (rec,) = sink.records(node.device_id)
        assert (rec.fcnt, rec.gateway, rec.record_type) == (1, GW, 0)
        conn = sqlite3.connect(f"file:{tmp_path / 'platform.db'}?mode=ro", uri=True)
        try:
            (row,) = conn.execute("SELECT record_json FROM records WHERE device=?", (node.device_id,)).fetchall()
        finally:
            conn.close()
        receptions = json.loads(row[0])["receptions"]
        assert sorted((r["radio"], r["adapter"]) for r in receptions) == [("lora-serial", "lora0"),
                                                                            ("lora-udp", "udp0")]
        for r in receptions:
            assert -130 < r["rssi_dbm"] < -60
        await asyncio.sleep(0.6)  # longer than collect_ms: a late duplicate would have been stored by now
        assert len(sink.records(node.device_id)) == 1
    finally:
        await fwd.stop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        sink.stop()
        await modem.stop()
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    assert not os.path.exists(modem.path)
