"""Capacity of one LoRa channel: N nodes, one gateway, delivery ratio against pure ALOHA.

Each node sends a ``payload_len``-byte packet at Poisson times with mean interval ``interval_s`` (a node
never starts while its own previous packet is on air) on the same frequency and SF, so the offered load is
G = N * ToA / interval. Pure ALOHA predicts that a packet survives when no other starts within one
packet time before or after it: S/G = exp(-2G). The nodes sit ``distance_m`` from the gateway, close enough
that shadowing never takes a packet below sensitivity, so collisions are the only loss; with ``capture``
the stronger of two overlapping packets can survive (6 dB), which lifts the curve above ALOHA.
Everything runs on the virtual air (sim_devices/air.py), deterministic for a seed. docs/radios.md
section 6 shows the curve.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lifeline.gateway.ingress import lora_p2p
from lifeline.sim_devices.air import AirChannel, LoraParams, VirtualClock


@dataclass(frozen=True, slots=True)
class CapacityPoint:
    nodes: int
    sf: int
    interval_s: float
    toa_ms: float
    offered_load: float  # G
    sent: int
    delivered: int
    aloha: float  # exp(-2G)

    @property
    def ratio(self) -> float:
        return self.delivered / self.sent if self.sent else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"nodes": self.nodes, "sf": self.sf, "interval_s": self.interval_s, "toa_ms": round(self.toa_ms, 3),
                "offered_load": round(self.offered_load, 4), "sent": self.sent, "delivered": self.delivered,
                "delivery_ratio": round(self.ratio, 4), "aloha": round(self.aloha, 4)}


def aloha_success(offered_load: float) -> float:
    """Pure-ALOHA probability that a packet is not collided: exp(-2G)."""
    return math.exp(-2.0 * offered_load)


def run_point(
    nodes: int,
    *,
    sf: int,
    interval_s: float,
    payload_len: int = 20,
    packets: int = 5000,
    capture: bool = False,
    seed: int = 1,
    region: str = "EU868",
    distance_m: float = 25.0,
) -> CapacityPoint:
    """Simulate until about ``packets`` packets were sent in total and count what the gateway got."""
    if nodes < 1 or interval_s <= 0 or packets < 1:
        raise ValueError("nodes, interval and packets must be positive")
    channel = lora_p2p.REGION_DEFAULTS[region]
    params = LoraParams(channel.freq_hz, sf, channel.bw_khz)
    toa = params.toa_ms(payload_len)
    clock = VirtualClock(0.0)
    air = AirChannel(clock, seed=seed, capture=capture, region=None, record=False)
    gateway = air.add_radio("gateway")
    gateway.listen(params, 0.0)
    rng = random.Random(seed)
    names = []
    for i in range(nodes):
        angle = 2 * math.pi * i / nodes
        name = f"n{i}"
        air.add_radio(name, distance_m * math.cos(angle), distance_m * math.sin(angle), duty_cycle=False)
        names.append(name)
    mean_ms = interval_s * 1000.0
    duration_ms = packets * mean_ms / nodes
    queue = [(rng.expovariate(1.0 / mean_ms), i) for i in range(nodes)]
    heapq.heapify(queue)
    payload = bytes(payload_len)
    sent = 0
    while queue:
        start, i = heapq.heappop(queue)
        if start > duration_ms:
            continue
        clock.advance_to(start)
        air.transmit(names[i], payload, params)
        sent += 1
        heapq.heappush(queue, (start + toa + rng.expovariate(1.0 / mean_ms), i))
    clock.run_all()
    delivered = air.stats["ok"] + air.stats["captured"]
    load = nodes * toa / mean_ms
    return CapacityPoint(nodes, sf, interval_s, toa, load, sent, delivered, aloha_success(load))


def run_curve(
    node_counts: Iterable[int],
    *,
    progress: Callable[[CapacityPoint], None] | None = None,
    **kwargs: object,
) -> list[CapacityPoint]:
    points = []
    for n in node_counts:
        point = run_point(n, **kwargs)  # type: ignore[arg-type]
        points.append(point)
        if progress is not None:
            progress(point)
    return points
