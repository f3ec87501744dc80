"""Drill 6: the platform's MQTT broker is restarted 10 times under load.

Each time the broker stops (SIGTERM, its persistence file kept) for a random moment and comes back on the
same port; nobody tells the gateway. The gateway must reconnect by itself every time, keep accepting and
buffering meanwhile, and in the end the platform holds every reading the gateway accepted, once, with an
intact chain.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from lifeline.gateway.testing_proc import wait_until
from lifeline.hil_tests.bench import BenchFactory, DutSpec, NeighbourSpec
from lifeline.hil_tests.kpi import KpiRecorder

RESTARTS = 10


@pytest.mark.drill(6, "Platform broker restarted 10 times under load: zero loss, reconnects alone")
def test_broker_restarts_under_load_lose_nothing(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="smoke", interval_s=120),
              neighbours=NeighbourSpec(count=30, interval_s=60, speed=30.0))
    dut, gw, platform = b.dut, b.gateway, b.platform
    platform.wait(lambda p: p.count() >= 20, 60, "load reaching the platform")
    stop = threading.Event()
    errors: list[BaseException] = []

    def node_life() -> None:
        try:
            while not stop.is_set():
                dut.run(120)
        except BaseException as e:
            errors.append(e)

    runner = threading.Thread(target=node_life, name="dut-life")
    runner.start()
    rng = random.Random(6)
    reconnect_s: list[float] = []
    try:
        for _ in range(RESTARTS):
            time.sleep(rng.uniform(0.2, 1.0))
            platform.broker.stop()
            wait_until(lambda: gw.metric("uplink_connected") == 0, 30, "the gateway noticing the broker is gone")
            time.sleep(rng.uniform(0.1, 1.5))  # down for a random moment
            platform.broker.start()
            t0 = time.monotonic()
            wait_until(lambda: gw.metric("uplink_connected") == 1, 60, "the gateway reconnecting by itself")
            reconnect_s.append(time.monotonic() - t0)
    finally:
        stop.set()
        runner.join(120)
    assert not errors, errors
    assert platform.broker.starts == RESTARTS + 1
    b.neighbours.pause()
    published = b.neighbours.published()
    heard = {(dut.device_id, u.fcnt) for u in dut.uplinks() if u.heard and u.valid}
    platform.wait_keys(published | heard, 120, "every reading the node and its neighbours delivered")
    wait_until(lambda: not gw.buffered_readings(), 60, "the gateway's buffer draining")
    accepted = int(gw.metric("readings_accepted_total"))
    keys = platform.keys()
    assert len(keys) == len(set(keys)), "a reading was stored twice"
    assert len(keys) == accepted, f"the gateway accepted {accepted} readings, the platform stored {len(keys)}"
    assert platform.chain_intact(), platform.chain_report()
    kpi.value("broker_restarts", RESTARTS, "restarts")
    kpi.samples("reconnect_s", reconnect_s, "s", what="broker listening again -> gateway connected")
    kpi.value("delivery_ratio", round(len(keys) / accepted, 4), "", stored=len(keys), accepted=accepted)
    kpi.value("publish_failures", int(gw.metric("publish_failures_total")), "batches",
              note="batches without PUBACK during the restarts, all republished")
