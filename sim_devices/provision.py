"""Provisioning a simulated fleet the way the field does it: each node's ``/config.json`` from
``provisioning.nodeconfig.node_config`` (checked by the firmware's own rules) and its registry record from
``provisioning.records.build`` and ``records.sign`` (technician key), written as the JSON-lines records
file ``lifeline gateway devices import`` reads (mode 0600: it holds root keys).

Faults decided at provisioning: ``wrong_key`` gives the node a root key other than the one in its record
(a swapped label or a re-flashed board): everything it sends fails the MIC at the gateway.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import schema
from lifeline.provisioning import nodeconfig, records
from lifeline.sim_devices.fleet import (
    KIND_NAMES,
    LORA_CHANNEL,
    UDP_CHANNELS,
    Fleet,
    NodeSpec,
    VirtualNode,
    device_identity,
)
from lifeline.sim_devices.physics.base import derive_seed

TECHNICIAN = "sim-technician"
BASE_LAT_UDEG = 31_230_416  # the scenarios' city block (any place works; coordinates are labels)
BASE_LON_UDEG = 121_473_701


def lora_settings(spec: NodeSpec, index: int, seed: int) -> dict[str, int]:
    """The node's LoRa P2P settings: the gateway modem's channel at SF9 for ``lora-serial``; one of the
    concentrator-only channels at an SF for its distance for ``lora-udp``."""
    if spec.radio == "lora-serial":
        return {"freq": LORA_CHANNEL, "sf": 9, "bw": 125, "cr": 0, "preamble": 8, "power": 14, "rx_ms": 1500}
    d = (spec.x_m ** 2 + spec.y_m ** 2) ** 0.5
    # median range at 14 dBm (docs/radios.md section 5): SF7 115 m, SF9 225 m, SF12 490 m; keep 20 % margin
    sf = 7 if d < 90 else 8 if d < 140 else 9 if d < 180 else 10 if d < 260 else 11 if d < 330 else 12
    freq = UDP_CHANNELS[derive_seed(seed, "chan", index) % len(UDP_CHANNELS)]
    return {"freq": freq, "sf": sf, "bw": 125, "cr": 0, "preamble": 8, "power": 14, "rx_ms": 1500}


def device_spec(spec: NodeSpec, *, nbiot_host: str, extra: dict[str, Any]) -> nodeconfig.DeviceSpec:
    kind = KIND_NAMES[spec.kind]
    kid = schema.kind_id_by_name(kind)
    assert kid is not None
    k = schema.KINDS[kid]
    loc = nodeconfig.Location(
        address=spec.address or f"{spec.name}, simulated city",
        lat_udeg=BASE_LAT_UDEG + int(spec.y_m * 9),  # ~0.111 m per micro-degree of latitude
        lon_udeg=BASE_LON_UDEG + int(spec.x_m * 10.5),
        spatial_unit=spec.unit or "sim",
    )
    radio = "lora" if spec.radio.startswith("lora") else spec.radio
    return nodeconfig.DeviceSpec(
        kind=kind, radio=radio, region="EU868", interval_s=spec.interval_s, location=loc,
        data_class=schema.CLASS_NAMES[k[1]], install_date="2025-06-01", design_life_years=10,
        tags=(*tuple(spec.tags), "sim"), nbiot_host=nbiot_host if radio == "nbiot" else None, extra=extra,
        suite=spec.suite)


def build_fleet(specs: Sequence[NodeSpec], fleet: Fleet, *, technician_key: Ed25519PrivateKey | None = None,
                nbiot_host: str = "127.0.0.1", wrong_key: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Create and add a VirtualNode per spec; returns the (signed) registry records."""
    wrong = set(wrong_key)
    out: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        dev_id, root = device_identity(fleet.seed, i)
        extra: dict[str, Any] = {"heartbeat": spec.heartbeat_s}
        if spec.radio.startswith("lora"):
            extra["lora"] = lora_settings(spec, i, fleet.seed)
        elif spec.radio == "ble":
            extra["ble"] = {"interval_ms": 100, "extended": spec.ble_extended}
        extra.update(spec.config)
        dspec = device_spec(spec, nbiot_host=nbiot_host, extra=extra)
        node_root = root
        if spec.name in wrong:
            node_root = hashlib.blake2b(b"wrong:" + root, digest_size=32).digest()
        config = nodeconfig.node_config(dspec, dev_id, node_root)
        record = records.build(dspec, dev_id, root, TECHNICIAN)
        if technician_key is not None:
            record = records.sign(record, technician_key)
        out.append(record)
        v = VirtualNode(fleet, i, spec, dev_id, node_root, config)
        fleet.add(v)
        from lifeline.protocols import frame, suites

        fleet.gateway_end.register(dev_id, frame.derive_keys(root, dev_id, suites.suite_id(spec.suite)))
    return out


def write_records(path: Path, recs: Iterable[dict[str, Any]]) -> Path:
    """The records file (one canonical JSON object per line, as provisioning writes it), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for r in recs:
            fh.write(json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def lookup(fleet: Fleet, name: str) -> VirtualNode:
    try:
        return fleet.by_name[name]
    except KeyError:
        raise KeyError(f"no node named {name!r}") from None
