"""The rule engine on its own: readings and an injected clock in, firings out (no I/O, no asyncio)."""

from __future__ import annotations

from lifeline.gateway import records as rec
from lifeline.gateway.alarms import AlarmTracker
from lifeline.gateway.ingress.base import Reception
from lifeline.gateway.priority import classify
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.engine import DeviceAttrs, Engine, Firing, Health
from lifeline.gateway.rules_engine.loader import load_texts
from lifeline.protocols import schema

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z (a Thursday)
MIN = 60_000
DEV = bytes.fromhex("70b3d57ed0000001")
DEV2 = bytes.fromhex("70b3d57ed0000002")
_ids = iter(range(1, 1 << 30))


def ruleset(text: str) -> m.RuleSet:
    return load_texts([("t.toml", 'timezone = "UTC"\n[outputs.lan]\ntype = "mqtt"\nhost = "h"\n' + text)])


def engine(text: str, **kw: object) -> Engine:
    return Engine(ruleset(text), start_ms=T0, **kw)  # type: ignore[arg-type]


def reading(kind: int, fields: dict[int, int], t: int, dev: bytes = DEV) -> rec.Reading:
    i = next(_ids)
    return rec.Reading(i, dev, i, 0, kind, fields, schema.KINDS[kind][1], classify(kind, fields), 0, 0,
                       (Reception("test", "t0", t),))


def feed(e: Engine, kind: int, fields: dict[int, int], t: int, dev: bytes = DEV) -> list[Firing]:
    res = e.evaluate(reading(kind, fields, t, dev))
    return [] if res is None else res[0]


def names(fs: list[Firing]) -> list[tuple[str, bool]]:
    return [(f.rule.name, f.fired) for f in fs]


PUMP = """
[[rule]]
name = "pump"
when = { type = "threshold", kind = "water_level", field = "level", above = 300, clear = 250, for = "2m" }
[[rule.action]]
type = "priority"
level = "alarm"
"""


def level(e: Engine, mm: int, t: int, dev: bytes = DEV) -> list[Firing]:
    return feed(e, schema.K_WATER_LEVEL, {1: mm, 15: 3300}, t, dev)


def test_threshold_fires_after_its_duration_and_clears_with_hysteresis() -> None:
    e = engine(PUMP)
    assert level(e, 310, T0) == []  # pending
    assert level(e, 330, T0 + MIN) == []
    assert e.tick(T0 + 2 * MIN - 1) == []
    fired = e.tick(T0 + 2 * MIN)  # the duration elapsed between readings: the tick fires it
    assert names(fired) == [("pump", True)] and fired[0].value == 330 and fired[0].device == DEV
    assert level(e, 400, T0 + 3 * MIN) == []  # active: repeated readings fire nothing
    assert level(e, 270, T0 + 4 * MIN) == []  # inside the hysteresis band: still on
    cleared = level(e, 250, T0 + 5 * MIN)
    assert names(cleared) == [("pump", False)] and cleared[0].reason == "hysteresis"
    assert e.active() == []


def test_a_dip_below_the_threshold_restarts_the_duration() -> None:
    e = engine(PUMP)
    level(e, 310, T0)
    level(e, 290, T0 + MIN)  # not above: pending dropped
    level(e, 320, T0 + 90_000)
    assert e.tick(T0 + 2 * MIN) == []
    assert names(level(e, 330, T0 + 90_000 + 2 * MIN)) == [("pump", True)]


def test_active_threshold_rule_raises_the_priority_of_the_devices_readings() -> None:
    e = engine(PUMP.replace('for = "2m"', 'for = "0s"'))
    res = e.evaluate(reading(schema.K_WATER_LEVEL, {1: 310}, T0))
    assert res is not None and res[1] == schema.P_ALARM
    res = e.evaluate(reading(schema.K_WATER_LEVEL, {1: 300}, T0 + 1))
    assert res is not None and res[1] == schema.P_ALARM  # in the band: still active
    assert e.evaluate(reading(schema.K_WATER_LEVEL, {1: 100}, T0 + 2, DEV2)) is None  # other device


SMOKE = """
[[rule]]
name = "siren"
cooldown = "10m"
when = { report = "smoke_alarm" }
"""


def smoke(e: Engine, state: int, t: int, dev: bytes = DEV) -> list[Firing]:
    return feed(e, schema.K_SMOKE, {1: state, 5: 215, 15: 3000}, t, dev)


def test_repeated_alarm_frames_fire_once_and_a_quick_refire_is_muted() -> None:
    e = engine(SMOKE)
    assert names(smoke(e, 2, T0)) == [("siren", True)]
    for i in range(1, 20):
        assert smoke(e, 2, T0 + i * 1000) == []  # no storm
    assert names(smoke(e, 0, T0 + MIN)) == [("siren", False)]
    again = smoke(e, 2, T0 + 2 * MIN)  # within the 10 min cooldown: reported, muted
    assert names(again) == [("siren", True)] and again[0].muted
    assert smoke(e, 0, T0 + 3 * MIN) == []  # a muted firing clears silently
    assert not smoke(e, 2, T0 + 13 * MIN)[0].muted
    assert names(smoke(e, 2, T0 + 13 * MIN, DEV2)) == [("siren", True)]  # per device


def test_momentary_reports_fire_per_reading_outside_the_cooldown() -> None:
    e = engine('[[rule]]\nname = "f"\ncooldown = "5m"\nwhen = { report = "fault" }\n')
    assert names(feed(e, schema.K_FAULT, {1: 2}, T0)) == [("f", True)]
    assert feed(e, schema.K_FAULT, {1: 2}, T0 + MIN) == []
    assert e.suppressed == 1
    assert names(feed(e, schema.K_FAULT, {1: 3}, T0 + 6 * MIN)) == [("f", True)]


def test_rate_of_rise() -> None:
    e = engine('[[rule]]\nname = "rise"\nwhen = { type = "rate", kind = "water_level", field = "level", '
               'rise = 100, per = "10m", window = "10m", min_span = "2m" }\n')
    assert level(e, 100, T0) == []
    assert level(e, 110, T0 + MIN) == []  # span below min_span
    assert level(e, 120, T0 + 2 * MIN) == []  # 20 mm in 2 min = 100 mm / 10 min: not above
    fired = level(e, 140, T0 + 3 * MIN)  # 40 mm in 3 min = 133 mm / 10 min
    assert names(fired) == [("rise", True)] and fired[0].value == 133
    assert level(e, 150, T0 + 4 * MIN) == []  # 50/4 min = 125: still rising fast
    assert names(level(e, 150, T0 + 12 * MIN)) == [("rise", False)]  # flat over the window


def test_battery_low_across_kinds_with_hysteresis() -> None:
    e = engine('[[rule]]\nname = "bat"\nwhen = { type = "battery_low", below = 2600, clear = 2800 }\n')
    assert names(feed(e, schema.K_HEARTBEAT, {1: 5, 15: 2550}, T0)) == [("bat", True)]
    assert feed(e, schema.K_HEARTBEAT, {1: 5, 15: 2700}, T0 + 1) == []
    assert names(feed(e, schema.K_SMOKE, {1: 0, 15: 2900}, T0 + 2)) == [("bat", False)]
    assert feed(e, schema.K_ELECTRICITY_METER, {1: 5}, T0 + 3) == []  # mains powered: no battery field


SILENT = '[[rule]]\nname = "offline"\nwhen = { type = "silent", intervals = 3, interval = "10m" }\n'


def test_silent_device_goes_offline_after_k_intervals_and_clears_when_heard() -> None:
    attrs = {DEV: DeviceAttrs("smoke"), DEV2: DeviceAttrs("smoke")}
    e = engine(SILENT, attrs=attrs)
    smoke(e, 0, T0 + 5 * MIN)
    assert e.tick(T0 + 30 * MIN - 1) == []
    first = e.tick(T0 + 30 * MIN)  # DEV2 never heard: counted from the engine's start
    assert [(f.rule.name, f.device) for f in first] == [("offline", DEV2)] and first[0].value == 1800
    assert e.tick(T0 + 35 * MIN - 1) == []
    second = e.tick(T0 + 35 * MIN)
    assert [f.device for f in second] == [DEV]
    assert e.tick(T0 + 60 * MIN) == []  # stays offline, fires once
    back = smoke(e, 0, T0 + 61 * MIN)
    assert names(back) == [("offline", False)] and back[0].reason == "returned" and back[0].device == DEV


FAILOVER = """
[failover]
grace = "60s"
restore = "5s"
[[rule]]
name = "down"
when = { type = "uplink_down" }
[[rule]]
name = "sms-while-down"
when = { report = "smoke_alarm" }
if = { uplink = "down" }
"""


def test_uplink_down_after_grace_and_restoring_ends_local_escalation() -> None:
    e = engine(FAILOVER)
    up, lost = Health(connected=True), Health(connected=False)
    assert e.tick(T0, up) == []
    assert e.tick(T0 + 1000, lost) == []
    assert names(smoke(e, 2, T0 + 2000)) == []  # platform only just lost: no local SMS yet
    assert e.tick(T0 + 60_999, lost) == []
    fired = e.tick(T0 + 61_000, lost)
    # the smoke alarm that was pending on the condition fires once the uplink counts as down
    assert sorted(names(fired)) == [("down", True), ("sms-while-down", True)] and e.uplink_down
    assert e.tick(T0 + 70_000, up) == []  # restore needs 5 s of health
    restored = e.tick(T0 + 75_000, up)
    assert sorted((f.rule.name, f.fired, f.reason) for f in restored) == [
        ("down", False, "uplink_restored"), ("sms-while-down", False, "uplink_restored")]
    assert next(f for f in restored if f.rule.name == "down").value == 74  # seconds the uplink was down


def test_stalled_pubacks_and_old_backlog_count_as_unhealthy() -> None:
    e = engine(FAILOVER.replace('restore = "5s"', 'stall = "20s"\nbacklog_age = "5m"'))
    e.tick(T0, Health(connected=True, puback_stall_ms=25_000))
    assert names(e.tick(T0 + 60_000, Health(connected=True, puback_stall_ms=85_000))) == [("down", True)]
    e2 = engine(FAILOVER.replace('restore = "5s"', 'backlog_age = "5m"'))
    e2.tick(T0, Health(connected=True, backlog_age_ms=300_000))
    assert e2.tick(T0 + 60_000, Health(connected=True, backlog_age_ms=360_000))[0].rule.name == "down"


def test_mode_condition_and_mode_trigger() -> None:
    e = engine("""
[[rule]]
name = "covers"
when = { report = "cover_open" }
if = { mode = ["emergency"] }
[[rule]]
name = "sirens"
when = { type = "mode", mode = "emergency" }
""")
    assert feed(e, schema.K_TILT, {1: 300, 2: 1}, T0) == []  # daily mode: pending on the condition
    fired = e.set_mode("emergency", T0 + 1)
    assert sorted(names(fired)) == [("covers", True), ("sirens", True)]
    cleared = e.set_mode("daily", T0 + 2)
    assert sorted((f.rule.name, f.reason) for f in cleared) == [("covers", "mode"), ("sirens", "mode")]


def test_schedules_fire_once_in_their_minute() -> None:
    e = engine('[[rule]]\nname = "test"\nwhen = { type = "schedule", at = ["07:30", "19:00"] }\n'
               '[[rule]]\nname = "q"\nwhen = { type = "schedule", cron = "*/15 * * * thu" }\n')
    assert names(e.tick(T0)) == [("q", True)]  # Thursday 00:00
    assert e.tick(T0 + 1000) == [] and e.tick(T0 + 59_000) == []
    assert e.tick(T0 + 14 * MIN) == [] and names(e.tick(T0 + 15 * MIN)) == [("q", True)]
    assert names(e.tick(T0 + 450 * MIN)) == [("test", True), ("q", True)]  # 07:30
    assert e.tick(T0 + 450 * MIN + 30_000) == []
    assert [f.rule.name for f in e.tick(T0 + 1440 * MIN + 450 * MIN)] == ["test"]  # Friday 07:30


def test_time_window_gates_firing_until_it_opens() -> None:
    e = engine('[[rule]]\nname = "night"\nwhen = { report = "cover_open" }\nif = { time = "22:00-06:00" }\n')
    assert feed(e, schema.K_TILT, {1: 300, 2: 1}, T0 + 12 * 60 * MIN) == []  # noon
    assert names(e.tick(T0 + 22 * 60 * MIN)) == [("night", True)]


def test_disk_pressure_with_hysteresis() -> None:
    e = engine('[[rule]]\nname = "disk"\nwhen = { type = "disk", quota_pct = 90 }\n')
    assert e.tick(T0, Health(disk_quota_pct=80.0)) == []
    assert names(e.tick(T0 + 1, Health(disk_quota_pct=91.0))) == [("disk", True)]
    assert e.tick(T0 + 2, Health(disk_quota_pct=87.0)) == []  # clears at 85 %
    assert names(e.tick(T0 + 3, Health(disk_quota_pct=84.0))) == [("disk", False)]


def test_node_alarms_are_keyed_by_alarm_id_and_escalate_when_not_acknowledged() -> None:
    tracker = AlarmTracker()
    e = engine("""
[[rule]]
name = "flood"
when = { report = "alarm", cause = ["flood"] }
[[rule]]
name = "unacked"
when = { type = "alarm_unacked", after = "3m" }
""", alarms=tracker)
    raised = feed(e, schema.K_ALARM_RAISED, {1: 7, 2: 3, 3: 420}, T0)
    tracker.raised(DEV, 7, 3, 420, T0)
    assert names(raised) == [("flood", True)] and raised[0].alarm_id == 7
    assert feed(e, schema.K_ALARM_RAISED, {1: 8, 2: 0}, T0 + 1) == []  # cause smoke: not this rule
    tracker.raised(DEV, 8, 0, None, T0 + 1)
    assert e.tick(T0 + 3 * MIN - 1) == []
    esc = e.tick(T0 + 3 * MIN + 1)
    assert sorted(f.alarm_id or 0 for f in esc) == [7, 8] and all(f.rule.name == "unacked" for f in esc)
    assert e.tick(T0 + 4 * MIN) == []  # once
    tracker.platform_ack(DEV, 8, 1, "cmd-1", T0 + 5 * MIN)
    acked = e.alarms_changed(T0 + 5 * MIN)
    assert [(f.alarm_id, f.reason) for f in acked] == [(8, "acked")]
    cleared = feed(e, schema.K_ALARM_CLEARED, {1: 7, 2: 3}, T0 + 6 * MIN)
    assert names(cleared) == [("flood", False)]
    tracker.cleared(DEV, 7, 3, T0 + 6 * MIN)
    assert [(f.alarm_id, f.reason) for f in e.alarms_changed(T0 + 6 * MIN)] == [(7, "alarm_cleared")]


def test_device_conditions_select_devices_from_the_registry() -> None:
    attrs = {DEV: DeviceAttrs("smoke", "district-7/block-12", schema.SENSITIVE, frozenset({"elderly-care"})),
             DEV2: DeviceAttrs("smoke", "district-8/block-1", schema.SENSITIVE, frozenset())}
    e = engine(SMOKE + 'if = { tags = ["elderly-care"], spatial_unit = "district-7/*" }\n', attrs=attrs)
    assert smoke(e, 2, T0, DEV2) == []
    assert names(smoke(e, 2, T0, DEV)) == [("siren", True)]
    assert smoke(e, 2, T0, bytes(7) + b"\x09") == []  # unknown device: no attributes, no match


def test_active_state_survives_restart_and_reload() -> None:
    e = engine(PUMP.replace('for = "2m"', 'for = "0s"') + SMOKE)
    level(e, 310, T0)
    smoke(e, 2, T0)
    saved = e.active()
    assert {s.rule for s in saved} == {"pump", "siren"}
    # restart: restored states fire nothing again, but still clear
    e2 = engine(PUMP.replace('for = "2m"', 'for = "0s"') + SMOKE)
    assert e2.restore(saved) == []
    assert level(e2, 320, T0 + MIN) == []
    assert names(level(e2, 200, T0 + 2 * MIN)) == [("pump", False)]
    # reload without the siren rule: its active firing is cleared with the old rule
    e3 = engine(PUMP)
    out = e3.adopt(e2, T0 + 3 * MIN)
    assert [(f.rule.name, f.fired, f.reason) for f in out] == [("siren", False, "rule_changed")]
    assert level(e3, 400, T0 + 4 * MIN) == [] and e3.tick(T0 + 6 * MIN)[0].rule.name == "pump"


def test_readings_meet_only_rules_that_can_react() -> None:
    text = "".join(f"""
[[rule]]
name = "t{i}"
when = {{ type = "threshold", kind = "water_level", field = "level", above = {1000 + i}, clear = {900 + i} }}
""" for i in range(50)) + SMOKE
    e = engine(text)
    calls: list[str] = []
    for rt in e.rts:
        orig = rt.on_reading

        def spy(r: rec.Reading, now: int, out: list[Firing], _o=orig, _n=rt.rule.name) -> None:  # type: ignore[no-untyped-def]
            calls.append(_n)
            _o(r, now, out)

        rt.on_reading = spy  # type: ignore[method-assign]
    level(e, 500, T0)
    smoke(e, 0, T0)
    assert calls == []  # below every threshold, no state: nothing called
    level(e, 1002, T0 + 1)
    assert calls == ["t0", "t1"]  # 1000 and 1001 are crossed, the other 48 not even looked at
    calls.clear()
    level(e, 500, T0 + 2)
    assert sorted(calls) == ["t0", "t1"]  # holding a state: called to clear
