"""Failover end to end on real parts: a smoke alarm from a flat while the city platform is unreachable.

Real Mosquitto brokers (the platform's, with persistence, and the site's LAN broker for the siren), the real
MQTT uplink, the reference platform sink, the SMS modem emulator on a pty, a simulated node; the rules run
on an injected clock (the failover grace), the network on real time.

The gateway must sound the siren and text the grid worker and the family within 1 s of the frame, once
(repeated frames and duplicate receptions do not storm), and the platform must get the audit trail of what
the gateway did on its own once it is reachable again.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.gateway.clock import ManualClock, SystemClock
from lifeline.gateway.daemon import Gateway
from lifeline.gateway.rules_engine import audit
from lifeline.gateway.rules_engine.service import RulesService
from lifeline.gateway.testing import MemoryAdapter, TestNode, make_config, provision, write_signing_key
from lifeline.gateway.uplink import MqttUplink
from lifeline.protocols import frame, schema
from lifeline.sim_devices.gsm_modem_emulator import GsmModemEmulator
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.platform_sink import PlatformSink

GW = "gw-failover"
T0 = 1_767_225_600_000
FLAT = bytes.fromhex("70b3d57ed0000003")

RULES = """
timezone = "UTC"
[failover]
grace = "60s"
[contacts]
grid-district-7 = ["+8613800000001"]
"family-{flat}" = ["+8613900000011"]
[outputs.lan]
type = "mqtt"
host = "127.0.0.1"
port = {lan_port}
[outputs.modem]
type = "sms"
port = "{modem}"

[[rule]]
name = "platform-down"
when = {{ type = "uplink_down" }}

[[rule]]
name = "smoke-siren"
priority = "alarm"
when = {{ report = "smoke_alarm" }}
[[rule.action]]
type = "mqtt"
output = "lan"
topic = "site/{{spatial_unit}}/siren"
payload = '{{"on": true, "device": "{{device}}"}}'
dedupe = "spatial_unit"

[[rule]]
name = "smoke-sms"
priority = "alarm"
when = {{ report = "smoke_alarm" }}
if = {{ uplink = "down", tags = ["elderly-care"] }}
[[rule.action]]
type = "sms"
output = "modem"
to = ["@grid-district-7", "@family-{{device}}"]
text = "SMOKE ALARM {{address}} at {{time}}; platform offline, gateway {{gateway}} alerting directly"
"""


class LanListener:
    """A siren controller on the LAN broker: records what arrives and when (monotonic)."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self.arrived = threading.Event()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="siren-controller")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("site/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: ready.set()

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload)))
            self.arrived.set()

        self.client.on_message = on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(workdir=tmp_path / "platform-broker", persistence=True)
    try:
        yield b
    finally:
        b.close()


async def wait_until(pred: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_smoke_alarm_during_platform_outage(tmp_path: Path, mosquitto: MosquittoBroker,
                                                  platform: MosquittoBroker) -> None:
    lan = LanListener(mosquitto)
    node = TestNode(FLAT, kind="smoke")
    state = tmp_path / "gw"
    state.mkdir()
    key = write_signing_key(state / "gateway.key")
    # the platform's sink holds a persistent session, so batches published before it reconnects wait for it
    platform.start()
    sink = PlatformSink(platform.host, platform.port, db=tmp_path / "platform.db", trust={GW: key.public_key()},
                        client_id="sink-durable", session_expiry_s=3600, share_group=None).start()
    platform.stop()  # the outage begins before the gateway starts
    emu = await GsmModemEmulator(tmp_path / "ttyGSM", send_delay_s=0.05).start()
    gw: Gateway | None = None
    try:
        rules = tmp_path / "rules.toml"
        rules.write_text(RULES.format(flat=FLAT.hex(), lan_port=mosquitto.port, modem=emu.path))
        cfg = make_config(state, gateway_id=GW, sections={
            "uplink": {"keepalive_s": 5, "connect_timeout_s": 1, "publish_timeout_s": 3}},
            extra=f'[[uplink.endpoints]]\nname = "platform"\nhost = "{platform.host}"\nport = {platform.port}\n')
        rec = node.record(tags=["elderly-care"], location={"address": "12 Elm Road, flat 3", "lat_udeg": 31230416,
                                                            "lon_udeg": 121473701,
                                                            "spatial_unit": "district-7/block-12"})
        node.record = lambda **kw: rec  # type: ignore[method-assign]
        provision(cfg.gateway.registry_db, [node])
        clock = ManualClock(T0)
        svc = RulesService.from_files([rules], clock=clock)
        adapter = MemoryAdapter(radio="lora-udp")
        gw = Gateway(cfg, publisher=MqttUplink.from_config(GW, cfg.uplink, clock=SystemClock()), adapters=[adapter],
                     clock=clock, rules=svc, signing_key=key, serve_metrics=False)
        await gw.start()

        # the uplink has not connected for longer than the grace: failover
        await svc.tick()
        assert not svc.engine.uplink_down
        clock.advance(60_000)
        await svc.tick()
        assert svc.engine.uplink_down

        # a smoke alarm from the flat
        t0 = time.monotonic()
        await adapter.hear(node.smoke(2, flags=frame.FLAG_ACK_REQ), clock.now_ms())
        sms = await emu.wait_sent(2, 5.0)
        await asyncio.to_thread(lan.arrived.wait, 5.0)
        assert [(m[1], json.loads(m[2])) for m in lan.messages] == [
            ("site/district-7/block-12/siren", {"on": True, "device": FLAT.hex()})]
        assert lan.messages[0][0] - t0 < 1.0, "siren later than 1 s after the frame"
        assert max(s.at for s in sms) - t0 < 1.0, "SMS later than 1 s after the frame"
        assert sorted(s.number for s in sms) == ["+8613800000001", "+8613900000011"]
        assert sms[0].text.startswith("SMOKE ALARM 12 Elm Road, flat 3 at ") and GW in sms[0].text

        # the detector keeps reporting its alarm, and a second radio hears a copy: no storm
        for _ in range(5):
            clock.advance(5_000)
            frame_bytes = node.smoke(2, flags=frame.FLAG_ACK_REQ)
            await adapter.hear(frame_bytes, clock.now_ms())
            await adapter.hear(frame_bytes, clock.now_ms(), rssi=-110)
        await gw.flush()
        await svc.wait_idle()
        assert len(lan.messages) == 1 and len(emu.sent) == 2
        assert len(adapter.downlinks) == 6  # every alarm frame was still acknowledged to the node
        assert sink.record_count() == 0

        # the platform comes back: the uplink reconnects by itself, failover ends, the audit trail arrives
        platform.start()
        await wait_until(gw.publisher.is_connected, 60, "uplink reconnected")
        await svc.tick()
        assert not svc.engine.uplink_down
        await svc.wait_idle()
        await gw.flush()
        clock.advance(1000)  # past the dedupe collection window of the newest (event priority) records
        gw.forwarder.wake()

        def trail() -> dict[str, list[dict[str, object]]]:
            out: dict[str, list[dict[str, object]]] = {}
            for r in sink.records():
                if r.record_type == 1:
                    out.setdefault(audit.EVENT_NAMES.get(r.kind, str(r.kind)), []).append(dict(r.fields))
            return out

        def arrived(s: PlatformSink) -> bool:
            t = trail()
            # every record the assertions below look at: the platform-down audit record was buffered during
            # the outage and drains on the backlog lane, so it may arrive after the live lane's records
            return len(t.get("action", [])) >= 2 and len(t.get("rule_cleared", [])) >= 2 and len(
                t.get("rule_fired", [])) >= 3 and len([r for r in s.records(FLAT) if r.record_type == 0]) == 6

        await sink.wait_for_async(arrived, 60, "readings and audit records at the platform")
        t = trail()
        rule = str(audit.F_RULE)
        fired = sorted(bytes.fromhex(str(f[rule])).decode() for f in t["rule_fired"])
        assert fired == ["platform-down", "smoke-siren", "smoke-sms"]  # once each
        results = {(json.loads(json.dumps(f[str(audit.FA_TYPE)])), f[str(audit.FA_RESULT)]) for f in t["action"]}
        assert results == {(1, 0), (3, 0)}  # mqtt done, sms done
        sms_result = next(f for f in t["action"] if f[str(audit.FA_TYPE)] == 3)
        assert bytes.fromhex(str(sms_result[str(audit.FA_TARGET)])).decode() == "**********0001,**********0011"
        cleared = sorted((bytes.fromhex(str(f[rule])).decode(), bytes.fromhex(str(f[str(audit.F_REASON)])).decode())
                         for f in t["rule_cleared"])
        assert cleared == [("platform-down", "uplink_restored"), ("smoke-sms", "uplink_restored")]
        smoke = [r for r in sink.records(FLAT) if r.record_type == 0]
        assert all(r.kind == schema.K_SMOKE and r.priority == schema.P_ALARM for r in smoke)
        assert sink.chain_report()[0].intact
    finally:
        if gw is not None:
            await gw.stop()
        await emu.stop()
        lan.close()
        sink.stop()
