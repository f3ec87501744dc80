"""``lifeline bench fleet``: CPU per simulated node-hour of the fleet simulator (real firmware per node).

Budgets (tools/bench.py figures): 10,000 nodes at real time with 5-minute reports fit one core when a
node-hour costs at most 0.36 CPU-s; 1,000 nodes at 100x real time need at most 0.036 CPU-s per
node-hour. Measured on a mixed city fleet (smoke alarms sampling every 10 s, meters, manholes, drains;
LoRa on the concentrator's channels, NB-IoT, BLE), frames judged on the virtual air (frames-only mode),
after the first power-on of every node (provisioning, first boot) is excluded from the timing.
"""

from __future__ import annotations

import asyncio
import time

from lifeline.sim_devices import runner
from lifeline.sim_devices.fleet import Fleet, NodeSpec
from lifeline.sim_devices.links import VirtualReceivers
from lifeline.sim_devices.provision import build_fleet
from lifeline.tools.bench import BenchContext, Figure

MIX = (("smoke", 0.40), ("water_meter", 0.20), ("gas_meter", 0.10), ("electricity_meter", 0.10),
       ("tilt", 0.10), ("water_level", 0.10))
RADIO_MIX = (("lora-udp", 0.70), ("nbiot", 0.20), ("lora-serial", 0.05), ("ble", 0.05))


def city_fleet(n: int, *, interval_s: int = 300, seed: int = 1) -> list[NodeSpec]:
    """``n`` nodes in the MIX proportions, on a grid within ~300 m of the gateway."""
    specs: list[NodeSpec] = []
    side = max(1, int(n ** 0.5))
    spacing = 600.0 / side
    kinds = [k for k, share in MIX for _ in range(round(share * 100))]
    radios = [r for r, share in RADIO_MIX for _ in range(round(share * 100))]
    for i in range(n):
        x = -300.0 + (i % side) * spacing + spacing / 2
        y = -300.0 + (i // side) * spacing + spacing / 2
        kind = kinds[(i * 37) % len(kinds)]
        radio = radios[(i * 53) % len(radios)]
        if radio == "ble":
            x, y = x / 10.0, y / 10.0  # BLE nodes sit within reach of the gateway's BLE radio
        specs.append(NodeSpec(name=f"n{i:05d}", kind=kind, radio=radio, x_m=x, y_m=y, interval_s=interval_s,
                              model={"heavy_per_hour": 4.0} if kind == "tilt" else {}))
    return specs


def measure(n: int, virtual_s: float, *, seed: int = 1) -> dict[str, float]:
    """Build ``n`` nodes, power them on (not timed), run ``virtual_s`` flat out; CPU and wall figures."""
    t0 = time.process_time()
    fleet = Fleet(seed=seed, record_frames=False)
    build_fleet(city_fleet(n, seed=seed), fleet)
    VirtualReceivers(fleet)
    build_cpu = time.process_time() - t0
    fleet.start(stagger_ms=300_000)
    fleet.run_until(300_000)  # every node booted once (first boot writes flash, counters, ...)
    start_ms = fleet.now_ms
    frames0 = fleet.counters["frames_sent"]
    wall0 = time.perf_counter()
    cpu = asyncio.run(runner.run(fleet, (start_ms / 1000.0) + virtual_s))
    wall = time.perf_counter() - wall0
    node_hours = n * virtual_s / 3600.0
    return {"cpu_per_node_hour": cpu / node_hours, "speed": virtual_s / wall, "build_cpu_per_node": build_cpu / n,
            "frames_per_node_hour": (fleet.counters["frames_sent"] - frames0) / node_hours,
            "wakes": float(sum(v.wakes for v in fleet.nodes))}


def bench(ctx: BenchContext) -> list[Figure]:
    big = ctx.scale(10_000, 2_000)
    small = 1_000
    a = measure(big, ctx.scale(1800, 600))
    b = measure(small, ctx.scale(3600, 900), seed=2)
    realtime_nodes = 3600.0 / a["cpu_per_node_hour"]
    return [
        Figure("fleet", f"cpu_per_node_hour_{big}_nodes", a["cpu_per_node_hour"], "CPU-s/node-h", better="lower",
               budget=0.36, note="10,000 nodes at real time on one core need <= 0.36"),
        Figure("fleet", "realtime_nodes_per_core", realtime_nodes, "nodes",
               budget=10_000, note=f"5-min reports, mixed fleet; {a['frames_per_node_hour']:.1f} frames/node-h"),
        Figure("fleet", "cpu_per_node_hour_1000_nodes", b["cpu_per_node_hour"], "CPU-s/node-h", better="lower",
               budget=0.036, note="1,000 nodes at 100x real time need <= 0.036"),
        Figure("fleet", "speed_1000_nodes", b["speed"], "x real time", budget=100.0,
               note="flat out, frames-only"),
        Figure("fleet", "provision_cpu_per_node", a["build_cpu_per_node"] * 1000.0, "ms/node", better="lower",
               note="node_config (firmware rules) + record + keys, not in the per-hour figures"),
    ]
