"""The one seam every radio adapter implements (LoRa serial modem, Semtech UDP, BLE, NB-IoT/MQTT).

An adapter turns what its hardware hears into :class:`RawFrame` records and hands them to a
:class:`FrameSink`; it knows nothing about keys, counters or the platform. The pipeline answers through
:meth:`IngressAdapter.send_downlink`, and only after a frame's reading is committed to the buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Reception:
    """How one copy of a frame was heard."""

    radio: str  # "lora-serial" | "lora-udp" | "ble" | "nbiot"
    adapter: str  # adapter instance name from the config, e.g. "lora0"
    rx_ms: int  # gateway receive time, Unix milliseconds (injected clock)
    rssi: int | None = None  # dBm
    snr_x10: int | None = None  # dB * 10 (wire values stay integers)
    freq_hz: int | None = None
    sf: int | None = None
    context: bytes = b""  # adapter-private routing data for a downlink answer (e.g. forwarder id, BLE address)


@dataclass(frozen=True, slots=True)
class RawFrame:
    """Bytes exactly as heard, not yet parsed or verified."""

    payload: bytes
    reception: Reception


@dataclass(frozen=True, slots=True)
class DownlinkRequest:
    """A protected downlink frame for one node, to be sent in its next receive window."""

    device_id: bytes
    payload: bytes
    reception: Reception  # the uplink reception that opened the window (radio, adapter, context)
    deadline_ms: int  # do not transmit after this Unix ms time (window closed)


class FrameSink(Protocol):
    """Where adapters deliver frames. ``submit`` waits when the pipeline is full (back-pressure)."""

    async def submit(self, frame: RawFrame) -> None: ...


class IngressAdapter(Protocol):
    name: str  # instance name from the config
    radio: str  # one of the Reception.radio values

    async def start(self, sink: FrameSink) -> None:
        """Open the hardware and start delivering frames. Returns once running."""

    async def stop(self) -> None:
        """Stop delivering frames and release the hardware."""

    async def send_downlink(self, request: DownlinkRequest) -> bool:
        """Transmit if the window and the regional duty cycle allow it; False if it could not be sent."""

    def counters(self) -> Mapping[str, int]:
        """Monotonic counters (frames heard, rejects by reason, reconnects, ...) for metrics."""
