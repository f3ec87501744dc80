# Lifeline schema registry, device side. MicroPython subset.
#
# The human table (names, units, scales, ranges) is protocols/schema_table.py, which nodes never load.
# A node carries the same registry packed into bytes (_PACKED, generated from that table by
# `python -m lifeline.tools.gen_docs`; a test keeps them equal), which costs about a tenth of the RAM.
# On CPython this module also re-exports the table (KINDS, ENUMS, kind(), field(), ...), so gateway and
# tools code reads the full registry from here.

try:
    from micropython import const  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # CPython

    def const(x: int) -> int:  # type: ignore[misc, unused-ignore]
        return x

# Data classification carried into every gateway record.
PUBLIC = const(0)
INTERNAL = const(1)
SENSITIVE = const(2)
CORE = const(3)

# Gateway buffer priority of a kind (a smoke report in alarm state is raised to ALARM by the gateway).
P_ALARM = const(0)
P_EVENT = const(1)
P_PERIODIC = const(2)

T_INT = const(0)
T_BYTES = const(1)

U32 = 4294967295
I32_LO = -2147483648
I32_HI = 2147483647

# Uplink report kinds (1..63)
K_SMOKE = const(1)
K_TILT = const(2)
K_WATER_LEVEL = const(3)
K_WATER_METER = const(4)
K_GAS_METER = const(5)
K_ELECTRICITY_METER = const(6)
K_HEARTBEAT = const(7)
K_FAULT = const(8)
K_ALARM_RAISED = const(9)
K_ALARM_CLEARED = const(10)

# Downlink command kinds (64..127)
C_ACK = const(64)
C_CONFIG = const(65)
C_TIME_SYNC = const(66)
C_MAINTENANCE = const(67)
C_OTA_BEGIN = const(68)
C_OTA_CHUNK = const(69)

RESET_CAUSES = ("power_on", "hard", "watchdog", "deep_sleep", "soft", "brownout", "panic", "unknown")

# packed:begin (generated from schema_table.KINDS by `python -m lifeline.tools.gen_docs`; do not edit)
_PACKED = {
    1: (2, 2,  # smoke
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\x00\x03'  # alarm_state
        b'\x02\x00\x80\x00\x00\x00\x00\x80\x00\x00\x07\xd0'  # obscuration
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x03'  # chamber
        b'\x04\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x02'  # self_test
        b'\x05\x00\x7f\xff\xff\xfep\x80\x00\x00\x04\xe2'  # temperature
        b'\x0f\x00\x80\x00\x00\x00\x00\x80\x00\x00\x11\x94'),  # battery
    2: (1, 2,  # manhole_tilt
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\x07\x08'  # angle
        b'\x02\x02\x80\x00\x00\x00\x00\x80\x00\x00\x00\x03'  # cover_state
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # motion_count
        b'\x05\x00\x7f\xff\xff\xfep\x80\x00\x00\x04\xe2'  # temperature
        b'\x0f\x00\x80\x00\x00\x00\x00\x80\x00\x00\x11\x94'),  # battery
    3: (0, 2,  # water_level
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00N '  # level
        b'\x02\x00\x7f\xff\xff\xb1\xe0\x80\x00\x00N '  # rate
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x03'  # sensor_fault
        b'\x0f\x00\x80\x00\x00\x00\x00\x80\x00\x00\x11\x94'),  # battery
    4: (2, 2,  # water_meter
        b'\x01\x02\x80\x00\x00\x00\x00\x80\xff\xff\xff\xff'  # index
        b'\x02\x00\x80\x00\x00\x00\x00\x80\x00\x01\x86\xa0'  # flow
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x1f'  # flags
        b'\x0f\x00\x80\x00\x00\x00\x00\x80\x00\x00\x11\x94'),  # battery
    5: (2, 2,  # gas_meter
        b'\x01\x02\x80\x00\x00\x00\x00\x80\xff\xff\xff\xff'  # index
        b'\x02\x00\x80\x00\x00\x00\x00\x80\x00\x01\x86\xa0'  # flow
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x1f'  # flags
        b'\x0f\x00\x80\x00\x00\x00\x00\x80\x00\x00\x11\x94'),  # battery
    6: (2, 2,  # electricity_meter
        b'\x01\x02\x80\x00\x00\x00\x00\x80\xff\xff\xff\xff'  # index
        b'\x02\x00\x7f\xff\xfey`\x80\x00\x01\x86\xa0'  # power
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x1f'  # flags
        b'\x04\x00\x80\x00\x00\x00\x00\x80\x00\x00\x0b\xb8'),  # voltage
    7: (1, 2,  # heartbeat
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # uptime
        b'\x02\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x07'  # reset_cause
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # firmware
        b'\x04\x00\x7f\xff\xff\xffj\x80\x00\x00\x00\x00'  # rssi
        b'\x05\x00\x7f\xff\xff\xff\xe2\x80\x00\x00\x00\x1e'  # snr
        b'\x06\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\xff'  # queue_depth
        b'\x0f\x00\x80\x00\x00\x00\x00\x80\x00\x00\x11\x94'),  # battery
    8: (1, 1,  # fault
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\x00\xff'  # code
        b'\x02\x00\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # detail
        b'\x0f\x00\x80\x00\x00\x00\x00\x80\x00\x00\x11\x94'),  # battery
    9: (3, 0,  # alarm_raised
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # alarm_id
        b'\x02\x02\x80\x00\x00\x00\x00\x80\x00\x00\x00\x0f'  # cause
        b'\x03\x00\x7f\x80\x00\x00\x00\x80\x7f\xff\xff\xff'),  # value
    10: (3, 0,  # alarm_cleared
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # alarm_id
        b'\x02\x02\x80\x00\x00\x00\x00\x80\x00\x00\x00\x0f'  # cause
        b'\x03\x00\x7f\x80\x00\x00\x00\x80\x7f\xff\xff\xff'),  # value
    64: (1, 1,  # ack
        b'\x01\x02\x80\x00\x00\x00\x00\x80\xff\xff\xff\xff'  # acked_fcnt
        b'\x02\x00\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # alarm_id
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x03'),  # alarm_state
    65: (1, 1,  # config
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # config_version
        b'\x02\x00\x80\x00\x00\x00\n\x80\x00\x00\xff\xff'  # interval
        b'\x03\x00\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # threshold_high
        b'\x04\x00\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # threshold_low
        b"\x05\x00\x80\x00\x00\x00\x01\x80\x00\x00'`"  # heartbeat
        b'\x06\x00\x80\x00\x00\x00\x01\x80\x00\x00\x00\n'),  # confirm_count
    66: (1, 1,  # time_sync
        b'\x01\x02\x80\x00\x00\x00\x00\x80\xff\xff\xff\xff'),  # time
    67: (1, 1,  # maintenance
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\x1c '  # duration
        b'\x02\x00\x80\x00\x00\x00\x00\x80\x00\x00\x00\x03'),  # reason
    68: (1, 1,  # ota_begin
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # version
        b'\x02\x02\x80\x00\x00\x00\x01\x80\x00\x10\x00\x00'  # size
        b'\x03\x02\x80\x00\x00\x00\x01\x80\x00\x01\x00\x00'),  # chunks
    69: (1, 1,  # ota_chunk
        b'\x01\x02\x80\x00\x00\x00\x00\x80\x00\x00\xff\xff'  # index
        b'\x02\x03\x80\x00\x00\x00\x01\x80\x00\x00\x00\x10'),  # data
}
# packed:end

_BIAS = 1 << 39


def is_downlink_kind(kind_id: int) -> bool:
    return 64 <= kind_id <= 127


def info(kind_id: int) -> tuple | None:  # type: ignore[type-arg]
    """(data class, priority, packed fields) of a kind, or None if the registry has no such kind."""
    p = _PACKED.get(kind_id)
    # schema_table.LAZY (the re-key kinds) are packed in rekey.py, loaded only when such a kind occurs
    # (a literal and reused names: every new name here costs a wake's heap on every node)
    if p is None and kind_id in (11, 70):
        from . import rekey

        p = rekey._PACKED.get(kind_id)
    return p


def spec(packed: bytes, key: int) -> int:
    """Offset of field ``key`` in a kind's packed fields, or -1."""
    for off in range(0, len(packed), 12):
        if packed[off] == key:
            return off
    return -1


def lo_hi(packed: bytes, off: int) -> tuple:  # type: ignore[type-arg]
    return (int.from_bytes(packed[off + 2 : off + 7], "big") - _BIAS,
            int.from_bytes(packed[off + 7 : off + 12], "big") - _BIAS)


try:  # CPython: the human table as well (nodes do not carry it)
    from . import schema_table as _table
except ImportError:
    _table = None  # type: ignore[assignment]
if _table is not None:
    ALARM_CAUSES = _table.ALARM_CAUSES
    BATTERY = _table.BATTERY
    CLASS_NAMES = _table.CLASS_NAMES
    ENUMS = _table.ENUMS
    FAULT_CODES = _table.FAULT_CODES
    KINDS = _table.KINDS
    METER_FLAGS = _table.METER_FLAGS
    PRIORITY_NAMES = _table.PRIORITY_NAMES
    field = _table.field
    kind = _table.kind
    kind_id_by_name = _table.kind_id_by_name
