"""The RUI3 P2P line parser: grammar, reasons, stream splitting, and fuzzing (it never raises)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.gateway.ingress.at_parser import (
    MAX_LINE,
    AtError,
    AtLineParser,
    AtReply,
    Banner,
    Ok,
    Reject,
    RxPacket,
    RxTimeout,
    TxDone,
    Value,
    parse_line,
)


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"OK", Ok()),
        (b"AT_ERROR", AtError("AT_ERROR")),
        (b"AT_PARAM_ERROR", AtError("AT_PARAM_ERROR")),
        (b"AT_BUSY_ERROR", AtError("AT_BUSY_ERROR")),
        (b"AT_COMMAND_NOT_FOUND", AtError("AT_COMMAND_NOT_FOUND")),
        (b"+EVT:RXP2P:-45:8:01020304", RxPacket(-45, 8, bytes([1, 2, 3, 4]))),
        (b"+EVT:RXP2P:-120:-18:aBcD", RxPacket(-120, -18, b"\xab\xcd")),
        (b"+EVT:RXP2P RECEIVE TIMEOUT", RxTimeout()),
        (b"+EVT:TXP2P DONE", TxDone()),
        (b"RAKwireless RAK3172-E Example", Banner("RAKwireless RAK3172-E Example", final=False)),
        (b"Current Work Mode: LoRa P2P.", Banner("Current Work Mode: LoRa P2P.", final=True)),
        (b"AT+VER=RUI_4.0.6_RAK3172-E", AtReply("AT+VER=RUI_4.0.6_RAK3172-E")),
        (b"Version: RUI_4.0.6_RAK3172-E", Value("Version: RUI_4.0.6_RAK3172-E")),
    ],
)
def test_grammar(line: bytes, event: object) -> None:
    assert parse_line(line) == event


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"+EVT:RXP2P:-45:8", "bad_rxp2p"),
        (b"+EVT:RXP2P:-45:8:11:0102", "bad_rxp2p"),  # an older firmware's extra length field
        (b"+EVT:RXP2P:abc:8:0102", "bad_rssi"),
        (b"+EVT:RXP2P:-999:8:0102", "bad_rssi"),
        (b"+EVT:RXP2P::8:0102", "bad_rssi"),
        (b"+EVT:RXP2P:-45:99:0102", "bad_snr"),
        (b"+EVT:RXP2P:-45:8.5:0102", "bad_snr"),
        (b"+EVT:RXP2P:-45:8:01zz", "bad_hex"),
        (b"+EVT:RXP2P:-45:8:010", "odd_hex"),
        (b"+EVT:RXP2P:-45:8:", "empty_payload"),
        (b"+EVT:RXP2P:-45:8:" + b"00" * 256, "payload_too_long"),
        (b"+EVT:JOINED", "unknown_event"),
        (b"OK\x00", "not_ascii"),
        (b"\xff\xfe", "not_ascii"),
        (b"x" * (MAX_LINE + 1), "overlong"),
    ],
)
def test_rejects_carry_a_reason(line: bytes, reason: str) -> None:
    event = parse_line(line)
    assert isinstance(event, Reject)
    assert event.reason == reason


def test_largest_packet_fits_in_a_line() -> None:
    line = b"+EVT:RXP2P:-137:-20:" + b"AB" * 255
    assert len(line) <= MAX_LINE
    assert parse_line(line) == RxPacket(-137, -20, b"\xab" * 255)


def test_stream_split_any_terminator_and_partial_lines() -> None:
    parser = AtLineParser()
    assert parser.feed(b"O") == []
    assert parser.feed(b"K\r\n+EVT:TXP2P DO") == [Ok()]
    assert parser.feed(b"NE\n\n\rAT_ERROR\r") == [TxDone(), AtError("AT_ERROR")]
    assert parser.feed(b"+EVT:RXP2P:-1:2:00") == []
    parser.reset()  # the port went away mid-line
    assert parser.counters["reject.partial_line"] == 1
    assert parser.feed(b"FF\r\n") == [Value("FF")]


def test_overlong_line_is_dropped_up_to_its_terminator_and_memory_stays_bounded() -> None:
    parser = AtLineParser(max_line=64)
    events = []
    for _ in range(1000):  # 100 kB without a terminator
        events += parser.feed(b"A" * 100)
    assert [type(e) for e in events] == [Reject]
    assert len(parser._buf) <= 64
    assert parser.feed(b"tail\r\nOK\r\n") == [Ok()]
    assert parser.counters["reject.overlong"] == 1


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=700))
def test_fuzz_parse_line_never_raises(line: bytes) -> None:
    event = parse_line(line)
    assert event is not None


_TOKENS = [b"OK", b"AT_ERROR", b"+EVT:RXP2P:", b"+EVT:TXP2P DONE", b"-45", b":", b"8", b"0A", b"ff", b"\r",
           b"\n", b"\r\n", b"\x00", b"\xff", b"RAKwireless", b"Current Work Mode: LoRa P2P.", b"AT+", b" "]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=40)), max_size=60),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=10))
def test_fuzz_stream_chunking_does_not_change_the_result(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    whole = AtLineParser(max_line=128)
    expected = whole.feed(data)
    chunked = AtLineParser(max_line=128)
    got = []
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        got += chunked.feed(data[pos : pos + step])
        pos += step
        i += 1
    assert got == expected
    assert chunked.counters == whole.counters


def test_fuzz_100k_random_lines_every_line_counted() -> None:
    rng = random.Random(20240607)
    alphabet = b"0123456789abcdefABCDEF:+-EVTRXP2P OK_\x00\xff\t"
    parser = AtLineParser()
    lines = 0
    events = 0
    for i in range(100_000):
        kind = i % 4
        if kind == 0:  # pure noise
            body = rng.randbytes(rng.randrange(0, 80)).replace(b"\r", b"").replace(b"\n", b"")
        elif kind == 1:  # RXP2P-shaped, randomly broken
            fields = [str(rng.randint(-300, 50)).encode(), str(rng.randint(-99, 99)).encode(),
                      bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))]
            body = b"+EVT:RXP2P:" + b":".join(fields[: rng.randint(1, 3)])
        elif kind == 2:  # a good line with one byte replaced
            good = bytearray(b"+EVT:RXP2P:-72:9:" + rng.randbytes(rng.randrange(1, 52)).hex().encode())
            good[rng.randrange(len(good))] = rng.choice(alphabet)
            body = bytes(good)
        else:  # random printable text
            body = bytes(rng.choice(alphabet[:-3]) for _ in range(rng.randrange(1, 30)))
        if not body.strip(b" \t"):
            body = b"x"
        out = parser.feed(body + b"\r\n")
        lines += 1
        events += len(out)
    assert lines == 100_000
    assert events == lines  # one event (or one counted reject) per line, nothing raised
    assert sum(parser.counters.values()) == lines
    rejects = {k for k in parser.counters if k.startswith("reject.")}
    assert {"reject.not_ascii", "reject.bad_hex", "reject.bad_rssi", "reject.bad_rxp2p"} <= rejects
