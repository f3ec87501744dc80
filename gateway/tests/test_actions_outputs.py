"""Action outputs on real parts: a LAN Mosquitto, a local HTTP server, the simulated gpiochip."""

from __future__ import annotations

import errno
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from lifeline.gateway.actions import ActionFailed
from lifeline.gateway.actions.gpio import GpioRelays, SimChip
from lifeline.gateway.actions.lan_mqtt import LanMqtt
from lifeline.gateway.actions.webhook import Webhook
from lifeline.gateway.clock import ManualClock
from lifeline.gateway.rules_engine import model as m
from lifeline.tools.broker import MosquittoBroker, free_port

# ---------------------------------------------------------------------------------------------- GPIO


def test_sim_chip_models_line_ownership_and_keeps_a_history() -> None:
    SimChip.remove("t-own")
    chip = SimChip.get("t-own", lines=8)
    assert SimChip.get("t-own") is chip
    chip.request_output(3, "lifeline", 1, 100)
    with pytest.raises(OSError) as ei:
        chip.request_output(3, "other", 0, 101)
    assert ei.value.errno == errno.EBUSY
    with pytest.raises(OSError) as ei:
        chip.set_value(4, "lifeline", 1, 102)
    assert ei.value.errno == errno.EPERM
    with pytest.raises(OSError) as ei:
        chip.set_value(8, "lifeline", 1, 103)
    assert ei.value.errno == errno.EINVAL
    chip.set_value(3, "lifeline", 1, 104)  # same level: no new history entry
    chip.set_value(3, "lifeline", 0, 105)
    assert chip.history(3) == [(100, 1), (105, 0)] and chip.value(3) == 0
    chip.release(3, "lifeline")
    chip.request_output(3, "other", 1, 106)  # free again


async def test_gpio_relays_drive_lines_and_report_ownership_conflicts() -> None:
    SimChip.remove("t-relay")
    clock = ManualClock(1_000)
    relays = GpioRelays("relays", m.GpioOutput("sim:t-relay", active_low=True), clock)
    assert await relays.set(17, 1) == "line 17 on"
    chip = SimChip.get("t-relay")
    assert chip.value(17) == 0  # active low: on = 0 V
    clock.advance(500)
    await relays.set(17, 0)
    assert chip.history(17) == [(1_000, 0), (1_500, 1)]
    chip.request_output(5, "someone-else", 0, 0)
    with pytest.raises(ActionFailed, match="line 5"):
        await relays.set(5, 1)
    await relays.close()
    assert chip.lines[17].consumer is None


# ---------------------------------------------------------------------------------------------- webhook


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        self.server.requests.append((self.path, dict(self.headers), body))
        if self.server.hold.is_set():
            self.server.release.wait(5)
        status = self.server.statuses.pop(0) if self.server.statuses else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


class _Server(http.server.ThreadingHTTPServer):
    requests: list[tuple[str, dict[str, str], Any]]
    statuses: list[int]
    hold: threading.Event
    release: threading.Event


@pytest.fixture
def http_server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests, srv.statuses = [], []
    srv.hold, srv.release = threading.Event(), threading.Event()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    t.join(5)


async def test_webhook_posts_json_and_fails_on_non_2xx(http_server: _Server) -> None:
    url = f"http://127.0.0.1:{http_server.server_address[1]}/hooks"
    hook = Webhook("display", m.WebhookOutput(url, {"X-Site": "district-7"}))
    assert await hook.post("flood/district 7", {"level": "312 mm"}, 2.0) == 204
    path, headers, body = http_server.requests[0]
    assert path == "/hooks/flood/district%207" and body == {"level": "312 mm"}
    assert headers["Content-Type"] == "application/json" and headers["X-Site"] == "district-7"
    http_server.statuses.append(500)
    with pytest.raises(ActionFailed, match="HTTP 500"):
        await hook.post(None, {}, 2.0)
    http_server.statuses.append(302)
    with pytest.raises(ActionFailed, match="HTTP 302"):  # redirects are not followed
        await hook.post(None, {}, 2.0)


async def test_webhook_timeout_and_refused_connection(http_server: _Server) -> None:
    url = f"http://127.0.0.1:{http_server.server_address[1]}/"
    http_server.hold.set()
    with pytest.raises(ActionFailed, match=r"timed out|TimeoutError|timeout"):
        await Webhook("slow", m.WebhookOutput(url)).post(None, {}, 0.2)
    http_server.release.set()
    with pytest.raises(ActionFailed, match=r"Connection refused|ConnectionRefusedError"):
        await Webhook("gone", m.WebhookOutput(f"http://127.0.0.1:{free_port()}/")).post(None, {}, 1.0)


# ---------------------------------------------------------------------------------------------- LAN MQTT


Received = list[tuple[str, bytes, bool]]


def subscribe(broker: MosquittoBroker, topic: str) -> tuple[mqtt.Client, Received, threading.Event]:
    got: list[tuple[str, bytes, bool]] = []
    ready = threading.Event()
    arrived = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lan-listener")
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda cl, u, mid, rc, p: ready.set()

    def on_message(cl: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        got.append((msg.topic, bytes(msg.payload), msg.retain))
        arrived.set()

    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert ready.wait(10)
    return c, got, arrived


async def test_lan_mqtt_publishes_with_puback_and_reconnects(mosquitto: MosquittoBroker) -> None:
    c, got, arrived = subscribe(mosquitto, "site/#")
    lan = LanMqtt("lan", m.MqttOutput(mosquitto.host, mosquitto.port, "gw-rules-test"))
    try:
        await lan.publish("site/block-12/siren", b'{"on": true}', qos=1, retain=False, timeout_s=2.0)
        assert arrived.wait(5)
        assert got == [("site/block-12/siren", b'{"on": true}', False)]
        mosquitto.stop()
        with pytest.raises(ActionFailed):
            await lan.publish("site/x", b"1", qos=1, retain=False, timeout_s=1.0)
        with pytest.raises(ActionFailed, match="LAN broker"):
            await lan.publish("site/x", b"1", qos=1, retain=False, timeout_s=1.0)
        mosquitto.start()
        await lan.publish("site/after", b"2", qos=1, retain=True, timeout_s=5.0)
        assert lan.connects == 2
    finally:
        await lan.close()
        c.loop_stop()
        c.disconnect()
