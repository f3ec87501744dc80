"""Drill 9: replay, forgery, a node flashed with the wrong key, a revoked device: all rejected, nothing
forwarded.

Beside the node under test: a node whose root key differs from its registry record, and a node that is
revoked half way (``lifeline gateway devices revoke``, picked up by the running daemon). An attacker replays
the node's captured frames (later than the gateway's 2 s dedupe window, so they are replays and not extra
receptions) and forges frames with real device ids and random MICs, plus noise, on the air next to the
gateway (simulator) and through the NB-IoT node broker. Every one must be rejected with its reason and
counted, and the platform must hold only what the provisioned, active nodes really sent.
"""

from __future__ import annotations

import time

import pytest

from lifeline.gateway.testing_proc import wait_until
from lifeline.hil_tests.attacker import Attacker
from lifeline.hil_tests.bench import BenchFactory, DutSpec
from lifeline.hil_tests.kpi import KpiRecorder


@pytest.mark.fast
@pytest.mark.drill(9, "Replay, forgery, wrong key, revoked device: rejected, nothing forwarded")
def test_attacks_are_rejected_and_nothing_is_forwarded(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="water_level", name="dut", interval_s=300),
              DutSpec(kind="water_level", name="wrong-key", interval_s=300, wrong_key=True, x_m=25.0),
              DutSpec(kind="water_meter", name="revoked", interval_s=300, x_m=30.0))
    dut, gw, platform = b.dut, b.gateway, b.platform
    wrong, revoked = b.apps[1], b.apps[2]
    world = b.world
    dut.run_until(lambda: len(dut.reports()) >= 2 and bool(platform.keys(revoked.device_id)), 1200,
                  what="reports from the node and the soon revoked one")
    wait_until(lambda: gw.rejects().get("bad_mic", 0) > 0, 30, "the wrong-key node's frames rejected")

    gw.revoke(revoked.device_id)  # the running daemon reloads its registry within buffer.maintenance_s
    wait_until(lambda: gw.metric("devices", status="revoked") == 1, 15, "the daemon seeing the revocation")
    revoked_before = set(platform.keys(revoked.device_id))
    dut.run(900)
    wait_until(lambda: gw.rejects().get("revoked_device", 0) > 0, 30, "the revoked node's frames rejected")

    attacker = Attacker((b.node_broker.host, b.node_broker.port), world if dut.monitors_air else None)
    try:
        captured = world.raw_frames(dut.name if dut.monitors_air else revoked.name)[-4:]
        assert captured
        time.sleep(2.5)  # past the gateway's 2 s dedupe window: a replay, not another reception
        before = gw.rejects()
        for f in captured:
            attacker.publish(f)
        if attacker.on_air:
            for f in captured:
                attacker.transmit(f)
        forged = [attacker.forge(app.device_id) for app in (b.apps[0], wrong) for _ in range(3)]
        for f in forged:
            attacker.publish(f)
        if attacker.on_air:
            for f in forged[:3]:
                attacker.transmit(f)
            for _ in range(3):
                attacker.transmit(attacker.noise())
        n_replay = len(captured) * (2 if attacker.on_air else 1)
        n_bad_mic = len(forged) + (3 if attacker.on_air else 0)

        def grew(reason: str) -> int:
            return gw.rejects().get(reason, 0) - before.get(reason, 0)

        wait_until(lambda: grew("replay") >= n_replay and grew("bad_mic") >= n_bad_mic, 30,
                   f"{n_replay} replays and {n_bad_mic} forgeries rejected (now {gw.rejects()})")
    finally:
        attacker.close()
    dut.run(300)  # the genuine node keeps reporting through it all

    # nothing forwarded: only what the active nodes sent, once
    keys = platform.keys()
    assert len(keys) == len(set(keys))
    assert not platform.keys(wrong.device_id), "the wrong-key node's frames reached the platform"
    assert set(platform.keys(revoked.device_id)) == revoked_before, "readings after the revocation were forwarded"
    if dut.monitors_air:
        genuine = {u.fcnt for u in dut.uplinks() if u.valid}
        assert {f for _, f in platform.keys(dut.device_id)} <= genuine
    assert platform.rejected() == 0 and platform.chain_intact()
    rejects = gw.rejects()
    for reason in ("replay", "bad_mic", "revoked_device"):
        assert rejects.get(reason, 0) > 0, f"no {reason} rejections: {rejects}"
    noise = sum(v for k, v in rejects.items() if k not in ("replay", "bad_mic", "revoked_device"))
    if attacker.on_air:
        assert noise > 0, f"the noise was not rejected with a frame-codec reason: {rejects}"
    kpi.counts("frames_rejected", rejects)
    kpi.value("attacker_frames", len(attacker.sent), "frames", forwarded=0)
    kpi.value("records_from_attacks", 0, "records")
