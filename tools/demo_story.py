"""The demo's script: a district, its story in four phases and the files the real programs read.

Pure functions, no I/O: :func:`plan` scales the story to ``--duration``; :func:`district_toml` writes
the fleet as a scenario file (docs/simulator.md section 4) that ``sim_devices.scenario.load`` validates;
:func:`rules_toml` and :func:`gateway_toml` write the gateway's rule file and configuration.

The district runs on the fleet simulator's virtual clock, paced against the wall clock ``speed`` times
faster (a district's half hour fits a one-minute run); the gateway, the brokers and the platform sink run
in real time, so latencies, backoff and rule timers are real seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

GATEWAY_ID = "gw-demo"
VIRTUAL_S = 1800.0  # the district's half hour that the story covers (at least; longer runs go slower)
FIRE_FLAT = "block7-08"  # flat 3B of 7 Harbour Road (three flats a floor)
NEIGHBOUR_FLAT = "block7-09"  # flat 3C: the fire spreads there while the platform is down
FIRE_SCALE = 2.0  # t² fire twice the UL 217 pace: the detector alarms ~90 virtual seconds after ignition
BLE_NODES = 4  # each BLE node is a whole bumble host (sim_devices.links.BleBridge takes at most 8)
BLOCK_FLATS = 12


@dataclass(frozen=True, slots=True)
class Phase:
    name: str  # normal | fire | outage | restored
    title: str
    start_s: float  # real seconds since the story began
    end_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class Story:
    duration_s: float  # real seconds of the four phases (the drain and summary follow)
    speed: float  # virtual seconds per real second
    phases: tuple[Phase, ...]
    fire_at_s: float  # real seconds since the start (the virtual time is speed times this)
    fire_out_s: float
    spread_at_s: float
    spread_out_s: float
    failover_grace_s: int  # rules: the uplink counts as down after this
    unacked_after_s: int  # rules: a node alarm without a platform ack is escalated after this

    def phase_at(self, t_s: float) -> Phase:
        for p in self.phases:
            if t_s < p.end_s:
                return p
        return self.phases[-1]

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def virtual(self, t_s: float) -> float:
        return t_s * self.speed


PHASES = (  # name, title, share of the duration
    ("normal", "a normal day", 0.25),
    ("fire", "fire in flat 3B", 0.20),
    ("outage", "platform outage", 0.27),
    ("restored", "platform back", 0.28),
)


def plan(duration_s: float) -> Story:
    """The story scaled to ``duration_s`` real seconds (at least 20)."""
    if duration_s < 20:
        raise ValueError("the story needs at least 20 seconds")
    phases = []
    t = 0.0
    for name, title, share in PHASES:
        end = duration_s if name == "restored" else t + share * duration_s
        phases.append(Phase(name, title, round(t, 3), round(end, 3)))
        t = end
    speed = max(VIRTUAL_S, duration_s) / duration_s
    fire, outage, restored = phases[1], phases[2], phases[3]
    return Story(
        duration_s=duration_s, speed=speed, phases=tuple(phases),
        fire_at_s=fire.start_s + 0.02 * duration_s,
        fire_out_s=restored.start_s + 0.35 * restored.length_s,
        spread_at_s=outage.start_s + 0.05 * duration_s,
        spread_out_s=restored.start_s + 0.45 * restored.length_s,
        failover_grace_s=max(1, math.floor(0.05 * duration_s)),
        unacked_after_s=max(2, math.floor(0.08 * duration_s)),
    )


# ---------------------------------------------------------------------------------------------- district


@dataclass(frozen=True, slots=True)
class Group:
    prefix: str
    kind: str
    share: float  # of the nodes beyond the fixed groups
    radios: tuple[str, ...]
    layout: str  # inline TOML table
    address: str
    interval: str = "5m"
    model: str = ""


GROUPS = (
    Group("home", "smoke", 0.30, ("lora-udp", "nbiot", "lora-udp", "lora-serial"),
          '{ type = "building", x = -80, y = 60, per_floor = 8 }', "Elm Court"),
    Group("cover", "tilt", 0.14, ("lora-udp",), '{ type = "grid", x = -200, y = -150, cols = 8, spacing = 45 }',
          "Harbour Road manhole", model="{ heavy_per_hour = 20 }"),
    Group("drain", "water_level", 0.08, ("lora-udp", "lora-serial"),
          '{ type = "line", x = 120, y = -40, dx = 12 }', "storm drain"),
    Group("water", "water_meter", 0.20, ("nbiot", "lora-udp"),
          '{ type = "grid", x = 30, y = 90, cols = 10, spacing = 12 }', "water meter"),
    Group("gas", "gas_meter", 0.14, ("lora-udp", "nbiot"),
          '{ type = "grid", x = -40, y = -90, cols = 10, spacing = 12 }', "gas meter"),
    Group("power", "electricity_meter", 0.14, ("nbiot", "lora-udp", "lora-serial"),
          '{ type = "grid", x = 60, y = -120, cols = 10, spacing = 12 }', "electricity meter"),
)


def group_counts(nodes: int) -> dict[str, int]:
    """Nodes per group for about ``nodes`` nodes: the fire block (12 flats) and the BLE hall (4) are fixed,
    the rest is shared out (every group keeps at least one node)."""
    rest = max(len(GROUPS), nodes - BLOCK_FLATS - BLE_NODES)
    counts = {g.prefix: max(1, math.floor(g.share * rest)) for g in GROUPS}
    counts[GROUPS[0].prefix] += max(0, rest - sum(counts.values()))
    return counts


def district_toml(nodes: int, seed: int, story: Story) -> str:
    """The fleet and its episodes as a scenario file (virtual times)."""
    v = story.virtual
    counts = group_counts(nodes)
    out = [
        "[scenario]",
        'name = "lifeline demo district"',
        'description = "A district: flats with smoke alarms, manholes, drains and meters over four radios; '
        'a fire in flat 3B that spreads to 3C while the platform is down."',
        f'duration = "{v(story.duration_s):.0f}s"',
        f"seed = {seed}",
        'start = "2026-03-14T09:00:00Z"',
        "time_sync = true",
        "",
        "[gateway]",
        "x = 0",
        "y = 0",
        "",
        "[[nodes]]",
        'prefix = "block7"',
        'kind = "smoke"',
        f"count = {BLOCK_FLATS}",
        'radio = ["lora-serial", "nbiot", "lora-udp"]',
        'interval = "2m"',
        'layout = { type = "building", x = 60, y = 40, per_floor = 3 }',
        'address = "7 Harbour Road"',
        'tags = ["elderly-care"]',
        "",
        "[[nodes]]",
        'prefix = "hall"',
        'kind = "water_meter"',
        f"count = {BLE_NODES}",
        'radio = "ble"',
        'interval = "2m"',
        'layout = { type = "line", x = 8, y = 5, dx = 6 }',
        'address = "gateway building, plant room"',
        "",
    ]
    for g in GROUPS:
        radios = ", ".join(f'"{r}"' for r in g.radios)
        out += ["[[nodes]]", f'prefix = "{g.prefix}"', f'kind = "{g.kind}"', f"count = {counts[g.prefix]}",
                f"radio = [{radios}]", f'interval = "{g.interval}"', f"layout = {g.layout}",
                f'address = "{g.address}"']
        if g.model:
            out.append(f"model = {g.model}")
        out.append("")
    out += [
        "[[events]]",
        f'at = "{v(story.fire_at_s):.0f}s"',
        f'nodes = "{FIRE_FLAT}"',
        'episode = "fire"',
        f'duration = "{v(story.fire_out_s - story.fire_at_s):.0f}s"',
        f"params = {{ scale = {FIRE_SCALE} }}",
        "",
        "[[events]]",
        f'at = "{v(story.spread_at_s):.0f}s"',
        f'nodes = "{NEIGHBOUR_FLAT}"',
        'episode = "fire"',
        f'duration = "{v(story.spread_out_s - story.spread_at_s):.0f}s"',
        f"params = {{ scale = {FIRE_SCALE} }}",
        "",
        "[[events]]",
        f'at = "{v(0.1 * story.duration_s):.0f}s"',
        'nodes = "block7-01"',
        'episode = "cooking"',
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- gateway

GRID_WORKER = "+8613800000001"
DUTY_ENGINEER = "+8613700000099"
SIREN_TOPIC = "site/7-harbour-road/siren"
STATUS_TOPIC = "site/gateway/status"


def rules_toml(story: Story, *, lan: tuple[str, int], sms_port: Path) -> str:
    """The gateway's local rules: the block's siren on any smoke alarm, SMS to the grid worker while the
    platform is unreachable, an engineer's SMS for an alarm the platform did not acknowledge in time."""
    host, port = lan
    return f"""# lifeline demo: local failover rules (docs/demo.md)
version = 1
timezone = "UTC"

[failover]
grace = "{story.failover_grace_s}s"
restore = "2s"

[contacts]
grid-worker = ["{GRID_WORKER}"]
duty-engineer = ["{DUTY_ENGINEER}"]

[outputs.lan]
type = "mqtt"
host = "{host}"
port = {port}
client_id = "{GATEWAY_ID}-rules"

[outputs.modem]
type = "sms"
port = "{sms_port}"
send_timeout = "10s"

[[rule]]
name = "smoke-siren"
description = "A smoke alarm in the block sounds its siren at once, whatever the platform does"
priority = "alarm"
when = {{ report = "alarm", cause = ["smoke"] }}
[[rule.action]]
type = "mqtt"
output = "lan"
topic = "{SIREN_TOPIC}"
payload = '{{"on": true, "device": "{{device}}", "where": "{{address}}"}}'
[[rule.clear_action]]
type = "mqtt"
output = "lan"
topic = "{SIREN_TOPIC}"
payload = '{{"on": false, "device": "{{device}}"}}'

[[rule]]
name = "smoke-sms"
description = "While the platform is unreachable the gateway texts the grid worker itself"
priority = "alarm"
when = {{ report = "alarm", cause = ["smoke"] }}
if = {{ uplink = "down" }}
[[rule.action]]
type = "sms"
output = "modem"
to = ["@grid-worker"]
text = "SMOKE ALARM {{address}} at {{time}}. Platform offline: gateway {{gateway}} alerting directly."

[[rule]]
name = "platform-down"
when = {{ type = "uplink_down" }}
[[rule.action]]
type = "mqtt"
output = "lan"
topic = "{STATUS_TOPIC}"
payload = "platform unreachable since {{time}}: local escalation active"
[[rule.clear_action]]
type = "mqtt"
output = "lan"
topic = "{STATUS_TOPIC}"
payload = "platform reachable again"

[[rule]]
name = "alarm-not-acked"
description = "No platform acknowledgement in time: text the duty engineer"
priority = "alarm"
when = {{ type = "alarm_unacked", after = "{story.unacked_after_s}s" }}
[[rule.action]]
type = "sms"
output = "modem"
to = ["@duty-engineer"]
text = "Alarm {{alarm_id}} ({{cause}}) at {{address}} not acknowledged by the platform"
"""


def gateway_toml(state: Path, *, platform: tuple[str, int], node_broker: tuple[str, int], modem: Path,
                 udp_port: int, ble_port: int | None, rules: Path) -> str:
    """The gateway's configuration: every radio, the platform as its uplink, metrics and the status page
    on free loopback ports, the rules engine."""
    lines = [
        "[gateway]", f'id = "{GATEWAY_ID}"', f'state_dir = "{state}"', f'key_file = "{state / "gateway.key"}"',
        "[buffer]", "maintenance_s = 1",
        "[dedupe]", "window_ms = 2000", "collect_ms = 200",
        "[forwarder]", "retry_initial_ms = 100", "retry_max_ms = 1000",
        "[uplink]", "keepalive_s = 5", "connect_timeout_s = 2", "publish_timeout_s = 3",
        "[[uplink.endpoints]]", 'name = "platform"', f'host = "{platform[0]}"', f"port = {platform[1]}",
        "[metrics]", 'listen = "127.0.0.1"', "port = 0",
        "[status_page]", 'listen = "127.0.0.1"', "port = 0", f'token_file = "{state / "status.token"}"',
        "[rules]", f'files = ["{rules}"]', 'state_db = "rules.db"',
        "[[ingress]]", 'type = "lora-serial"', 'name = "lora0"', "[ingress.options]",
        f'port = "{modem}"', 'region = "EU868"', "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
        "[[ingress]]", 'type = "lora-udp"', 'name = "udp0"', "[ingress.options]",
        'bind = "127.0.0.1"', f"port = {udp_port}", 'region = "EU868"',
        "[[ingress]]", 'type = "nbiot-mqtt"', 'name = "nb0"', "[ingress.options]",
        f'host = "{node_broker[0]}"', f"port = {node_broker[1]}", f'client_id = "lifeline-{GATEWAY_ID}-nb0"',
        "reconnect_min_s = 0.1", "reconnect_max_s = 1.0",
    ]
    if ble_port is not None:
        lines += ["[[ingress]]", 'type = "ble"', 'name = "ble0"', "[ingress.options]",
                  f'backend = "bumble:tcp-client:127.0.0.1:{ble_port}"', 'address = "F0:0A:0B:0C:0D:0E"',
                  "dedupe_window_ms = 5000"]
    return "\n".join(lines) + "\n"
