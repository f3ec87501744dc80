"""`lifeline airtime` through the real CLI group: figures, exit codes, and the every-kind size table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lifeline.protocols import frame, frame_sizes, lora_phy, schema
from lifeline.tools.cli import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["airtime", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_single_payload_text() -> None:
    code, out = run("--region", "EU868", "--sf", "12", "--payload", "51")
    assert code == 0
    assert "2465.792 ms" in out and "244.1 s" in out and "LDRO on" in out and "DR0" in out and "fits" in out


def test_single_payload_json() -> None:
    code, out = run("--region", "CN470", "--sf", "7", "--payload", "51", "--json")
    assert code == 0
    j = json.loads(out)
    assert j["time_on_air_ms"] == pytest.approx(102.656)
    assert j["duty_cycle"] == 0.01 and j["duty_cycle_wait_ms"] == pytest.approx(102.656 * 99, abs=1e-3)
    assert (j["data_rate"], j["max_payload_bytes"], j["fits"]) == ("DR5", 222, True)
    assert j["low_data_rate_optimize"] is False and j["cr"] == "4/5"


def test_coding_rate_preamble_and_duty_override() -> None:
    _, out = run("--sf", "7", "--payload", "51", "--cr", "4/8", "--preamble", "10", "--duty-percent", "10",
                 "--json")
    j = json.loads(out)
    expected = lora_phy.time_on_air_ms(51, 7, 125, cr=4, preamble=10)
    assert j["time_on_air_ms"] == pytest.approx(expected, abs=1e-3)
    assert j["duty_cycle"] == pytest.approx(0.1) and j["duty_cycle_wait_ms"] == pytest.approx(expected * 9, abs=1e-2)


def test_too_large_for_the_data_rate_exits_1() -> None:
    code, out = run("--region", "CN470", "--sf", "12", "--payload", "52", "--json")
    assert code == 1 and json.loads(out)["fits"] is False
    code, out = run("--region", "CN470", "--sf", "12", "--payload", "52")
    assert code == 1 and "TOO LARGE by 1 B" in out


def test_not_a_data_rate_of_the_region_exits_1() -> None:
    code, out = run("--region", "EU868", "--sf", "9", "--bw", "500", "--payload", "10", "--json")
    assert code == 1
    j = json.loads(out)
    assert j["data_rate"] is None and j["time_on_air_ms"] > 0


@pytest.mark.parametrize(
    "args",
    [(), ("--sf", "12"), ("--sf", "13", "--payload", "1"), ("--sf", "7", "--payload", "256"),
     ("--sf", "7", "--bw", "200", "--payload", "1"), ("--region", "US915", "--sf", "7", "--payload", "1"),
     ("--sf", "7", "--payload", "1", "--duty-percent", "0")],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    code, _ = run(*args)
    assert code == 2


@pytest.mark.parametrize("region", ["CN470", "EU868"])
def test_all_kinds_json_matches_the_frame_codec(region: str) -> None:
    code, out = run("--region", region, "--all-kinds", "--json")
    assert code == 0
    j = json.loads(out)
    assert j["ok"] is True
    rows = {r["kind"]: r for r in j["kinds"]}
    assert set(rows) == set(schema.KINDS)
    keys = frame.derive_keys(bytes(32), bytes(8))
    for kind, row in rows.items():
        down = schema.is_downlink_kind(kind)
        data = frame.encode(keys, bytes(8), 0xFFFFFFFF, 0xFFFFFFFF, kind, frame_sizes.max_fields(kind),
                            frame.FLAG_DOWN if down else 0)
        assert row["frame_bytes"] == len(data) <= frame.MAX_FRAME
        assert row["name"] == schema.KINDS[kind][0] and row["direction"] == ("down" if down else "up")
        for sf in range(7, 13):
            assert row["airtime_ms"][f"SF{sf}"] == pytest.approx(lora_phy.time_on_air_ms(len(data), sf, 125), abs=1e-3)
            assert row["fits"][f"SF{sf}"] is True


def test_all_kinds_table_lists_every_kind() -> None:
    code, out = run("--all-kinds", "--region", "EU868")
    assert code == 0
    for k in schema.KINDS.values():
        assert k[0] in out
    assert "SF12" in out and "wait@SF12" in out and "down 10%" in out


def test_docs_section_6_table_is_current() -> None:
    code, out = run("--region", "CN470", "--all-kinds")
    assert code == 0
    m = re.search(r"<!-- airtime:begin -->\n(.*?)<!-- airtime:end -->", DOC.read_text(), re.S)
    assert m is not None, "docs/protocol.md section 6 lacks the airtime block"
    expected = "".join(line.rstrip() + "\n" for line in out.splitlines())
    assert m.group(1) == expected, "paste `lifeline airtime --region CN470 --all-kinds` into docs/protocol.md"
