"""Drill 5: the gateway process is killed with SIGKILL 20 times, at random moments, under load.

The node under test and its NB-IoT neighbours keep reporting. Before each kill the harness reads what the
gateway had accepted (the buffer file a dead process leaves, plus what the platform already stored); after
each kill the daemon is started again from the same state directory. At the end every accepted reading is
at the platform exactly once, every frame the neighbours' broker took is too (the NB-IoT adapter
acknowledges only committed frames), and the signed batch chain has no broken link or equivocation.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from lifeline.gateway.testing_proc import wait_until
from lifeline.hil_tests.bench import BenchFactory, DutSpec, NeighbourSpec
from lifeline.hil_tests.kpi import KpiRecorder

KILLS = 20


@pytest.mark.drill(5, "Gateway killed with SIGKILL 20 times under load: zero accepted readings lost")
def test_sigkill_under_load_loses_no_accepted_reading(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="water_meter", interval_s=60),
              neighbours=NeighbourSpec(count=30, interval_s=60, speed=30.0))
    dut, gw, platform = b.dut, b.gateway, b.platform
    platform.wait(lambda p: p.count() >= 20, 60, "load reaching the platform")

    stop = threading.Event()
    errors: list[BaseException] = []

    def node_life() -> None:  # the node keeps living (fast-forwarded) through every kill
        try:
            while not stop.is_set():
                dut.run(60)
        except BaseException as e:  # surfaced below
            errors.append(e)

    runner = threading.Thread(target=node_life, name="dut-life")
    runner.start()
    rng = random.Random(5)
    accepted: set[tuple[bytes, int]] = set()
    restart_s: list[float] = []
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.1, 1.2))  # a random moment: mid-commit, mid-publish, mid-startup ...
            gw.kill()
            accepted |= gw.buffered_readings() | set(platform.keys())
            t0 = time.monotonic()
            gw.start()
            restart_s.append(time.monotonic() - t0)
    finally:
        stop.set()
        runner.join(120)
    assert not errors, errors
    assert gw.kills == KILLS
    b.wait_gateway_ready()
    b.neighbours.pause()
    published = b.neighbours.published()
    dut.run(300)  # the node's queued readings go out once the link is back
    accepted |= gw.buffered_readings()

    platform.wait_keys(accepted, 180, "every reading the gateway had accepted before each kill")
    platform.wait_keys(published, 180, "every frame the neighbours' broker took")
    wait_until(lambda: not gw.buffered_readings(), 60, "the gateway's buffer draining")
    keys = platform.keys()
    assert len(keys) == len(set(keys)), "a reading was stored twice"
    chain = platform.chain_report()
    assert all(not c["broken_links"] and not c["equivocations"] for c in chain), chain
    kpi.value("kills", gw.kills, "SIGKILL")
    kpi.value("accepted_readings_checked", len(accepted), "readings", lost=0)
    kpi.samples("gateway_restart_s", restart_s, "s", what="exec -> metrics endpoint up")
    stored_dut = {k for k in keys if k[0] == dut.device_id}
    sent_dut = {(dut.device_id, u.fcnt) for u in dut.uplinks() if u.valid}
    kpi.value("node_delivery_ratio", round(len(stored_dut) / len(sent_dut), 4), "",
              note="frames on the air while no gateway process listened are lost on the air, not accepted",
              stored=len(stored_dut), sent=len(sent_dut))
    kpi.value("chain_gaps", sum(len(c["gaps"]) for c in chain), "gaps")
