"""The PostgreSQL store against a real PostgreSQL (initdb'd per test by the ``pg_server`` fixture)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lifeline.protocols import batch, schema
from lifeline.tools.broker import MosquittoBroker
from lifeline.tools.pgserver import PgServer
from lifeline.tools.platform import pg_store
from lifeline.tools.platform.pg_store import DAY_MS, DeviceRow, PgStore
from lifeline.tools.platform.store import StoreUnavailable, open_store

DEV = [bytes.fromhex(f"70b3d500000000{i:02x}") for i in range(6)]
T0 = 1_790_000_000_000  # 2026-09-21
NOW = T0 + 5_000


class Gw:
    """Signs batches like a gateway (Ed25519, hash chain) and verifies them like the sink does."""

    def __init__(self, gw_id: str) -> None:
        self.id = gw_id
        self.key = Ed25519PrivateKey.generate()
        self.signer = batch.BatchSigner(self.key, gw_id)

    def batch(self, records: list[batch.BatchRecord], lane: int = batch.LANE_LIVE) -> tuple[batch.Batch, bytes]:
        sb = self.signer.sign(records, lane, T0)
        return batch.verify(sb.data, self.key.public_key()), sb.data


def reading(dev: bytes, fcnt: int, rx_ms: int | None = None, kind: int = schema.K_WATER_LEVEL,
            fields: dict[int, int | bytes] | None = None) -> batch.BatchRecord:
    rx = T0 + fcnt * 1000 if rx_ms is None else rx_ms
    return batch.BatchRecord(device_id=dev, fcnt=fcnt, node_time=100 + fcnt, rx_ms=rx, kind=kind,
                             fields=fields if fields is not None else {1: 100 + fcnt}, data_class=schema.PUBLIC,
                             receptions=(batch.WireReception("nbiot", "nb0", rx, None, None),))


def event(dev: bytes, seq: int, code: int, fields: dict[int, int | bytes]) -> batch.BatchRecord:
    return batch.BatchRecord(device_id=dev, fcnt=(1 << 32) + seq, node_time=0, rx_ms=T0 + seq, kind=code,
                             fields=fields, data_class=schema.PUBLIC, receptions=(), record_type=batch.RECORD_EVENT,
                             priority=schema.P_EVENT)


@pytest.fixture(params=pg_store.INSERT_METHODS)
def store(pg_server: PgServer, request: pytest.FixtureRequest) -> PgStore:
    s = PgStore(pg_server.url, method=request.param)
    request.addfinalizer(s.close)
    return s


def test_batches_are_stored_once_and_redelivery_changes_nothing(store: PgStore) -> None:
    gw = Gw("gw-1")
    b0, raw0 = gw.batch([reading(d, 1) for d in DEV[:3]])
    out = store.store_batch(b0, raw0, "s1", NOW)
    assert (out.redelivered, out.new_records, out.duplicate_records, out.broken_links) == (False, 3, 0, ())
    again = store.store_batch(b0, raw0, "s2", NOW)
    assert again.redelivered and again.new_records == 0
    b1, raw1 = gw.batch([reading(DEV[0], 1), reading(DEV[0], 2)])  # fcnt 1 already stored by batch 0
    out = store.store_batch(b1, raw1, "s1", NOW)
    assert (out.new_records, out.duplicate_records) == (1, 1)
    assert store.record_count() == 4 and store.batch_count() == 2
    assert [r.fcnt for r in store.records(DEV[0])] == [1, 2]
    r = store.records(DEV[0])[0]
    assert r.fields == {"level": {"value": 101, "unit": "mm"}} and r.gateway == "gw-1" and r.seq == 0
    (rep,) = store.chain_report()
    assert rep.intact and rep.highest == 1
    assert store.chain_state()["gw-1"] == {"highest": 1, "digest": b1.digest.hex(), "batches": 2, "missing": 0,
                                           "broken_links": 0, "equivocations": 0}


def test_the_same_reading_from_two_gateways_on_different_days_is_stored_once(store: PgStore) -> None:
    a, b = Gw("gw-a"), Gw("gw-b")
    late_night = (T0 // DAY_MS + 1) * DAY_MS - 1  # 23:59:59.999 on day N
    ba, rawa = a.batch([reading(DEV[0], 7, rx_ms=late_night)])
    bb, rawb = b.batch([reading(DEV[0], 7, rx_ms=late_night + 2)])  # heard 2 ms later: day N+1
    assert store.store_batch(ba, rawa, "s1", NOW).new_records == 1
    out = store.store_batch(bb, rawb, "s2", NOW)
    assert (out.new_records, out.duplicate_records) == (0, 1)
    assert store.record_keys() == [(DEV[0], 7)]
    assert pg_store.partition_name(late_night // DAY_MS + 1) in store.partitions()


def test_chain_gaps_broken_links_and_equivocations_are_recorded(store: PgStore) -> None:
    gw = Gw("gw-1")
    batches = [gw.batch([reading(DEV[0], i + 1)]) for i in range(4)]
    for i in (0, 2, 3):  # seq 1 missing
        store.store_batch(*batches[i], "s", NOW)
    assert store.chain_state()["gw-1"]["missing"] == 1
    (rep,) = store.chain_report()
    assert rep.gaps == ((1, 1),) and not rep.broken_links
    store.store_batch(*batches[1], "s", NOW)  # late: closes the gap
    assert store.chain_state()["gw-1"]["missing"] == 0 and store.chain_report()[0].intact
    # another history signed with the same key: seq 4 pointing at the wrong digest, and a second seq 2
    rogue = batch.BatchSigner(gw.key, "gw-1", next_seq=4, prev_hash=b"\x01" * 32)
    sb = rogue.sign([reading(DEV[1], 1)], batch.LANE_LIVE, T0)
    out = store.store_batch(batch.verify(sb.data, gw.key.public_key()), sb.data, "s", NOW)
    assert out.broken_links == ((3, 4),)
    twin = batch.BatchSigner(gw.key, "gw-1", next_seq=2, prev_hash=batches[1][0].digest)
    sb = twin.sign([reading(DEV[2], 1)], batch.LANE_LIVE, T0)
    out = store.store_batch(batch.verify(sb.data, gw.key.public_key()), sb.data, "s", NOW)
    assert out.broken_links == ((2, 3),)  # the twin is not what seq 3 names as its predecessor
    assert store.chain_breaks("gw-1") == [("gw-1", "broken_link", 3, 4), ("gw-1", "broken_link", 2, 3),
                                          ("gw-1", "equivocation", 2, 2)]
    (rep,) = store.chain_report()
    assert rep.broken_links == ((3, 4),) and rep.equivocations == (2,)
    st = store.chain_state()["gw-1"]
    assert (st["broken_links"], st["equivocations"], st["highest"], st["missing"]) == (2, 1, 4, 0)


def test_alarms_last_readings_devices_and_rule_events(store: PgStore) -> None:
    store.import_devices([DeviceRow(DEV[0], "water_level", "district-7"), DeviceRow(DEV[1], "smoke", "district-7"),
                          DeviceRow(DEV[2], "smoke", "district-9")], NOW)
    gw = Gw("gw-1")
    raise_ = reading(DEV[1], 10, kind=schema.K_ALARM_RAISED, fields={1: 5, 2: 1, 3: 100})
    store.store_batch(*gw.batch([reading(DEV[0], 1), reading(DEV[0], 3), reading(DEV[0], 2), raise_]), "s", NOW)
    (alarm,) = store.open_alarms()
    assert (alarm.device, alarm.alarm_id, alarm.cause, alarm.value, alarm.acked_ms) == (DEV[1], 5, 1, 100, None)
    acked = event(DEV[1], 1, pg_store.EV_ALARM, {pg_store.FAL_ID: 5, pg_store.FAL_STEP: 2})
    fired = event(DEV[1], 2, 64, {1: b"smoke-alarm", 2: 1})
    store.store_batch(*gw.batch([acked, fired]), "s", NOW)
    assert store.open_alarms()[0].acked_ms == T0 + 1
    assert store.rule_events("gw-1") == [("gw-1", DEV[1], 1, "alarm", None), ("gw-1", DEV[1], 2, "rule_fired",
                                                                            "smoke-alarm")]
    last = {r.device: r for r in store.last_readings("district-7")}
    assert set(last) == {DEV[0], DEV[1]}
    assert last[DEV[0]].fcnt == 3 and last[DEV[0]].fields == {"level": {"value": 103, "unit": "mm"}}
    # an older reading arriving late does not replace the newest; the clear closes the alarm
    clear = reading(DEV[1], 11, kind=schema.K_ALARM_CLEARED, fields={1: 5, 2: 1, 3: 0})
    store.store_batch(*gw.batch([reading(DEV[0], 0), clear]), "s", NOW)
    assert {r.device: r.fcnt for r in store.last_readings("district-7")}[DEV[0]] == 3
    assert store.open_alarms() == []
    # a raise older than the clear, delivered late from a backlog, does not reopen it
    store.store_batch(*gw.batch([reading(DEV[1], 9, kind=schema.K_ALARM_RAISED, fields={1: 5, 2: 1, 3: 1})]),
                      "s", NOW)
    assert store.open_alarms() == []
    assert [r.device for r in store.last_readings("district-9")] == [DEV[2]]
    assert store.last_readings("district-9")[0].fcnt is None  # a device without readings yet
    store.import_devices([DeviceRow(DEV[0], "water_level", "district-9")], NOW + 1)  # the device moved
    assert {r.device: r.fcnt for r in store.last_readings("district-9")} == {DEV[0]: 3, DEV[2]: None}
    assert [r.device for r in store.last_readings("district-7")] == [DEV[1]]


def _store_with_retry(s: PgStore, b: batch.Batch, raw: bytes, sink: str) -> bool:
    for _ in range(50):
        try:
            return not s.store_batch(b, raw, sink, NOW).redelivered
        except StoreUnavailable:  # a deadlock victim is rolled back whole and retried, like a sink does
            time.sleep(0.01)
    raise AssertionError("store kept failing")


def test_concurrent_sinks_store_every_key_once_and_keep_the_chains(pg_server: PgServer) -> None:
    gws = [Gw(f"gw-{i}") for i in range(4)]
    work: list[tuple[batch.Batch, bytes]] = []
    for g in gws:  # every gateway hears every device: each reading arrives in four batches
        for n in range(12):
            work.append(g.batch([reading(d, n * 5 + k) for d in DEV for k in range(5)]))
    stores = [PgStore(pg_server.url, method=m) for m in ("copy", "unnest", "copy", "unnest")]
    stored: list[int] = [0] * len(stores)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        mine = list(work) * 2  # each sink sees every batch twice (redelivery), in its own order
        random.Random(i).shuffle(mine)
        try:
            for b, raw in mine:
                stored[i] += _store_with_retry(stores[i], b, raw, f"sink-{i}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    s = stores[0]
    try:
        assert sum(stored) == len(work)  # each batch stored by exactly one sink
        keys = s.record_keys()
        assert len(keys) == len(set(keys)) == len(DEV) * 60
        assert s.batch_count() == len(work)
        for rep in s.chain_report():
            assert rep.intact and rep.batches == 12 and rep.highest == 11
        assert all(st["missing"] == 0 and st["batches"] == 12 for st in s.chain_state().values())
        assert {r.device: r.fcnt for r in s.last_readings("")} == {} and s.open_alarms() == []
        with psycopg.connect(pg_server.url) as c:
            assert c.execute("SELECT count(*) FROM reading_keys").fetchone() == (len(DEV) * 60,)
            last: dict[bytes, int] = dict(c.execute("SELECT device, fcnt FROM last_readings").fetchall())
        assert {bytes(k): v for k, v in last.items()} == {d: 59 for d in DEV}
    finally:
        for st in stores:
            st.close()


def test_migrate_upgrades_an_old_schema_with_data_in_place(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        assert pg_store.migrate(conn, target=1, now_ms=NOW) == [1]
        pg_store.ensure_partitions(conn, [T0 // DAY_MS])
        for fcnt, kind, fields in ((1, schema.K_WATER_LEVEL, {"level": 1}), (2, schema.K_WATER_LEVEL, {"level": 2}),
                                   (3, schema.K_ALARM_RAISED, {"alarm_id": 4})):
            conn.execute("INSERT INTO reading_keys VALUES (%s, %s, %s)", (DEV[0], fcnt, T0 + fcnt))
            conn.execute("INSERT INTO readings (device, fcnt, kind, node_time, rx_ms, gateway, seq, lane, flags, "
                         "priority, data_class, fields, stored_ms, sink) VALUES (%s,%s,%s,0,%s,'gw-old',0,0,0,3,0,"
                         "%s,0,'old')", (DEV[0], fcnt, kind, T0 + fcnt, json.dumps(fields)))
        assert pg_store.applied_versions(conn) == [1]
    r = subprocess.run([sys.executable, "-m", "lifeline.tools.cli", "platform-sink", "migrate", "--store",
                        pg_server.url, "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["from_version"] == 1 and out["applied"] == [2, 3] and out["version"] == pg_store.SCHEMA_VERSION
    s = PgStore(pg_server.url)
    try:
        assert s.schema_version() == pg_store.SCHEMA_VERSION
        with psycopg.connect(pg_server.url) as c:
            assert c.execute("SELECT fcnt FROM last_readings WHERE device=%s", (DEV[0],)).fetchone() == (3,)
        assert [(a.device, a.alarm_id) for a in s.open_alarms()] == [(DEV[0], 4)]
        gw = Gw("gw-new")  # the old keys still dedupe
        out2 = s.store_batch(*gw.batch([reading(DEV[0], 2), reading(DEV[0], 4)]), "new", NOW)
        assert (out2.new_records, out2.duplicate_records) == (1, 1)
    finally:
        s.close()
    r = subprocess.run([sys.executable, "-m", "lifeline.tools.cli", "platform-sink", "migrate", "--store",
                        pg_server.url, "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["applied"] == []  # idempotent


def test_retention_drops_whole_partitions_and_their_keys(store: PgStore) -> None:
    gw = Gw("gw-1")
    old_day, new_day = T0 // DAY_MS - 40, T0 // DAY_MS
    store.store_batch(*gw.batch([reading(DEV[0], 1, rx_ms=old_day * DAY_MS + 5),
                                 reading(DEV[0], 2, rx_ms=new_day * DAY_MS + 5)]), "s", NOW)
    dropped = store.drop_partitions_before((new_day - 30) * DAY_MS)
    assert pg_store.partition_name(old_day) in dropped and pg_store.partition_name(new_day) not in dropped
    assert store.record_keys() == [(DEV[0], 2)]


def test_devices_import_cli(pg_server: PgServer, tmp_path: Path) -> None:
    PgStore(pg_server.url).close()
    f = tmp_path / "records.jsonl"
    lines = [
        {"device_id": DEV[0].hex(), "root_key": "00" * 16, "kind": "water_level",
         "location": {"address": "Main St 1", "lat_udeg": 1, "lon_udeg": 2, "spatial_unit": "d-1"}},
        {"device_id": DEV[1].hex(), "root_key": "11" * 16, "kind": "smoke", "location": {"spatial_unit": "d-1"}},
        {"device_id": "zz", "kind": "smoke"},
        {"device_id": DEV[1].hex(), "revoked": True},
    ]
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    r = subprocess.run([sys.executable, "-m", "lifeline.tools.cli", "platform-sink", "devices", "import", "--store",
                        pg_server.url, str(f), "--json"], capture_output=True, text=True, timeout=60)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["imported"] == 1 and out["revoked"] == 0 and out["refused"] == 2
    assert any(":3: device_id" in p for p in out["problems"]) and any(":5: not JSON" in p for p in out["problems"])
    s = PgStore(pg_server.url)
    try:
        (row,) = s.last_readings("d-1")
        assert row.device == DEV[0]
        with psycopg.connect(pg_server.url) as c:
            cols = [r[0] for r in c.execute("SELECT column_name FROM information_schema.columns "
                                            "WHERE table_name='devices'").fetchall()]
        assert not any("key" in col for col in cols)  # root keys never reach the platform store
    finally:
        s.close()
    os.chmod(f, 0o644)
    r = subprocess.run([sys.executable, "-m", "lifeline.tools.cli", "platform-sink", "devices", "import", "--store",
                        pg_server.url, str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "chmod 600" in r.stderr and "Traceback" not in r.stderr


def test_a_restarted_server_is_reconnected_and_an_outage_is_transient(pg_server: PgServer) -> None:
    s = open_store(pg_server.url)
    assert isinstance(s, PgStore)
    try:
        gw = Gw("gw-1")
        s.store_batch(*gw.batch([reading(DEV[0], 1)]), "s", NOW)
        pg_server.stop(fast=True)
        b1 = gw.batch([reading(DEV[0], 2)])
        with pytest.raises(StoreUnavailable):
            s.store_batch(*b1, "s", NOW)
        pg_server.start()
        assert not s.store_batch(*b1, "s", NOW).redelivered  # nothing was half-stored
        assert s.counters["reconnects"] >= 1 and s.record_count() == 2
    finally:
        s.close()


def test_unreachable_store_and_password_not_shown(tmp_path: Path) -> None:
    from lifeline.tools.broker import free_port

    url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/x"
    with pytest.raises(StoreUnavailable) as ei:
        PgStore(url)
    assert "s3cret" not in str(ei.value) and "127.0.0.1" in str(ei.value)
    r = subprocess.run([sys.executable, "-m", "lifeline.tools.cli", "platform-sink", "migrate", "--store", url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "s3cret" not in r.stderr and "Traceback" not in r.stderr


def test_sink_cli_report_reads_a_postgresql_store(pg_server: PgServer) -> None:
    s = PgStore(pg_server.url)
    try:
        gw = Gw("gw-1")
        s.store_batch(*gw.batch([reading(DEV[0], 1)]), "s", NOW)
        s.store_batch(*gw.batch([reading(DEV[0], 3)]), "s", NOW)
        s.store_batch(*gw.batch([reading(DEV[0], 2)]), "s", NOW)
    finally:
        s.close()
    r = subprocess.run([sys.executable, "-m", "lifeline.tools.cli", "platform-sink", "--store", pg_server.url,
                        "--report", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["records"] == 3 and out["chains"][0]["intact"] and out["chains"][0]["batches"] == 3
    with psycopg.connect(pg_server.url, autocommit=True) as c:  # remove seq 1: a gap the report must show
        c.execute("DELETE FROM batches WHERE seq = 1")
    r = subprocess.run([sys.executable, "-m", "lifeline.tools.cli", "platform-sink", "--store", pg_server.url,
                        "--report"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "PROBLEM" in r.stdout and "gaps [(1, 1)]" in r.stdout


def test_values_the_schema_cannot_hold_are_refused_not_retried(store: PgStore, tmp_path: Path) -> None:
    from lifeline.tools.platform.sqlite_store import SqliteStore
    from lifeline.tools.platform.store import StoreError

    gw = Gw("gw-1")
    far = gw.batch([reading(DEV[0], 1, rx_ms=(1 << 64) - 1)])
    for s in (store, SqliteStore(tmp_path / "s.db")):
        with pytest.raises(StoreError) as ei:
            s.store_batch(*far, "s", NOW)
        assert not isinstance(ei.value, StoreUnavailable) and s.record_count() == 0 and s.batch_count() == 0


def test_three_sinks_share_the_batches_into_one_postgresql(pg_server: PgServer, mosquitto: MosquittoBroker) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from lifeline.tools.platform_sink import PlatformSink

    gws = [Gw(f"gw-{i}") for i in range(3)]
    trust = {g.id: g.key.public_key() for g in gws}
    sinks = [PlatformSink(mosquitto.host, mosquitto.port, store=pg_server.url, trust=trust,
                          client_id=f"sink-{i}").start() for i in range(3)]
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        sent = 0
        for n in range(20):
            for g in gws:  # every gateway hears the same two devices; every fifth batch is published twice
                recs = [reading(DEV[0], n + 1), reading(DEV[1], n + 1), reading(DEV[2 + int(g.id[-1])], n + 1)]
                sb = g.signer.sign(recs, batch.LANE_LIVE, T0)
                for _ in range(2 if n % 5 == 0 else 1):
                    info = pub.publish(f"lifeline/v1/{g.id}/up/live", sb.data, qos=1)
                    info.wait_for_publish(10)
                    sent += 1
        expected = 20 * (2 + len(gws))
        sinks[0].wait_for(lambda s: sum(x.counters["batches_stored"] + x.counters["batches_redelivered"]
                                        for x in sinks) == sent, 30, "every publish handled")
        keys = sinks[0].record_keys()
        assert len(keys) == len(set(keys)) == expected
        for d in DEV[:5]:
            assert sorted(r.fcnt for r in sinks[0].records(d)) == list(range(1, 21))
        assert sum(s.counters["batches_stored"] for s in sinks) == 60
        assert sum(s.counters["batches_redelivered"] for s in sinks) == sent - 60
        assert sum(s.counters["records_stored"] for s in sinks) == expected
        assert sum(1 for s in sinks if s.counters["batches_stored"]) >= 2  # the shared subscription split them
        assert all(r.intact and r.batches == 20 for r in sinks[0].chain_report())
    finally:
        pub.disconnect()
        pub.loop_stop()
        for s in sinks:
            s.stop()


def test_a_partition_dropped_by_another_process_is_created_again(pg_server: PgServer) -> None:
    a, b = PgStore(pg_server.url), PgStore(pg_server.url)
    try:
        gw = Gw("gw-1")
        old = T0 - 40 * DAY_MS
        a.store_batch(*gw.batch([reading(DEV[0], 1, rx_ms=old)]), "a", NOW)
        assert b.drop_partitions_before(T0 - 30 * DAY_MS) == [pg_store.partition_name(old // DAY_MS)]
        out = a.store_batch(*gw.batch([reading(DEV[0], 2, rx_ms=old + 1)]), "a", NOW)  # a still knew the day
        assert out.new_records == 1 and a.counters["partitions_recreated"] == 1
    finally:
        a.close()
        b.close()
