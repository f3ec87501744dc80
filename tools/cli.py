"""The one `lifeline` command line. A thin shell: every subcommand lives with the part it drives
and is imported only when used, so `lifeline decode` never pays for the gateway's imports."""

from __future__ import annotations

import importlib
import sys

import click

# name -> "module:attribute" of a click command or group. Add a line here to add a subcommand.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "decode": ("lifeline.tools.decode_cmd:decode", "Decode a node frame to JSON (verify/decrypt with --key)."),
    "airtime": ("lifeline.tools.airtime:airtime_cmd", "LoRa time-on-air and duty-cycle wait (SX127x formula)."),
    "demo": ("lifeline.tools.demo:demo", "Run the end-to-end demo (broker, gateway, platform sink, nodes)."),
    "bench": ("lifeline.tools.bench:bench", "Measure throughput, latency and memory against same-run baselines."),
    "gateway": ("lifeline.gateway.cli:gateway", "Run and manage the gateway daemon."),
    "battery": ("lifeline.tools.battery:battery_cmd", "Estimate a node's battery life from its configuration."),
    "platform-sink": ("lifeline.tools.platform_sink:platform_sink_cmd", "Reference city-platform sink."),
    "provision": ("lifeline.provisioning.cli:provision", "Flash, key, register and test nodes (field technicians)."),
    "sim": ("lifeline.sim_devices.cli:sim", "Simulations on the virtual LoRa air (capacity vs ALOHA, ...)."),
    "hil": ("lifeline.hil_tests.cli:hil", "QA drills on simulated nodes or a bench board, with a drill report."),
    "rules": ("lifeline.gateway.rules_engine.cli:rules", "Check gateway rule files; dry-run them against recordings."),
    "package": ("lifeline.tools.build_deb:package", "Build the gateway's Debian package for a Raspberry Pi."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        module = importlib.import_module(module_name)
        command = getattr(module, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lifeline")
def cli() -> None:
    """Lifeline: edge firmware and gateway for city-lifeline sensing.

    Exit codes: 0 success, 1 the check failed (bad frame, failed drill, ...),
    2 usage error, 3 environment or configuration error.
    """


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
