"""The registry is the single table of kinds and fields: check it is internally consistent."""

from __future__ import annotations

from lifeline.protocols import schema


def test_kind_ids_and_directions() -> None:
    for kind_id, k in schema.KINDS.items():
        assert 1 <= kind_id <= 127
        assert (kind_id >= 64) == schema.is_downlink_kind(kind_id), k[0]
        assert k[1] in (schema.PUBLIC, schema.INTERNAL, schema.SENSITIVE, schema.CORE)
        assert k[2] in (schema.P_ALARM, schema.P_EVENT, schema.P_PERIODIC)
    names = [k[0] for k in schema.KINDS.values()]
    assert len(names) == len(set(names))


def test_fields_are_one_byte_keys_with_sane_ranges() -> None:
    for k in schema.KINDS.values():
        keys = [f[0] for f in k[3]]
        assert len(keys) == len(set(keys)), k[0]
        assert any(f[7] for f in k[3]), k[0] + " has no required field"
        for key, name, _unit, scale, lo, hi, vtype, _req in k[3]:
            assert 1 <= key <= 23, (k[0], name)  # one CBOR byte per key
            assert lo <= hi and scale >= 1
            assert vtype in (schema.T_INT, schema.T_BYTES)
            if name in schema.ENUMS:
                assert hi < len(schema.ENUMS[name]) or name == "cause", (k[0], name)


def test_required_report_kinds_exist() -> None:
    want = {"smoke", "manhole_tilt", "water_level", "water_meter", "gas_meter", "electricity_meter", "heartbeat",
            "fault", "alarm_raised", "alarm_cleared", "ack", "config", "time_sync", "maintenance", "ota_chunk"}
    assert want <= {k[0] for k in schema.KINDS.values()}
    assert schema.kind_id_by_name("smoke") == schema.K_SMOKE
    assert schema.kind_id_by_name("nope") is None


def test_personal_data_is_classified_sensitive_or_core() -> None:
    for kind in (schema.K_SMOKE, schema.K_WATER_METER, schema.K_GAS_METER, schema.K_ELECTRICITY_METER,
                 schema.K_ALARM_RAISED):
        assert schema.KINDS[kind][1] >= schema.SENSITIVE


def test_packed_device_registry_is_generated_from_the_table() -> None:
    from lifeline.protocols import rekey, schema_table
    from lifeline.tools import gen_docs

    assert schema_table.packed() == {**schema._PACKED, **rekey._PACKED}, "run: python -m lifeline.tools.gen_docs"
    assert gen_docs.packed_block(gen_docs.SCHEMA.read_text()) == schema_table.packed_source()
    assert gen_docs.packed_block(gen_docs.SCHEMA_LAZY.read_text()) == schema_table.packed_source(lazy=True)
    assert schema_table.LAZY == (schema_table.K_REKEY_CONFIRM, schema_table.C_REKEY)
    assert "(11, 70)" in gen_docs.SCHEMA.read_text()  # schema.info's literal of the LAZY kinds
    for k in schema_table.LAZY:
        assert schema.info(k) == rekey._PACKED[k]
    assert set(rekey._PACKED) == set(schema_table.LAZY) and not set(schema._PACKED) & set(schema_table.LAZY)


def test_table_constants_match_the_device_constants() -> None:
    from lifeline.protocols import schema_table

    for name in ("PUBLIC", "INTERNAL", "SENSITIVE", "CORE", "P_ALARM", "P_EVENT", "P_PERIODIC", "T_INT", "T_BYTES",
                 "K_SMOKE", "K_TILT", "K_WATER_LEVEL", "K_WATER_METER", "K_GAS_METER", "K_ELECTRICITY_METER",
                 "K_HEARTBEAT", "K_FAULT", "K_ALARM_RAISED", "K_ALARM_CLEARED", "C_ACK", "C_CONFIG", "C_TIME_SYNC",
                 "C_MAINTENANCE", "C_OTA_BEGIN", "C_OTA_CHUNK", "U32", "I32_LO", "I32_HI", "RESET_CAUSES"):
        assert getattr(schema_table, name) == getattr(schema, name), name


def test_packed_accessors_agree_with_the_table() -> None:
    for kind_id, (_name, data_class, priority, fields) in schema.KINDS.items():
        info = schema.info(kind_id)
        assert info is not None and info[:2] == (data_class, priority)
        for f in fields:
            off = schema.spec(info[2], f[0])
            assert off >= 0 and schema.lo_hi(info[2], off) == (f[4], f[5])
        assert schema.spec(info[2], 99) == -1
    assert schema.info(42) is None
