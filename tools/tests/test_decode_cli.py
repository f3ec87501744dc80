"""`lifeline decode` on the normative vectors, every input form, key handling, and arbitrary input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.protocols import frame, render, schema
from lifeline.tools.cli import cli

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocols" / "vectors"
FRAMES = json.loads((VECTORS / "frames.json").read_text())
REJECTIONS = json.loads((VECTORS / "rejections.json").read_text())
KEY_A = FRAMES[0]["root_key"]


def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["decode", *args], input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def fields_of(v: dict[str, Any]) -> dict[str, Any]:
    return {k: x["bytes"] if isinstance(x, dict) else x for k, x in v["fields"].items()}


@pytest.mark.parametrize("vec", FRAMES, ids=lambda v: v["name"])
def test_vector_frames_verify_and_decrypt(vec: dict[str, Any]) -> None:
    code, out, _ = run(vec["frame"], "--key", vec["root_key"])
    assert code == 0, out
    j = json.loads(out)
    assert j["ok"] is True and j["verified"] is True
    assert j["raw"] == fields_of(vec)
    assert j["header"]["device"] == vec["dev_id"] and j["header"]["fcnt"] == vec["fcnt"]
    assert j["kind"] == schema.KINDS[vec["kind"]][0]
    assert j["data_class"] == schema.CLASS_NAMES[schema.KINDS[vec["kind"]][1]]
    raw = {int(k): bytes.fromhex(x["bytes"]) if isinstance(x, dict) else x for k, x in vec["fields"].items()}
    assert j["fields"] == json.loads(json.dumps(render.fields_to_json(vec["kind"], raw)))


@pytest.mark.parametrize("vec", FRAMES, ids=lambda v: v["name"])
def test_without_key_header_only_and_clear_body_marked_unverified(vec: dict[str, Any]) -> None:
    code, out, _ = run(vec["frame"])
    assert code == 0
    j = json.loads(out)
    assert j["verified"] is False and "MIC not verified" in j["note"]
    h = j["header"]
    assert (h["kind_id"], h["device"], h["fcnt"], h["time"]) == (vec["kind"], vec["dev_id"], vec["fcnt"], vec["time"])
    assert h["direction"] == ("down" if vec["flags"] & frame.FLAG_DOWN else "up")
    assert h["length"] == len(vec["frame"]) // 2 and h["mic"] == vec["frame"][-16:]
    if "enc" in h["flags"]:
        assert "body" not in j and "encrypted" in j["note"]
    else:
        assert j["body"]["unverified"] is True and j["body"]["raw"] == fields_of(vec)


@pytest.mark.parametrize("vec", REJECTIONS, ids=lambda v: v["name"])
def test_rejection_vectors_exit_1_with_the_reason_code(vec: dict[str, Any]) -> None:
    expect = "down" if vec["downlink"] else "up"
    args = ("--key", vec["root_key"], "--expect", expect, "--device", vec["dev_id"],
            "--suite", vec.get("suite", "intl"), *(x for a in vec.get("allowed", ()) for x in ("--allow", a)))
    code, out, _ = run(vec["frame"], *args) if vec["frame"] else run(*args, stdin=b"")
    assert code == 1, out
    j = json.loads(out)
    assert j["ok"] is False and j["reason"] == vec["reason"]


def test_input_forms_agree(tmp_path: Path) -> None:
    vec = FRAMES[4]
    data = bytes.fromhex(vec["frame"])
    raw_file = tmp_path / "frame.bin"
    raw_file.write_bytes(data)
    hex_file = tmp_path / "frame.hex"
    hex_file.write_text(" ".join(vec["frame"][i : i + 2] for i in range(0, len(vec["frame"]), 2)) + "\n")
    answers = [
        run(vec["frame"], "--key", KEY_A),
        run("0x" + vec["frame"].upper(), "--key", KEY_A),
        run("--file", str(raw_file), "--key", KEY_A),
        run("--file", str(hex_file), "--key", KEY_A),
        run("--key", KEY_A, stdin=data),
        run("--key", KEY_A, stdin=vec["frame"].encode() + b"\n"),
    ]
    assert {a[0] for a in answers} == {0}
    assert len({a[1] for a in answers}) == 1
    code, out, _ = run(vec["frame"], "--key", KEY_A, "--json")
    assert code == 0 and "\n" not in out.strip() and json.loads(out) == json.loads(answers[0][1])


def test_wrong_key_and_wrong_direction_are_rejections() -> None:
    vec = FRAMES[0]
    code, out, _ = run(vec["frame"], "--key", "11" * 32)
    assert code == 1 and json.loads(out)["reason"] == "bad_mic"
    code, out, _ = run(vec["frame"], "--key", vec["root_key"], "--expect", "down")
    assert code == 1 and json.loads(out)["reason"] == "bad_direction"
    code, out, _ = run(vec["frame"], "--key", vec["root_key"], "--device", "00" * 8)
    assert code == 1 and json.loads(out)["reason"] == "bad_mic"
    assert run(vec["frame"], "--key", vec["root_key"], "--device", vec["dev_id"])[0] == 0
    assert run(vec["frame"], "--key", vec["root_key"], "--device", "00")[0] == 2


def test_key_file(tmp_path: Path) -> None:
    vec = FRAMES[0]
    path = tmp_path / "root.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, vec["root_key"].encode() + b"\n")
    os.close(fd)
    code, out, _ = run(vec["frame"], "--key-file", str(path))
    assert code == 0 and json.loads(out)["verified"] is True
    raw = tmp_path / "root.bin"
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, bytes.fromhex(vec["root_key"]))
    os.close(fd)
    assert run(vec["frame"], "--key-file", str(raw))[0] == 0
    os.chmod(path, 0o644)
    code, out, err = run(vec["frame"], "--key-file", str(path))
    assert code == 3 and "0644" in err and "chmod 600" in err
    assert vec["root_key"] not in out + err
    assert run(vec["frame"], "--key-file", str(tmp_path / "absent"))[0] == 3


@pytest.mark.parametrize(
    "args",
    [
        ("zz",),
        ("abc",),
        ("--key", "00" * 31),
        ("--key", "not hex at all, and a secret " + "ab" * 20),
        ("--key", KEY_A, "--key-file", "/dev/null"),
        ("--expect", "sideways"),
    ],
)
def test_usage_errors_exit_2_without_echoing_keys(args: tuple[str, ...]) -> None:
    full = args if args[0] in ("zz", "abc") else (FRAMES[0]["frame"], *args)
    code, out, err = run(*full)
    assert code == 2
    for a in args:
        if len(a) > 20:
            assert a not in out + err


def test_frame_and_file_together_is_usage(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"\x00")
    assert run(FRAMES[0]["frame"], "--file", str(f))[0] == 2
    assert run("--file", str(tmp_path / "missing"))[0] == 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_stdin_is_answered_in_json(data: bytes, with_key: bool) -> None:
    code, out, _ = run(*(("--key", KEY_A) if with_key else ()), stdin=data)
    assert code in (0, 1)
    j = json.loads(out)
    assert j["ok"] is (code == 0)
    if code == 1:
        assert j["reason"] in frame.REASONS


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_argument_never_tracebacks(text: str) -> None:
    code, _, _ = run("--", text) if text.startswith("-") else run(text)
    assert code in (0, 1, 2)


def test_mutated_frames_are_rejected_unless_unchanged() -> None:
    rng = random.Random(99)
    seen: set[str] = set()
    for vec in FRAMES:
        good = bytes.fromhex(vec["frame"])
        for _ in range(15):
            data = bytearray(good)
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
            code, out, _ = run(data.hex(), "--key", vec["root_key"], "--expect",
                               "down" if vec["flags"] & frame.FLAG_DOWN else "up")
            assert code == 1, out
            seen.add(json.loads(out)["reason"])
    assert "bad_mic" in seen


def test_installed_entry_point_prints_no_traceback() -> None:
    exe = Path(sys.executable).with_name("lifeline")
    assert exe.exists(), f"{exe} missing: pip install -e . creates it"
    for arg in ("", "11" * 40, FRAMES[0]["frame"]):
        proc = subprocess.run([str(exe), "decode", "--key", KEY_A], input=arg.encode(), capture_output=True,
                              timeout=60, check=False)
        assert proc.returncode in (0, 1)
        assert b"Traceback" not in proc.stderr + proc.stdout
        json.loads(proc.stdout)
