"""The human side of the schema registry: every kind and field with its name, unit, scale and range.

This is the one table contributors edit. Nodes never load it: `protocols/schema.py` carries the same data
packed into bytes (names only live here, for docs and JSON rendering), generated from this table by
`python -m lifeline.tools.gen_docs`; a test fails when the two differ. CPython code reaches everything here
through `lifeline.protocols.schema` as before (schema re-exports it).

A field is (key, name, unit, scale, lo, hi, vtype, required):
  key      CBOR map key on the wire (1..23, so every key costs one byte)
  name     human name, used only in docs and JSON rendering
  unit     physical unit of the *scaled* value ("" for enums, counts and flags)
  scale    wire integer = physical value * scale (e.g. 0.1 degC -> scale 10)
  lo, hi   inclusive range of the wire integer
  vtype    T_INT (CBOR integer) or T_BYTES (CBOR byte string; lo/hi bound its length)
  required the decoder rejects a body without it (missing_field)
A kind is (name, data_class, priority, fields).
"""

from __future__ import annotations

from typing import Any

# The same numbers as the constants in schema.py (a test checks); literal here so that this module does
# not import schema (schema imports this module).
PUBLIC, INTERNAL, SENSITIVE, CORE = 0, 1, 2, 3
P_ALARM, P_EVENT, P_PERIODIC = 0, 1, 2
T_INT, T_BYTES = 0, 1
U32 = 4294967295
I32_LO = -2147483648
I32_HI = 2147483647
K_SMOKE, K_TILT, K_WATER_LEVEL, K_WATER_METER, K_GAS_METER = 1, 2, 3, 4, 5
K_ELECTRICITY_METER, K_HEARTBEAT, K_FAULT, K_ALARM_RAISED, K_ALARM_CLEARED = 6, 7, 8, 9, 10
K_REKEY_CONFIRM = 11
C_ACK, C_CONFIG, C_TIME_SYNC, C_MAINTENANCE, C_OTA_BEGIN, C_OTA_CHUNK = 64, 65, 66, 67, 68, 69
C_REKEY = 70

# Kinds a node meets rarely (the over-the-air re-key): packed into protocols/rekey.py, which a node
# imports only when such a frame occurs (schema.info), so a wake's heap barely grows (the tilt node had ~128
# bytes of headroom under its 40 KiB budget).
LAZY = (K_REKEY_CONFIRM, C_REKEY)

CLASS_NAMES = ("public", "internal", "sensitive", "core")
PRIORITY_NAMES = ("alarm", "event", "periodic")
RESET_CAUSES = ("power_on", "hard", "watchdog", "deep_sleep", "soft", "brownout", "panic", "unknown")
BATTERY = (15, "battery", "mV", 1, 0, 4500, T_INT, False)

METER_FLAGS = ("leak", "reverse_flow", "tamper", "low_battery", "valve_closed")

KINDS: dict[int, tuple[Any, ...]] = {
    K_SMOKE: ("smoke", SENSITIVE, P_PERIODIC, (
        (1, "alarm_state", "", 1, 0, 3, T_INT, True),       # 0 normal, 1 pre-alarm, 2 alarm, 3 hushed
        (2, "obscuration", "%/m", 100, 0, 2000, T_INT, False),
        (3, "chamber", "", 1, 0, 3, T_INT, False),          # 0 ok, 1 fault, 2 drift, 3 dirty
        (4, "self_test", "", 1, 0, 2, T_INT, False),        # 0 none, 1 pass, 2 fail
        (5, "temperature", "degC", 10, -400, 1250, T_INT, False),
        BATTERY,
    )),
    K_TILT: ("manhole_tilt", INTERNAL, P_PERIODIC, (
        (1, "angle", "deg", 10, 0, 1800, T_INT, True),      # from the installed baseline
        (2, "cover_state", "", 1, 0, 3, T_INT, True),       # 0 closed, 1 open, 2 displaced, 3 flooded
        (3, "motion_count", "", 1, 0, 65535, T_INT, False),
        (5, "temperature", "degC", 10, -400, 1250, T_INT, False),
        BATTERY,
    )),
    K_WATER_LEVEL: ("water_level", PUBLIC, P_PERIODIC, (
        (1, "level", "mm", 1, 0, 20000, T_INT, True),
        (2, "rate", "mm/h", 1, -20000, 20000, T_INT, False),
        (3, "sensor_fault", "", 1, 0, 3, T_INT, False),     # 0 ok, 1 blocked, 2 no echo, 3 out of range
        BATTERY,
    )),
    K_WATER_METER: ("water_meter", SENSITIVE, P_PERIODIC, (
        (1, "index", "L", 1, 0, U32, T_INT, True),          # cumulative, 1 L = 0.001 m3
        (2, "flow", "L/h", 1, 0, 100000, T_INT, False),
        (3, "flags", "", 1, 0, 31, T_INT, False),           # bits: METER_FLAGS
        BATTERY,
    )),
    K_GAS_METER: ("gas_meter", SENSITIVE, P_PERIODIC, (
        (1, "index", "L", 1, 0, U32, T_INT, True),          # cumulative, 1 L = 0.001 m3
        (2, "flow", "L/h", 1, 0, 100000, T_INT, False),
        (3, "flags", "", 1, 0, 31, T_INT, False),
        BATTERY,
    )),
    K_ELECTRICITY_METER: ("electricity_meter", SENSITIVE, P_PERIODIC, (
        (1, "index", "Wh", 1, 0, U32, T_INT, True),         # cumulative import, 1 Wh = 0.001 kWh
        (2, "power", "W", 1, -100000, 100000, T_INT, False),  # negative = export / reverse
        (3, "flags", "", 1, 0, 31, T_INT, False),
        (4, "voltage", "V", 10, 0, 3000, T_INT, False),
    )),
    K_HEARTBEAT: ("heartbeat", INTERNAL, P_PERIODIC, (
        (1, "uptime", "h", 1, 0, 65535, T_INT, True),
        (2, "reset_cause", "", 1, 0, 7, T_INT, False),      # RESET_CAUSES
        (3, "firmware", "", 1, 0, 65535, T_INT, False),     # build number
        (4, "rssi", "dBm", 1, -150, 0, T_INT, False),       # of the last downlink heard
        (5, "snr", "dB", 1, -30, 30, T_INT, False),
        (6, "queue_depth", "", 1, 0, 255, T_INT, False),
        BATTERY,
    )),
    K_FAULT: ("fault", INTERNAL, P_EVENT, (
        (1, "code", "", 1, 0, 255, T_INT, True),            # FAULT_CODES
        (2, "detail", "", 1, 0, 65535, T_INT, False),
        BATTERY,
    )),
    K_ALARM_RAISED: ("alarm_raised", CORE, P_ALARM, (
        (1, "alarm_id", "", 1, 0, 65535, T_INT, True),
        (2, "cause", "", 1, 0, 15, T_INT, True),            # ALARM_CAUSES
        (3, "value", "", 1, I32_LO, I32_HI, T_INT, False),  # triggering reading, in its field's scale
    )),
    K_ALARM_CLEARED: ("alarm_cleared", CORE, P_ALARM, (
        (1, "alarm_id", "", 1, 0, 65535, T_INT, True),
        (2, "cause", "", 1, 0, 15, T_INT, True),
        (3, "value", "", 1, I32_LO, I32_HI, T_INT, False),
    )),
    # the counter-reset handshake of an over-the-air re-key (docs/keys.md): sent under the *pending* keys
    # with frame counter 1; sensitive so it is always encrypted
    K_REKEY_CONFIRM: ("rekey_confirm", SENSITIVE, P_EVENT, (
        (1, "epoch", "", 1, 1, 65535, T_INT, True),         # the key epoch the node switches to
    )),
    # ---- downlink commands ----
    C_ACK: ("ack", INTERNAL, P_EVENT, (
        (1, "acked_fcnt", "", 1, 0, U32, T_INT, True),
        (2, "alarm_id", "", 1, 0, 65535, T_INT, False),
        (3, "alarm_state", "", 1, 0, 3, T_INT, False),      # 0 received by gateway, 1 platform ack, 2 handled, 3 closed
    )),
    C_CONFIG: ("config", INTERNAL, P_EVENT, (
        (1, "config_version", "", 1, 0, 65535, T_INT, True),
        (2, "interval", "s", 1, 10, 65535, T_INT, False),
        (3, "threshold_high", "", 1, 0, 65535, T_INT, False),  # main field's scale
        (4, "threshold_low", "", 1, 0, 65535, T_INT, False),   # clear level (hysteresis)
        (5, "heartbeat", "min", 1, 1, 10080, T_INT, False),
        (6, "confirm_count", "", 1, 1, 10, T_INT, False),
    )),
    C_TIME_SYNC: ("time_sync", INTERNAL, P_EVENT, (
        (1, "time", "s", 1, 0, U32, T_INT, True),           # Lifeline epoch seconds
    )),
    C_MAINTENANCE: ("maintenance", INTERNAL, P_EVENT, (
        (1, "duration", "s", 1, 0, 7200, T_INT, True),      # stay awake this long
        (2, "reason", "", 1, 0, 3, T_INT, False),           # 0 service, 1 ota, 2 diagnostics
    )),
    C_OTA_BEGIN: ("ota_begin", INTERNAL, P_EVENT, (
        (1, "version", "", 1, 0, 65535, T_INT, True),
        (2, "size", "B", 1, 1, 1048576, T_INT, True),
        (3, "chunks", "", 1, 1, 65536, T_INT, True),
    )),
    C_OTA_CHUNK: ("ota_chunk", INTERNAL, P_EVENT, (
        (1, "index", "", 1, 0, 65535, T_INT, True),
        (2, "data", "B", 1, 1, 16, T_BYTES, True),          # lo/hi bound the length
    )),
    # over-the-air re-key (docs/keys.md): sensitive, so a clear one is refused (not_encrypted)
    C_REKEY: ("rekey", SENSITIVE, P_EVENT, (
        (1, "epoch", "", 1, 1, 65535, T_INT, True),         # the new key epoch (current + 1)
        (2, "seed", "B", 1, 16, 16, T_BYTES, True),         # KDF input; never in clear on air
    )),
}

FAULT_CODES = {1: "sensor", 2: "radio", 3: "storage", 4: "low_battery", 5: "config", 6: "boot_loop",
               7: "ota_rollback", 8: "clock"}
ALARM_CAUSES = ("smoke", "cover_open", "cover_displaced", "flood", "leak", "reverse_flow", "tamper",
                "heat", "test")

ENUMS: dict[str, tuple[str, ...]] = {
    "alarm_state": ("normal", "pre_alarm", "alarm", "hushed"),
    "chamber": ("ok", "fault", "drift", "dirty"),
    "self_test": ("none", "pass", "fail"),
    "cover_state": ("closed", "open", "displaced", "flooded"),
    "sensor_fault": ("ok", "blocked", "no_echo", "out_of_range"),
    "reset_cause": RESET_CAUSES,
    "cause": ALARM_CAUSES,
    "reason": ("service", "ota", "diagnostics", "other"),
}


def kind(kind_id: int) -> tuple[Any, ...] | None:
    """Return the kind tuple or None."""
    return KINDS.get(kind_id)


def field(kind_id: int, key: int) -> tuple[Any, ...] | None:
    k = KINDS.get(kind_id)
    if k is None:
        return None
    fields: tuple[tuple[Any, ...], ...] = k[3]
    for f in fields:
        if f[0] == key:
            return f
    return None


def kind_id_by_name(name: str) -> int | None:
    for kid, k in KINDS.items():
        if k[0] == name:
            return int(kid)
    return None


_BIAS = 1 << 39  # lo/hi are stored as unsigned 40-bit values offset by this


def packed() -> dict[int, tuple[int, int, bytes]]:
    """The device form of KINDS: kind -> (data class, priority, fields packed 12 bytes each:
    key, flags (bit0 bytes-typed, bit1 required), lo + 2**39 (5 bytes BE), hi + 2**39 (5 bytes BE))."""
    out = {}
    for kind_id, (_name, data_class, priority, fields) in sorted(KINDS.items()):
        blob = b"".join(
            bytes((key, (1 if vtype == T_BYTES else 0) | (2 if required else 0)))
            + (lo + _BIAS).to_bytes(5, "big") + (hi + _BIAS).to_bytes(5, "big")
            for key, _n, _u, _s, lo, hi, vtype, required in fields)
        out[kind_id] = (data_class, priority, blob)
    return out


def packed_source(lazy: bool = False) -> str:
    """Python source of schema.py's _PACKED literal (``lazy``: rekey.py's, the LAZY kinds)."""
    lines = ["_PACKED = {"]
    for kind_id, (data_class, priority, blob) in packed().items():
        if (kind_id in LAZY) != lazy:
            continue
        lines.append(f"    {kind_id}: ({data_class}, {priority},  # {KINDS[kind_id][0]}")
        for off in range(0, len(blob), 12):
            end = ")," if off + 12 >= len(blob) else ""
            lines.append(f"        {blob[off:off + 12]!r}{end}  # {KINDS[kind_id][3][off // 12][1]}")
    lines.append("}")
    return "\n".join(lines) + "\n"
