"""The simulated world on its own (no gateway): virtual time that follows the wall clock and fast-forwards
on demand, the device boot sequence and UART output of a node under test, the monitor of its frames."""

from __future__ import annotations

import time
from pathlib import Path

from lifeline.hil_tests.console import Console
from lifeline.hil_tests.world import SimWorld
from lifeline.protocols import keys
from lifeline.sim_devices.fleet import NodeSpec


def test_a_node_lives_in_virtual_time_and_prints_like_an_esp32(tmp_path: Path) -> None:
    world = SimWorld(tmp_path / "w", seed=3).start()
    try:
        records = world.add_nodes([NodeSpec(name="n1", kind="water_level", radio="lora-serial", x_m=20.0,
                                            interval_s=600)], technician_key=keys.generate())
        assert records[0]["device_id"] == world.node("n1").dev_id.hex() and "signature" in records[0]
        con = Console(str(world.consoles["n1"].path), tmp_path / "n1.log", name="n1")
        try:
            t0 = world.now_s
            time.sleep(0.3)
            assert 0.2 < world.now_s - t0 < 2.0  # the world follows the wall clock when nobody fast-forwards
            world.power_on(["n1"])
            con.expect(r"rst:0x1 \(POWERON_RESET\)", 10)
            w0 = time.monotonic()
            world.advance(6 * 3600)  # six hours of node life
            assert time.monotonic() - w0 < 30
            con.expect(r"rst:0x5 \(DEEPSLEEP_RESET\)", 5)
            con.expect(r"lifeline: wake=\d+ reason=timer tx=\d+", 5)
            ups = world.uplinks("n1")
            assert ups and all(u.valid and not u.heard for u in ups)  # no gateway modem is listening
            assert [u.fcnt for u in ups] == sorted(u.fcnt for u in ups)
            # no ACK ever comes: the link check fails and the node keeps its readings (flash queue)
            assert any(u.flags & 0x02 for u in ups)
            log = world.log("n1")
            assert log.wakes >= 36  # a wake at least every 600 s
            assert log.boots[0][1] == 0 and log.slots[0][1] == "factory" and not log.crashes
            assert world.call(lambda: b"/queue" in str(list(world.node("n1").hal.fs.files)).encode())
            assert world.counters["windows_real_time"] == 0  # nothing heard: no receive window held
        finally:
            con.close()
    finally:
        world.stop()
    assert not (tmp_path / "w" / "console-n1").exists()
