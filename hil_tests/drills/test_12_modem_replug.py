"""Drill 12: the gateway's LoRa modem (RAK3172 on USB serial) is unplugged and plugged back.

The daemon must not restart: the lora-serial adapter notices the port going away, polls for the device path
with backoff, reopens and reconfigures the modem when it is back (docs/radios.md 1.4), and the node's
readings flow again, including what it queued meanwhile. Simulator: the RAK3172 emulator's pty disappears
and comes back; bench: the operator pulls the cable.
"""

from __future__ import annotations

import time

import pytest

from lifeline.gateway.testing_proc import wait_until
from lifeline.hil_tests.bench import BenchFactory, DutSpec, HilConfig
from lifeline.hil_tests.dut import Operator
from lifeline.hil_tests.kpi import KpiRecorder

INTERVAL_S = 300
UNPLUGGED_S = 1800.0


@pytest.mark.fast
@pytest.mark.drill(12, "Serial modem unplugged and replugged: the gateway recovers alone")
def test_gateway_recovers_from_modem_unplug(bench: BenchFactory, kpi: KpiRecorder, hil_config: HilConfig) -> None:
    b = bench(DutSpec(kind="water_level", interval_s=INTERVAL_S))
    dut, gw = b.dut, b.gateway
    dut.run_until(lambda: len(dut.reports()) >= 2, 3 * INTERVAL_S, what="reports before the unplug")
    pid = gw.proc.pid if gw.proc else None

    def counter(name: str) -> float:
        return gw.metric("adapter_counter", adapter="lora0", counter=name)

    if hil_config.is_sim:
        b.world.call(lambda: b.world.modem.unplug())
    else:
        Operator(hil_config.operator_timeout_s).do("Unplug the gateway's LoRa modem (USB).")
    wait_until(lambda: counter("disconnects") >= 1, 30, "the gateway noticing the modem is gone")
    t_unplug = dut.now_s()
    dut.run(UNPLUGGED_S)  # the node reports into the void meanwhile
    lost = [u for u in dut.uplinks() if u.t_s >= t_unplug and not u.heard] if dut.monitors_air else []

    t0 = time.monotonic()
    if hil_config.is_sim:
        b.world.call(lambda: b.world.modem.replug())
        wait_until(lambda: b.world.call(lambda: b.world.modem.rx_mode) == 65534, 30,
                   "the gateway reconfiguring the modem")
    else:
        Operator(hil_config.operator_timeout_s).do("Plug the gateway's LoRa modem back in.")
    wait_until(lambda: counter("reconnects") >= 1, 30, "the adapter reopening the port")
    recovery_s = time.monotonic() - t0
    assert gw.running and gw.proc is not None and gw.proc.pid == pid, "the daemon restarted"
    n = len(dut.reports())
    dut.run_until(lambda: len(dut.reports()) > n, 3 * INTERVAL_S, what="the node's readings flowing again")
    if dut.monitors_air:
        after = [u for u in dut.uplinks() if u.t_s >= t_unplug + UNPLUGGED_S and u.valid]
        assert after and all(u.heard for u in after[-3:]), "frames after the replug were not received"
    kpi.value("modem_recovery_s", round(recovery_s, 2), "s", what="replug -> modem configured, receiving")
    kpi.value("frames_lost_while_unplugged", len(lost), "frames", unplugged_s=UNPLUGGED_S)
    kpi.counts("adapter_events", {k: int(counter(k)) for k in ("disconnects", "port_absent", "reconnects")})
    assert b.platform.chain_intact()
