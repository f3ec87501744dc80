"""`lifeline decode`: one node frame to JSON with the registry's human names.

Without a key only the clear header can be shown (and a clear body, marked unverified); with the device's
32-byte root key the MIC is verified and the body decrypted. Exit codes: 0 decoded, 1 rejected (the JSON
names the reason code of docs/protocol.md section 4), 2 usage error, 3 key file unusable. Whatever the
input, the answer is JSON or a usage message, never a traceback.
"""

from __future__ import annotations

import json
import string
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from lifeline.protocols import frame, keys, render, schema, suites

MAX_READ = 64 * 1024  # read at most this much input; frames are <= 255 bytes anyway
_HEX = frozenset(string.hexdigits)
FLAG_NAMES = ((frame.FLAG_ENC, "enc"), (frame.FLAG_ACK_REQ, "ack_req"), (frame.FLAG_QUEUED, "queued"),
              (frame.FLAG_TEST, "test"), (frame.FLAG_DOWN, "down"))


def _hex_or_none(text: bytes) -> bytes | None:
    """``text`` as hex (whitespace, an optional 0x and ':' separators ignored), or None if it is not hex."""
    s = b"".join(text.split()).replace(b":", b"")
    if s[:2] in (b"0x", b"0X"):
        s = s[2:]
    if not s or len(s) % 2 or not all(chr(c) in _HEX for c in s):
        return None
    return bytes.fromhex(s.decode("ascii"))


def _read_input(hex_arg: str | None, file: str | None) -> bytes:
    if hex_arg is not None and file is not None:
        raise click.UsageError("give either HEX or --file, not both")
    if hex_arg is not None:
        data = _hex_or_none(hex_arg.encode("utf-8", "replace"))
        if data is None:
            raise click.BadParameter("not a hex string (an even number of 0-9a-f digits)", param_hint="HEX")
        return data
    if file is not None:
        try:
            with open(file, "rb") as fh:
                raw = fh.read(MAX_READ + 1)
        except OSError as exc:
            raise click.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="--file") from None
    else:
        stdin = sys.stdin.buffer
        if stdin.isatty():
            raise click.UsageError("give a frame as HEX, with --file, or on stdin")
        raw = stdin.read(MAX_READ + 1)
    # Text input is hex; anything else is the raw frame. A raw frame never looks like hex: its first byte
    # (version 1, suite 1 = 0x11) is not an ASCII hex digit.
    as_hex = _hex_or_none(raw)
    return raw if as_hex is None else as_hex


def _parse_key(text: bytes, source: str) -> bytes:
    key = _hex_or_none(text)
    if key is None and len(text) == 32:
        key = text  # a raw 32-byte key file
    if key is None or len(key) != 32:
        # Never echo what was given: it may be most of a key.
        raise click.BadParameter("must be a 32-byte root key as 64 hex characters", param_hint=source)
    return key


def _read_key_file(path: str) -> bytes:
    try:
        data = keys.read_private_file(Path(path), "key file", max_bytes=4096)
    except keys.KeyFileError as exc:
        _fail_env(str(exc))
    return _parse_key(data.strip() if _hex_or_none(data) is not None else data, "--key-file")


def _fail_env(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(3)


def _time_iso(t: int) -> str | None:
    if t == 0:
        return None  # clock not set
    return datetime.fromtimestamp(frame.EPOCH_UNIX + t, tz=UTC).isoformat().replace("+00:00", "Z")


def header_json(h: frame.Header, data: bytes) -> dict[str, Any]:
    return {
        "version": h.version,
        "suite": h.suite,
        "suite_name": suites.LABELS.get(h.suite, "?"),
        "kind": render.kind_name(h.kind),
        "kind_id": h.kind,
        "direction": "down" if h.downlink else "up",
        "flags": [name for bit, name in FLAG_NAMES if h.flags & bit],
        "flags_raw": h.flags,
        "device": h.dev_id.hex(),
        "fcnt": h.fcnt,
        "time": h.time,
        "time_iso": _time_iso(h.time),
        "length": len(data),
        "body_bytes": len(data) - frame.HEADER_LEN - frame.MIC_LEN,
        "mic": data[-frame.MIC_LEN :].hex(),
    }


def _raw_fields(fields: dict[int, int | bytes]) -> dict[str, Any]:
    return {str(k): v.hex() if isinstance(v, bytes) else v for k, v in sorted(fields.items())}


def decode_frame(
    data: bytes, root_key: bytes | None, direction: str | None = None, device: bytes | None = None,
    suite: str | None = None, allowed: tuple[str, ...] = (),
) -> tuple[int, dict[str, Any]]:
    """(exit code, JSON answer) for one frame; keys for ``device`` if given, else for the header's device.
    ``suite``: the device's registered suite (default: the one the header names); ``allowed``: the suites a
    gateway config allows (default: all)."""
    try:
        header = frame.parse_header(data)
    except frame.FrameError as exc:
        return 1, {"ok": False, "reason": exc.reason, "detail": exc.detail, "length": len(data)}
    out: dict[str, Any] = {"ok": True, "verified": False, "header": header_json(header, data)}
    downlink = header.downlink if direction is None else direction == "down"
    if root_key is None:
        out["note"] = "no key: MIC not verified" + (", body encrypted" if header.encrypted else "")
        if not header.encrypted:
            try:
                f = frame.decode_body(header, data[frame.HEADER_LEN : -frame.MIC_LEN])
            except frame.FrameError as exc:
                out["body"] = {"unverified": True, "error": exc.reason, "detail": exc.detail}
            else:
                out["body"] = {"unverified": True, "fields": render.fields_to_json(header.kind, f.fields),
                               "raw": _raw_fields(f.fields)}
        return 0, out
    try:
        # without --suite the header's suite is trusted: a frame MAC'd with another suite's algorithm
        # still fails (bad_mic); with --suite a header naming another suite is wrong_suite
        sid = header.suite if suite is None else suites.suite_id(suite)
        keys = frame.derive_keys(root_key, header.dev_id if device is None else device, sid)
        f = frame.decode(data, keys, downlink, frozenset(suites.IDS[a] for a in allowed) if allowed else None)
    except frame.FrameError as exc:
        return 1, {"ok": False, "reason": exc.reason, "detail": exc.detail, "header": out["header"]}
    out["verified"] = True
    out["kind"] = render.kind_name(header.kind)
    out["data_class"] = render.class_name(schema.KINDS[header.kind][1])
    out["fields"] = render.fields_to_json(header.kind, f.fields)
    out["raw"] = _raw_fields(f.fields)
    return 0, out


@click.command("decode", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("hex_frame", metavar="[HEX]", required=False)
@click.option("--file", "file", type=click.Path(dir_okay=False), help="Read the frame from a file (hex or raw).")
@click.option("--key", "key_hex", metavar="HEX", help="The device's 32-byte root key, 64 hex characters.")
@click.option("--key-file", type=click.Path(dir_okay=False), help="Read the root key from a file (mode 0600).")
@click.option("--expect", type=click.Choice(["up", "down"]), default=None,
              help="Direction the frame must have (default: as its DOWN flag says).")
@click.option("--device", "device_hex", metavar="HEX",
              help="Device id (16 hex) the key belongs to; a frame of another device is rejected.")
@click.option("--suite", type=click.Choice(["intl", "sm"]), default=None,
              help="The device's registered crypto suite (default: the suite the header names).")
@click.option("--allow", "allow", multiple=True, type=click.Choice(["intl", "sm"]),
              help="A suite the receiver allows (repeatable; default: all), as [gateway] node_suites.")
@click.option("--json", "compact", is_flag=True, help="One line of JSON (default: indented).")
def decode(hex_frame: str | None, file: str | None, key_hex: str | None, key_file: str | None,
           expect: str | None, device_hex: str | None, suite: str | None, allow: tuple[str, ...],
           compact: bool) -> None:
    """Decode a node frame given as HEX, with --file, or on stdin, and print JSON.

    Without --key/--key-file: the header, and a clear body marked unverified. With the key: MIC verified,
    body decrypted. Exit 0 decoded, 1 rejected (reason code in the JSON), 2 usage, 3 key file unusable.
    """
    if key_hex is not None and key_file is not None:
        raise click.UsageError("give either --key or --key-file, not both")
    root = _parse_key(key_hex.encode("utf-8", "replace"), "--key") if key_hex is not None else None
    if key_file is not None:
        root = _read_key_file(key_file)
    device = None
    if device_hex is not None:
        device = _hex_or_none(device_hex.encode("utf-8", "replace"))
        if device is None or len(device) != 8:
            raise click.BadParameter("must be an 8-byte device id, 16 hex characters", param_hint="--device")
    data = _read_input(hex_frame, file)
    try:
        code, answer = decode_frame(data, root, expect, device, suite, allow)
    except Exception as exc:  # the contract is an answer, never a traceback
        code, answer = 1, {"ok": False, "reason": "internal_error", "detail": type(exc).__name__}
    click.echo(json.dumps(answer, separators=(",", ":")) if compact else json.dumps(answer, indent=2))
    sys.exit(code)
