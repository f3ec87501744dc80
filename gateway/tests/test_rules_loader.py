"""Rule files: everything validated at load; every refusal names the file, the line and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.gateway.rules_engine import lineindex, timeparse
from lifeline.gateway.rules_engine import model as m
from lifeline.gateway.rules_engine.loader import RulesError, load_files, load_texts
from lifeline.protocols import schema

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rules.toml"

HEAD = """\
[contacts]
grid = ["+8613800000001"]
[outputs.lan]
type = "mqtt"
host = "127.0.0.1"
[outputs.relays]
type = "gpio"
chip = "sim:t"
[outputs.modem]
type = "sms"
port = "/dev/ttyUSB2"
"""
HEAD_LINES = HEAD.count("\n")

PUMP = """\
[[rule]]
name = "pump"
[rule.when]
type = "threshold"
kind = "water_level"
field = "level"
above = "300 mm"
clear = 250
for = "2m"
[[rule.action]]
type = "gpio"
output = "relays"
line = 17
"""


def load(text: str, file: str = "rules.toml") -> m.RuleSet:
    return load_texts([(file, text)])


def refused(text: str, file: str = "rules.toml") -> RulesError:
    with pytest.raises(RulesError) as ei:
        load(text, file)
    return ei.value


def test_the_example_file_loads_every_trigger_and_action_type() -> None:
    rs = load_files([EXAMPLE])
    kinds = {r.trigger_type for r in rs.rules}
    assert kinds == set(m.TRIGGER_CODES)
    actions = {a.type for r in rs.rules for a in (*r.actions, *r.clear_actions)}
    assert actions == set(m.ACTION_CODES)
    assert rs.timezone == "Asia/Shanghai" and rs.failover.grace_ms == 60_000 and rs.failover.stall_ms == 20_000
    assert rs.contacts["family-70b3d57ed0000001"] == ("+8613900000011",)
    pump = rs.rule("pump-on")
    assert pump is not None and isinstance(pump.trigger, m.Threshold)
    assert (pump.trigger.above, pump.trigger.clear, pump.trigger.for_ms) == (300, 250, 120_000)
    assert pump.raises_to == schema.P_ALARM
    lines = EXAMPLE.read_text().splitlines()
    assert lines[pump.line - 1] == "[[rule]]" and lines[pump.line] == 'name = "pump-on"'


def test_physical_units_become_wire_values_with_the_schema_scale() -> None:
    rs = load(HEAD + """
[[rule]]
name = "hot"
when = { type = "threshold", kind = "smoke", field = "temperature", above = "57.5 degC", clear = 50 }
[[rule]]
name = "tilted"
when = { type = "threshold", kind = "manhole_tilt", field = "angle", above = 12.5 }
""")
    hot, tilted = rs.rules
    assert isinstance(hot.trigger, m.Threshold) and (hot.trigger.above, hot.trigger.clear) == (575, 500)
    assert isinstance(tilted.trigger, m.Threshold) and tilted.trigger.above == 125 == tilted.trigger.clear


def test_named_and_generic_reports() -> None:
    rs = load(HEAD + """
[[rule]]
name = "a"
when = { report = "smoke_alarm" }
[[rule]]
name = "b"
when = { type = "report", kind = "manhole_tilt", field = "cover_state", in = ["open", "displaced"], for = "30s" }
[[rule]]
name = "c"
when = { type = "report", kind = "water_meter", field = "flags", bits = ["leak", "tamper"] }
[[rule]]
name = "d"
when = { report = "alarm", cause = ["smoke", "flood"] }
[[rule]]
name = "e"
when = { report = "fault", codes = ["low_battery"] }
""")
    a, b, c, d, e = (r.trigger for r in rs.rules)
    assert isinstance(a, m.Report) and a.values == frozenset({2}) and a.kinds == (schema.K_SMOKE,)
    assert isinstance(b, m.Report) and b.values == frozenset({1, 2}) and b.for_ms == 30_000
    assert isinstance(c, m.Report) and c.mask == 0b101
    assert isinstance(d, m.AlarmReport) and d.causes == frozenset({0, 3})
    assert isinstance(e, m.Report) and e.momentary and e.values == frozenset({4})


# (rule text, line relative to the rule's first line, key, reason)
BAD = [
    (PUMP.replace('above = "300 mm"', 'above = "300 cm"'), 7, "rule[0].when.above", "unit 'cm'"),
    (PUMP.replace('above = "300 mm"', "above = 30000"), 7, "rule[0].when.above", "outside the field's range"),
    (PUMP.replace('clear = 250', 'clear = 350'), 8, "rule[0].when.clear", "hysteresis goes down"),
    (PUMP.replace('field = "level"', 'field = "levl"'), 6, "rule[0].when.field", "has no field 'levl'"),
    (PUMP.replace('kind = "water_level"', 'kind = "ack"'), 5, "rule[0].when.kind", "not a report kind"),
    (PUMP.replace('for = "2m"', 'for = "2 fortnights"'), 9, "rule[0].when.for", "is not a duration"),
    (PUMP.replace('type = "threshold"', 'type = "thresold"'), 4, "rule[0].when.type", "is not one of"),
    (PUMP.replace('output = "relays"', 'output = "relay"'), 12, "rule[0].action[0].output", "no output named"),
    (PUMP.replace('output = "relays"', 'output = "lan"'), 12, "rule[0].action[0].output", "not of type 'gpio'"),
    (PUMP.replace("line = 17", "line = 17\ncolour = 1"), 14, "rule[0].action[0].colour", "unknown key"),
    (PUMP.replace('name = "pump"', 'name = "pump/1"'), 2, "rule[0].name", "does not match"),
    (PUMP + '[rule.if]\nmode = ["party"]\n', 15, "rule[0].if.mode", "expected one or more of"),
    (PUMP + '[rule.if]\ntime = "22:00-25:00"\n', 15, "rule[0].if.time", "not a time of day"),
    (PUMP + '[rule.if]\ndevices = ["70B3"]\n', 15, "rule[0].if.devices", "16 lowercase hex"),
    (PUMP + '[[rule.action]]\ntype = "sms"\noutput = "modem"\nto = ["@nobody"]\ntext = "x"\n', 17,
     "rule[0].action[1].to", "no contact group 'nobody'"),
    (PUMP + '[[rule.action]]\ntype = "sms"\noutput = "modem"\nto = ["112 or 119"]\ntext = "x"\n', 17,
     "rule[0].action[1].to", "neither a phone number"),
    (PUMP + '[[rule.action]]\ntype = "mqtt"\noutput = "lan"\ntopic = "site/{flat}"\n', 17,
     "rule[0].action[1].topic", "unknown template variable {flat}"),
    (PUMP + '[[rule.action]]\ntype = "mqtt"\noutput = "lan"\ntopic = "site/#"\n', 17,
     "rule[0].action[1].topic", "no wildcards"),
    (PUMP + '[[rule.action]]\ntype = "downlink"\ncommand = "config"\nfields = { interval = 5 }\n', 17,
     "rule[0].action[1].fields.interval", "below the minimum 10"),
    (PUMP + '[[rule.action]]\ntype = "downlink"\ncommand = "ota_begin"\n', 16,
     "rule[0].action[1].command", "expected a downlink command"),
    (PUMP + '[[rule.action]]\ntype = "gpio"\noutput = "relays"\nline = 17\nrate = "ten/h"\n', 18,
     "rule[0].action[1].rate", "must be an integer"),
    (PUMP + '[[rule.clear_action]]\ntype = "priority"\n', 14, "rule[0].clear_action", "belongs in action"),
    ('[[rule]]\nname = "x"\n[rule.when]\ntype = "uplink_down"\n[[rule.action]]\ntype = "priority"\n', 6,
     "rule[0].action[0].type", "needs a reading trigger"),
    ('[[rule]]\nname = "x"\nwhen = { type = "schedule", at = "7:75" }\n', 3, "rule[0].when.at", "not a time of day"),
    ('[[rule]]\nname = "x"\nwhen = { type = "schedule", cron = "*/15 * * *" }\n', 3, "rule[0].when.cron",
     "5 fields"),
    ('[[rule]]\nname = "x"\nwhen = { type = "disk" }\n', 3, "rule[0].when", "quota_pct and/or free_mb"),
    ('[[rule]]\nname = "x"\n', 1, "rule[0].when", "required key missing"),
    (PUMP + PUMP, 15, "rule[1].name", "defined twice"),
    ('[outputs.w]\ntype = "webhook"\nurl = "ftp://x"\n', 3, "outputs.w.url", "http://"),
    ('[outputs.g]\ntype = "gpio"\nchip = "/dev/mem"\n', 3, "outputs.g.chip", "gpiochipN"),
    ('[failover]\ngrace = "soon"\n', 2, "failover.grace", "is not a duration"),
]
# the same for text that goes before HEAD (top-level keys, tables HEAD defines)
BAD_TOP = [
    ('timezone = "Mars/Olympus"\n', 1, "timezone", "unknown time zone"),
    ('version = 2\n', 1, "version", "above the maximum 1"),
    ('colour = "red"\n', 1, "colour", "unknown key"),
]


@pytest.mark.parametrize(("text", "line", "key", "reason"), BAD)
def test_refusals_name_file_line_key_and_reason(text: str, line: int, key: str, reason: str) -> None:
    e = refused(HEAD + text, "/etc/lifeline/rules.toml")
    assert e.file == "/etc/lifeline/rules.toml"
    assert e.key == key, str(e)
    assert reason in e.reason, str(e)
    assert e.line == HEAD_LINES + line, str(e)
    assert str(e).startswith(f"/etc/lifeline/rules.toml:{HEAD_LINES + line}: {key}: ")


@pytest.mark.parametrize(("text", "line", "key", "reason"), BAD_TOP)
def test_top_level_refusals(text: str, line: int, key: str, reason: str) -> None:
    e = refused(text + HEAD)
    assert (e.key, e.line) == (key, line) and reason in e.reason, str(e)


def test_bad_contacts_and_duplicate_groups() -> None:
    e = refused('[contacts]\nx = ["0800-FLOOD"]\n')
    assert (e.key, e.line) == ("contacts.x", 2) and "not a phone number" in e.reason
    with pytest.raises(RulesError) as ei:
        load_texts([("a.toml", HEAD), ("b.toml", '[contacts]\ngrid = ["+8613800000009"]\n')])
    assert (ei.value.file, ei.value.line, ei.value.key) == ("b.toml", 2, "contacts.grid")


def test_syntax_errors_carry_tomllibs_line() -> None:
    e = refused(HEAD + '[[rule]]\nname = "x"\nwhen = { type = "silent", interval = }\n')
    assert e.line == HEAD_LINES + 3
    assert "TOML syntax error" in e.reason


def test_several_files_share_outputs_and_names(tmp_path: Path) -> None:
    a = tmp_path / "outputs.toml"
    b = tmp_path / "rules.toml"
    a.write_text(HEAD)
    b.write_text(PUMP)
    rs = load_files([a, b])
    assert [r.name for r in rs.rules] == ["pump"] and rs.rules[0].file == str(b)
    b.write_text(PUMP.replace('"relays"', '"missing"'))
    with pytest.raises(RulesError) as ei:
        load_files([a, b])
    assert ei.value.file == str(b) and ei.value.line == 12
    with pytest.raises(RulesError, match="cannot read"):
        load_files([tmp_path / "absent.toml"])
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(RulesError, match="not UTF-8"):
        load_files([tmp_path / "bin.toml"])


def test_line_index_handles_dotted_keys_multiline_values_and_nested_arrays() -> None:
    text = '''a = 1
b = """
c = 2
"""
d = [
  1,
  2,
]
[x."y.z"]
e.f = 3
[[r]]
g = 1
[[r.act]]
h = 1
[[r]]
[[r.act]]
[[r.act]]
i = 2
'''
    idx = lineindex.index(text)
    assert idx[("a",)] == 1 and ("c",) not in idx and idx[("d",)] == 5
    assert idx[("x", "y.z")] == 9 and idx[("x", "y.z", "e", "f")] == 10
    assert idx[("r", 0, "g")] == 12 and idx[("r", 0, "act", 0, "h")] == 14
    assert idx[("r", 1, "act", 1, "i")] == 18
    assert lineindex.line_of(idx, ("r", 1, "act", 1, "i", "deeper")) == 18


def test_time_parsers() -> None:
    assert timeparse.duration_ms("1h30m") == 5_400_000 and timeparse.duration_ms("500ms") == 500
    assert timeparse.duration_ms(2.5) == 2500
    assert timeparse.rate_limit("10/h") == (10, 3_600_000) and timeparse.rate_limit("3/10m") == (3, 600_000)
    assert timeparse.window("22:00-06:00") == (1320, 360)
    assert timeparse.in_window(30, (1320, 360)) and not timeparse.in_window(720, (1320, 360))
    c = timeparse.cron("*/15 7-9 * * mon-fri")
    assert c.matches(45, 8, 3, 3, 0) and not c.matches(44, 8, 3, 3, 0) and not c.matches(45, 8, 3, 3, 5)
    d = timeparse.cron("0 12 1 * 0")  # the 1st of the month OR Sundays (classic cron)
    assert d.matches(0, 12, 1, 5, 2) and d.matches(0, 12, 9, 5, 6) and not d.matches(0, 12, 9, 5, 2)
    for bad in ("60 * * * *", "* * * *", "*/0 * * * *"):
        with pytest.raises(ValueError):
            timeparse.cron(bad)
