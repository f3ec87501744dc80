"""The throughput helpers the bench uses: both measure PUBACKed messages, and the uplink's in-flight
window makes it faster than one publish per round trip."""

from __future__ import annotations

from lifeline.tools.bench_mqtt import raw_paho_qos1_rate, uplink_rate, uplink_sequential_rate
from lifeline.tools.broker import MosquittoBroker


def test_rates_are_measured_and_the_window_beats_one_at_a_time(mosquitto: MosquittoBroker) -> None:
    raw = raw_paho_qos1_rate(mosquitto.host, mosquitto.port, 2000)
    windowed = uplink_rate(mosquitto.host, mosquitto.port, 3000)
    sequential = uplink_sequential_rate(mosquitto.host, mosquitto.port, 1000)
    assert raw > 0 and windowed > 0 and sequential > 0
    assert windowed > 1.5 * sequential, (windowed, sequential)
