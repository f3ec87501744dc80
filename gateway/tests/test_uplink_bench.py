"""The throughput helpers the bench uses run against a real broker and count only PUBACKed messages (each
raises when a PUBACK is missing). How the in-flight window compares with one publish at a time is a
figure of `python -m lifeline.tools.bench_mqtt` and `lifeline bench`, not an assertion here: wall-clock
rates on a shared machine made this test fail about one run in two under load."""

from __future__ import annotations

from lifeline.tools.bench_mqtt import raw_paho_qos1_rate, uplink_rate, uplink_sequential_rate
from lifeline.tools.broker import MosquittoBroker


def test_rate_helpers_measure_pubacked_messages(mosquitto: MosquittoBroker) -> None:
    raw = raw_paho_qos1_rate(mosquitto.host, mosquitto.port, 2000)
    windowed = uplink_rate(mosquitto.host, mosquitto.port, 3000)
    sequential = uplink_sequential_rate(mosquitto.host, mosquitto.port, 1000)
    assert raw > 0 and windowed > 0 and sequential > 0
