"""The node life cycle: queue when the link fails, safe mode, downlinks, heartbeat contents."""

from __future__ import annotations

import json
from typing import Any

from lifeline.firmware import txqueue
from lifeline.firmware.simnode import SimNode
from lifeline.protocols import frame, schema


class Fire:
    def __init__(self) -> None:
        self.pct = 0.0

    def adc(self, hal: Any, t: int) -> int:
        return 50_000 + (int(200_000 + self.pct * 60_000) if hal.pin("smoke_led", True).v else 0)


def test_alarm_is_sent_at_once_with_ack_and_the_buzzer_stops_escalating_on_ack() -> None:
    fire = Fire()
    sn = SimNode("smoke", providers={"smoke_adc": fire.adc})
    sn.cycle()
    fire.pct = 8.0
    for _ in range(4):
        sn.wake()
        loud = sn.hal.pin("buzzer_loud", True).v
        sn.sleep()
    alarms = [f for f in sn.decoded() if f.header.kind == schema.K_ALARM_RAISED]
    assert len(alarms) == 1
    a = alarms[0]
    assert a.header.flags & frame.FLAG_ACK_REQ and a.header.flags & frame.FLAG_ENC
    assert a.fields[2] == 0 and a.fields[3] >= 300
    assert sn.node.rtc.get("s")["bz"] == 1
    assert loud == 1  # awake and sounding for minutes without a platform acknowledgement: escalated
    # the platform acknowledges the alarm (alarm_state 1): it arrives with the next exchange
    sn.air.send_later(sn.dev_id, schema.C_ACK, {1: a.header.fcnt, 2: a.fields[1], 3: 1})
    for _ in range(6):
        sn.wake()
        if sn.node.rtc.get("s").get("bz_ack"):
            break
        sn.sleep()
    st = sn.node.rtc.get("s")
    assert st["bz_ack"] == 1 and st["bz"] == 1  # escalation stopped, the local alarm goes on
    assert sn.hal.pin("buzzer_loud", True).v == 0


def test_link_down_queues_readings_alarms_first_and_drains_oldest_first_with_queued_flag() -> None:
    fire = Fire()
    sn = SimNode("smoke", providers={"smoke_adc": fire.adc}, config_extra={"interval": 60})
    sn.cycle()
    sn.air.up = False
    fire.pct = 8.0
    for _ in range(60):  # the gateway is down for an hour: periodic reports and one alarm
        sn.wake()
        sn.sleep(60_000)
    q = txqueue.TxQueue(sn.hal.fs)
    # unacknowledged reports are blind: the link loss shows at the alarm (never acknowledged) and at the
    # link checks; from then on every reading is kept
    assert len(q) == txqueue.CAPACITY
    assert any(item[2] == schema.K_ALARM_RAISED for item in q.items)  # alarms survive the overflow
    assert q.dropped > 0
    sn.air.up = True
    n = len(sn.air.frames)
    for _ in range(10):
        sn.wake()
        sn.sleep(3_600_000)
    late = sn.decoded(sn.air.frames[n:])
    queued = [f for f in late if f.header.flags & frame.FLAG_QUEUED]
    assert queued and queued[0].header.time <= queued[-1].header.time
    assert schema.K_ALARM_RAISED in [f.header.kind for f in queued]
    assert len(txqueue.TxQueue(sn.hal.fs)) == 0


def test_queue_keeps_alarms_over_periodic() -> None:
    class Fs:
        def open(self, p: str, m: str = "rb") -> Any:
            raise OSError(2)

    q = txqueue.TxQueue(Fs(), capacity=3)
    q.push(txqueue.PRIO_ALARM, 1, 9, {1: 1, 2: 0}, True)
    q.push(txqueue.PRIO_PERIODIC, 2, 1, {1: 0}, False)
    q.push(txqueue.PRIO_PERIODIC, 3, 1, {1: 0}, False)
    q.push(txqueue.PRIO_ALARM, 4, 9, {1: 2, 2: 0}, True)  # full: the oldest periodic goes
    assert [i[1] for i in q.items] == [1, 3, 4]
    q.push(txqueue.PRIO_ALARM, 5, 9, {1: 3, 2: 0}, True)
    q.push(txqueue.PRIO_PERIODIC, 6, 1, {1: 0}, False)  # all alarms: a periodic reading is refused
    assert [i[0] for i in q.items] == [0, 0, 0]
    q.failed(100)
    q.failed(100)
    assert q.next_try == 100 + 120  # exponential backoff
    assert q.peek()[3] == {1: 1, 2: 0}


def test_invalid_config_is_safe_mode_not_a_crash() -> None:
    sn = SimNode("tilt")
    bad = dict(sn.config, interval="often", lora={"sf": 99})
    sn.write_config(bad)
    ms = sn.wake()
    assert sn.node.safe and ms == 3600 * 1000
    assert any(e.startswith("interval:") for e in sn.node.errors)
    assert any(e.startswith("lora.sf:") for e in sn.node.errors)
    assert not any(sn.config["root_key"] in e for e in sn.node.errors)
    assert sn.hal.ble().service is not None  # the maintenance service runs
    sn.write_config(b"{not json".decode() if False else None)  # restore
    sn.hal.fs.files["/config.json"] = b"{not json"
    sn.sleep()
    assert sn.wake() == 3600 * 1000 and sn.node.errors == ["config: not valid JSON"]


def test_boot_loop_enters_safe_mode_and_a_technician_can_release_it() -> None:
    sn = SimNode("tilt")
    sn.cycle()
    for _ in range(3):  # three crashes in a row (the boot never finished)
        sn.node.rtc.load()
        sn.node.rtc.set("bf", sn.node.rtc.get("bf", 0) + 1)
        sn.node.rtc.save()
    sn.hal.resume(2, "power", 1000)
    sn.wake()
    assert sn.node.safe
    faults = [f for f in sn.decoded() if f.header.kind == schema.K_FAULT]
    assert faults[-1].fields[1] == 6  # boot_loop
    # the technician, holding the device key, sends exit-safe over GATT
    from lifeline.firmware.radios import ble
    from lifeline.protocols import crypto

    m = sn.node.maint
    key = crypto.derive(sn.root_key, ble.LABEL_MAINT, sn.dev_id)
    assert m.on_write(ble.CHAR_COMMAND, b"exit-safe" + bytes(8)) == "rejected: bad tag"
    tag = crypto.hmac_sha256(key, m.challenge + b"exit-safe")[:8]
    assert m.on_write(ble.CHAR_COMMAND, b"exit-safe" + tag) == "ok"
    assert m.on_write(ble.CHAR_COMMAND, b"exit-safe" + tag) == "rejected: bad tag"  # no replay
    sn.sleep()
    sn.wake()
    assert not sn.node.safe


def test_heartbeat_carries_reset_cause_firmware_and_queue_depth() -> None:
    sn = SimNode("tilt", config_extra={"heartbeat": 3600})
    sn.cycle()
    sn.hal.resume(2, "power", 1000)  # watchdog reset
    sn.wake()
    sn.sleep(3_600_000)
    sn.wake()
    hb = [f for f in sn.decoded() if f.header.kind == schema.K_HEARTBEAT]
    assert hb[0].fields[2] == 0  # power on
    assert hb[-1].fields[2] == 2 and hb[-1].fields[3] == 100 and hb[-1].fields[6] == 0
    assert hb[-1].fields[1] >= 1  # uptime (hours) continues across deep sleep and the watchdog reset
    assert hb[-1].fields[5] == 7 and hb[-1].fields[4] == -90  # link quality of the last downlink


def test_low_battery_is_reported_once() -> None:
    sn = SimNode("tilt")
    sn.hal.battery = 3100
    for _ in range(3):
        sn.cycle()
    faults = [f for f in sn.decoded() if f.header.kind == schema.K_FAULT]
    assert [f.fields[1] for f in faults] == [4]
    assert faults[0].fields[2] == 3100


def test_downlinks_time_sync_config_and_replay() -> None:
    sn = SimNode("tilt")
    sn.air.clock_s = lambda: 200_000_000
    sn.air.send_later(sn.dev_id, schema.C_TIME_SYNC, {1: 200_000_000})
    sn.cycle()
    assert sn.node.rtc.get("ts") == 1 and sn.hal.time() >= 200_000_000
    sn.air.send_later(sn.dev_id, schema.C_CONFIG, {1: 3, 2: 300, 3: 150})
    sn.cycle()
    sn.cycle()
    saved = json.loads(sn.hal.fs.files["/config.json"])
    assert saved["config_version"] == 3 and saved["interval"] == 300 and saved["thresholds"]["high"] == 150
    assert sn.last_sleep_ms <= 300_000
    # an old version is ignored; a replayed downlink (same counter) is rejected
    replay = sn.air.downlink(sn.dev_id, schema.C_CONFIG, {1: 2, 2: 60})
    sn.air.send_later(sn.dev_id, schema.C_CONFIG, {1: 2, 2: 60})
    sn.cycle()
    assert json.loads(sn.hal.fs.files["/config.json"])["interval"] == 300
    sn.air.pending[sn.dev_id] = []
    orig = sn.air.uplink
    sn.air.uplink = lambda hal, p, params: (orig(hal, p, params), replay)[1]  # type: ignore[method-assign]
    sn.cycle()
    assert sn.node.rejected_downlinks >= 1
    later = [f for f in sn.decoded() if f.header.time >= 200_000_000]
    assert later  # uplinks carry the synchronised time


def test_config_validation_names_every_bad_field() -> None:
    from lifeline.firmware import confcheck
    from lifeline.firmware.simnode import config_for

    good = config_for("water_meter", "lora", bytes(8), bytes(32), {"sensor": {"litres_per_pulse": 10,
                                                                             "night": [1, 5],
                                                                             "quadrature": False}})
    assert confcheck.validate(good) == []
    bad = dict(good, device_id="xyz", kind="toaster", radio="smoke-signals", region="MARS",
               thresholds={"confirm": 99}, sensor={"night": [1], "clean_uv": "a lot", "colour": 3},
               ble={"extended": "yes"}, extra=1)
    errs = confcheck.validate(bad)
    for field in ("device_id:", "kind:", "radio:", "region:", "thresholds.confirm:", "sensor.night:",
                  "sensor.clean_uv:", "sensor.colour:", "ble.extended:", "extra:"):
        assert any(e.startswith(field) for e in errs), (field, errs)
    assert confcheck.validate([1, 2]) == ["config: must be a JSON object"]
