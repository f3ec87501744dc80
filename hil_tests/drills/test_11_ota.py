"""Drill 11: app updates. A good bundle is adopted; bad ones are refused or rolled back; a power cut in the
middle of an install is survived.

The bundle goes to the node over its maintenance link (the technician's tool; on a bench the USB console),
and the node's own ``ota.install`` checks it: HMAC tag under the node's OTA key before anything is written,
files to the spare slot, read back, pointer switched on trial. ``boot.py`` (bootsel) then runs the new app
on trial: its first acknowledged report makes it permanent; an app that never gets there within 3 boots is
rolled back and the old app reports fault ``ota_rollback`` to the platform.
"""

from __future__ import annotations

import os

import pytest

from lifeline.hil_tests.bench import BenchFactory, DutSpec
from lifeline.hil_tests.kpi import KpiRecorder
from lifeline.protocols import schema

INTERVAL_S = 300
FAULT_OTA_ROLLBACK = 7  # schema FAULT_CODES


def _fault_code(row: object) -> int | None:
    v = row.field("code")  # type: ignore[attr-defined]
    if isinstance(v, str):
        names = {n: c for c, n in schema.FAULT_CODES.items()}
        return names.get(v)
    return int(v) if v is not None else None


@pytest.mark.drill(11, "OTA: good bundle adopted, bad bundle rolled back, power cut during OTA recovers")
def test_ota_adopt_refuse_rollback_and_power_cut(bench: BenchFactory, kpi: KpiRecorder) -> None:
    b = bench(DutSpec(kind="tilt", interval_s=INTERVAL_S))
    dut, app = b.dut, b.dut.app
    dut.expect_boot(30)
    dut.run_until(lambda: len(dut.reports()) >= 1, 2 * INTERVAL_S, what="a first report")
    assert dut.app_slot()["version"] == 0  # the factory app

    # good bundle: installed, runs on trial, confirmed by its first acknowledged report
    assert dut.install_update(app.update_bundle(2)) == "installed"
    dut.expect_boot(30, reason="SW_CPU_RESET")
    n = len(dut.reports())
    dut.run_until(lambda: dut.app_slot().get("trial") == 0 and dut.app_slot().get("version") == 2, 2 * INTERVAL_S,
                  step_s=30, what="the new app confirming itself")
    dut.run_until(lambda: len(dut.reports()) > n, 2 * INTERVAL_S, what="reports from the new app")
    kpi.value("update_adopted", 1, "", version=2, slot=dut.app_slot()["slot"])

    # bad bundle 1: made for another device (wrong HMAC key): refused before anything is written
    assert dut.install_update(app.update_bundle(3, key=os.urandom(32))) == "bad_mac"
    assert dut.app_slot()["version"] == 2

    # bad bundle 2: authentic but the app crashes at import: 3 trial boots, then back to version 2
    assert dut.install_update(app.update_bundle(3, crashing=True)) == "installed"
    dut.expect(r"RuntimeError: app v3 crashes", 60)

    def rollback_reported() -> bool:
        return any(_fault_code(r) == FAULT_OTA_ROLLBACK for r in dut.reports(schema.K_FAULT))

    dut.run_until(rollback_reported, 3600, step_s=30, what="the ota_rollback fault at the platform")
    slot = dut.app_slot()
    assert slot["version"] == 2 and not slot.get("trial"), slot
    crashes = dut.console.count(r"RuntimeError: app v3 crashes")
    assert crashes == 3, f"{crashes} crashed boots before the rollback (K = 3)"
    fault = next(r for r in dut.reports(schema.K_FAULT) if _fault_code(r) == FAULT_OTA_ROLLBACK)
    assert int(fault.field("detail")) == 3, fault.fields  # the rejected version
    kpi.value("rollback_after_boots", crashes, "boots", version=3)

    # power cut in the middle of an install: the node comes back on the old app and can be updated again
    assert dut.install_update(app.update_bundle(4), cut_power_at=5) == "power_cut"
    dut.expect_boot(30, reason="POWERON_RESET")
    t0 = dut.now_s()
    last = max(r.fcnt for r in dut.reports())
    dut.run_until(lambda: max(r.fcnt for r in dut.reports()) > last, 2 * INTERVAL_S,
                  what="a report after the power cut")
    kpi.value("report_after_power_cut_s", round(dut.now_s() - t0, 1), "s node time")
    assert dut.app_slot()["version"] == 2, "a torn install was started"
    assert dut.install_update(app.update_bundle(4)) == "installed"
    dut.run_until(lambda: dut.app_slot().get("version") == 4 and dut.app_slot().get("trial") == 0,
                  2 * INTERVAL_S, step_s=30, what="the retried update confirmed")
    kpi.value("power_cut_recovered", 1, "", version=4)
    assert b.platform.chain_intact()
