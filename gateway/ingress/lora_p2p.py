"""Lifeline's LoRa point-to-point link contract, shared by both LoRa ingress adapters and the simulator.

Lifeline nodes send raw LoRa packets (no LoRaWAN MAC): one Lifeline frame per packet, explicit header,
CRC on, the modem's default sync word, normal IQ. A node that wants an answer (ACK_REQ, or it polls for
commands) listens once after each uplink, class-A style, on the uplink's channel and SF:

    uplink ends ──── RX1_DELAY_MS (1000 ms) ──── the gateway's answer starts TX_OFFSET_MS (50 ms) later
                     [ node listens at least from +1000 ms to +1500 ms (RX_WINDOW_MS) ]

The node firmware (firmware/radios/lora_at.py) sends AT+PRECV=1500 right after +EVT:TXP2P DONE, so it
listens from about +0 to +1500 ms, which contains the contract window. The one-second delay gives the
gateway time to verify the frame and commit the reading before it acknowledges (acks only after commit);
the 50 ms offset absorbs the node's timer jitter and a modem's serial latency, and leaves 450 ms for the
preamble to be detected inside the window even at SF12.

Downlinks use normal IQ, like uplinks: the node's RAK3172 listens with its P2P defaults. A node that hears
another node's uplink in its window, or a gateway that hears a downlink, cannot mistake it: the frame's
DOWN flag and the per-direction MIC keys (docs/protocol.md section 1) reject it as ``bad_direction`` /
``bad_mic``. Full description: docs/radios.md, section 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import TypeVar

_T = TypeVar("_T")

RX1_DELAY_MS = 1000  # uplink end -> node receive window opens
RX_WINDOW_MS = 500  # how long the node listens for a preamble
TX_OFFSET_MS = 50  # gateway downlink start, after the window opens
UPLINK_IQ_INVERTED = False
DOWNLINK_IQ_INVERTED = False  # both directions normal IQ (see the module docstring)


def downlink_start_ms(uplink_end_ms: float) -> float:
    """When a gateway should start transmitting the answer to an uplink that ended at ``uplink_end_ms``."""
    return uplink_end_ms + RX1_DELAY_MS + TX_OFFSET_MS


@dataclass(frozen=True, slots=True)
class ChannelDefaults:
    freq_hz: int
    sf: int
    bw_khz: int
    tx_power_dbm: int


# One channel per region for uplinks and their downlinks, the node firmware's defaults
# (firmware/config.py REGIONS): EU868 869.525 MHz lies in ETSI sub-band g3 (10 % duty cycle, up to
# 500 mW ERP), so a gateway can acknowledge alarms often; CN470 470.3 MHz is the first CN470 uplink
# channel, 17 dBm being the SRRC limit (50 mW ERP). SF9/125 kHz carries the whole 51-byte frame budget.
REGION_DEFAULTS: dict[str, ChannelDefaults] = {
    "EU868": ChannelDefaults(freq_hz=869_525_000, sf=9, bw_khz=125, tx_power_dbm=14),
    "CN470": ChannelDefaults(freq_hz=470_300_000, sf=9, bw_khz=125, tx_power_dbm=17),
}


_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}


def options_from_table(cls: type[_T], table: Mapping[str, object], **overrides: object) -> _T:
    """Build the config dataclass ``cls`` from a config-file table.

    Every key must be a field of ``cls`` (a misspelt option is an error, not a silent default); values
    are type-checked against the field annotations (``int``, ``float``, ``str``, ``bool``, optionally
    ``| None``). Problems raise :class:`ValueError` whose message starts with the offending key; the
    dataclass's own ``__post_init__`` checks ranges the same way.
    """
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for key in table:
        if key not in names:
            raise ValueError(f"{key}: unknown option (known: {', '.join(sorted(names))})")
    kwargs: dict[str, object] = dict(overrides)
    for name, f in names.items():
        required = f.default is MISSING and f.default_factory is MISSING
        if required and name not in table and name not in kwargs:
            raise ValueError(f"{name}: required option missing")
    for key, value in table.items():
        annotation = str(names[key].type).replace(" ", "")
        optional = annotation.endswith("|None")
        base = annotation.removesuffix("|None")
        allowed = _TYPES.get(base)
        if allowed is None:
            raise ValueError(f"{key}: not settable from the config file")
        if value is None and optional:
            kwargs[key] = None
            continue
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise ValueError(f"{key}: expected {base}, got {type(value).__name__}")
        kwargs[key] = float(value) if base == "float" else value  # type: ignore[arg-type]
    return cls(**kwargs)
