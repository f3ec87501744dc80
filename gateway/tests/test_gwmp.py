"""GWMP v2 codec against PROTOCOL.TXT (Lora-net/packet_forwarder v4.0.1) and under fuzzing."""

from __future__ import annotations

import base64
import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifeline.gateway.ingress import gwmp

EUI = bytes.fromhex("aa555a0000000101")

# The upstream example of PROTOCOL.TXT section 4, verbatim. Its first packet's "data" contains '-', which
# is not base64 (a known slip in the document); its second is FSK. Only the third is a good LoRa packet.
SPEC_RXPK = """{"rxpk":[
	{
		"time":"2013-03-31T16:21:17.528002Z",
		"tmst":3512348611,
		"chan":2,
		"rfch":0,
		"freq":866.349812,
		"stat":1,
		"modu":"LORA",
		"datr":"SF7BW125",
		"codr":"4/6",
		"rssi":-35,
		"lsnr":5.1,
		"size":32,
		"data":"-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84"
	},{
		"time":"2013-03-31T16:21:17.530974Z",
		"tmst":3512348514,
		"chan":9,
		"rfch":1,
		"freq":869.1,
		"stat":1,
		"modu":"FSK",
		"datr":50000,
		"rssi":-75,
		"size":16,
		"data":"VEVTVF9QQUNLRVRfMTIzNA=="
	},{
		"time":"2013-03-31T16:21:17.532038Z",
		"tmst":3316387610,
		"chan":0,
		"rfch":0,
		"freq":863.00981,
		"stat":1,
		"modu":"LORA",
		"datr":"SF10BW125",
		"codr":"4/7",
		"rssi":-38,
		"lsnr":5.5,
		"size":32,
		"data":"ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass"
	}
]}"""

SPEC_STAT = """{"stat":{
	"time":"2014-01-12 08:59:28 GMT",
	"lati":46.24000,
	"long":3.25230,
	"alti":145,
	"rxnb":2,
	"rxok":2,
	"rxfw":2,
	"ackr":100.0,
	"dwnb":2,
	"txnb":2
}}"""


def push(body: bytes | str, token: int = 0x1234, version: int = 2) -> bytes:
    raw = body.encode() if isinstance(body, str) else body
    return struct.pack(">BHB", version, token, gwmp.PUSH_DATA) + EUI + raw


def rxpk(**overrides: object) -> dict[str, object]:
    data = bytes(range(20))
    pk: dict[str, object] = {"tmst": 1000, "chan": 0, "rfch": 0, "freq": 868.1, "stat": 1, "modu": "LORA",
                             "datr": "SF10BW125", "codr": "4/5", "rssi": -80, "lsnr": -2.5, "size": len(data),
                             "data": base64.b64encode(data).decode()}
    pk.update(overrides)
    return {k: v for k, v in pk.items() if v is not None}


def test_spec_upstream_example() -> None:
    msg = gwmp.decode_upstream(push(SPEC_RXPK, token=0xBEEF))
    assert isinstance(msg, gwmp.PushData)
    assert msg.token == 0xBEEF and msg.gateway_eui == EUI
    assert msg.rejects == ("bad_data", "not_lora")
    (pk,) = msg.rxpk
    assert pk.data == base64.b64decode("ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass=")
    assert (pk.freq_hz, pk.sf, pk.bw_khz, pk.codr) == (863_009_810, 10, 125, "4/7")
    assert (pk.rssi, pk.lsnr_x10, pk.tmst, pk.chan, pk.stat) == (-38, 55, 3316387610, 0, 1)


def test_spec_stat_only_push() -> None:
    msg = gwmp.decode_upstream(push(SPEC_STAT))
    assert isinstance(msg, gwmp.PushData)
    assert msg.rxpk == () and msg.stat is not None and msg.stat["rxok"] == 2


def test_acks_echo_the_token() -> None:
    assert gwmp.encode_push_ack(0xA1B2) == bytes([2, 0xA1, 0xB2, 0x01])
    assert gwmp.encode_pull_ack(0x0001) == bytes([2, 0x00, 0x01, 0x04])


def test_pull_data_and_tx_ack() -> None:
    pull = gwmp.decode_upstream(struct.pack(">BHB", 2, 7, gwmp.PULL_DATA) + EUI)
    assert pull == gwmp.PullData(7, EUI)
    head = struct.pack(">BHB", 2, 9, gwmp.TX_ACK) + EUI
    assert gwmp.decode_upstream(head) == gwmp.TxAck(9, EUI, "NONE")  # no JSON = no error (5.5)
    spec = b'{"txpk_ack":{\n\t"error":"COLLISION_PACKET"\n}}'
    assert gwmp.decode_upstream(head + spec) == gwmp.TxAck(9, EUI, "COLLISION_PACKET")
    for error in gwmp.TX_ACK_ERRORS:
        body = json.dumps({"txpk_ack": {"error": error}}).encode()
        assert gwmp.decode_upstream(head + body).error == error  # type: ignore[union-attr]
    odd = gwmp.decode_upstream(head + b'{"txpk_ack":{"error":"WEIRD;DROP"}}')
    assert odd.error == "UNKNOWN:WEIRDDROP"  # type: ignore[union-attr]


def test_pull_resp_txpk() -> None:
    txpk = gwmp.TxPk(data=b"\x01\x02\x03", freq_hz=868_100_000, sf=12, bw_khz=125, power_dbm=14, tmst=2**32 + 5)
    raw = gwmp.encode_pull_resp(0x4242, txpk)
    assert raw[:4] == bytes([2, 0x42, 0x42, gwmp.PULL_RESP])
    body = json.loads(raw[4:])
    assert body == {"txpk": {"tmst": 5, "freq": 868.1, "rfch": 0, "powe": 14, "modu": "LORA",
                             "datr": "SF12BW125", "codr": "4/5", "ipol": True, "size": 3, "data": "AQID"}}
    imme = json.loads(gwmp.encode_pull_resp(1, gwmp.TxPk(b"x", 869_525_000, 9, 125, 27, immediate=True))[4:])
    assert imme["txpk"]["imme"] is True and "tmst" not in imme["txpk"]


def test_multiple_rxpk_crc_and_no_crc() -> None:
    body = json.dumps({"rxpk": [rxpk(stat=1), rxpk(stat=-1), rxpk(stat=0), rxpk(datr="SF7BW125")]})
    msg = gwmp.decode_upstream(push(body))
    assert isinstance(msg, gwmp.PushData)
    assert [p.stat for p in msg.rxpk] == [1, 0, 1]
    assert msg.rejects == ("crc_bad",)


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "truncated"),
        (b"\x02\x00", "truncated"),
        (struct.pack(">BHB", 1, 0, gwmp.PUSH_DATA) + EUI + b"{}", "unsupported_version"),
        (struct.pack(">BHB", 2, 0, gwmp.PUSH_ACK), "unexpected_type"),
        (struct.pack(">BHB", 2, 0, 0x7F) + EUI, "unexpected_type"),
        (struct.pack(">BHB", 2, 0, gwmp.PULL_DATA) + EUI[:5], "truncated"),
        (struct.pack(">BHB", 2, 0, gwmp.PULL_DATA) + EUI + b"x", "trailing_bytes"),
        (push("{}"), "empty_push"),
        (push("[]"), "bad_json"),
        (push('{"rxpk": [}'), "bad_json"),
        (push(b'{"rxpk":"\xff"}'), "bad_json"),
        (push('{"rxpk": NaN}'), "bad_json"),
        (push('{"a":' + "[" * 30_000 + "]" * 30_000 + "}"), "bad_json"),
        (push('{"rxpk":[' + "x" * 70_000 + "]}"), "too_long"),
        (push('{"rxpk": [{"freq": Infinity}]}'), "bad_json"),
        (push('{"rxpk": {}}'), "bad_type"),
        (push('{"stat": 3}'), "bad_type"),
        (push('{"rxpk": [], "x": ' + "9" * 5000 + "}"), "bad_json"),
    ],
)
def test_malformed_datagrams(datagram: bytes, reason: str) -> None:
    with pytest.raises(gwmp.GwmpError) as info:
        gwmp.decode_upstream(datagram)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"stat": None}, "missing_field"),
        ({"stat": True}, "bad_type"),
        ({"stat": 2}, "out_of_range"),
        ({"datr": "SF13BW125"}, "bad_datr"),
        ({"datr": "SF7BW126"}, "bad_datr"),
        ({"datr": 50000}, "bad_type"),
        ({"codr": "4/9"}, "bad_codr"),
        ({"freq": "868.1"}, "bad_type"),
        ({"freq": 2400.0}, "out_of_range"),
        ({"rssi": None}, "missing_field"),
        ({"rssi": -500}, "out_of_range"),
        ({"lsnr": 99.0}, "out_of_range"),
        ({"size": 21}, "size_mismatch"),
        ({"size": -1}, "out_of_range"),
        ({"data": "!!!!"}, "bad_data"),
        ({"data": "QUJD="}, "bad_data"),
        ({"data": "", "size": 0}, "empty_payload"),
        ({"tmst": 2**32}, "out_of_range"),
        ({"tmst": 1.5}, "bad_type"),
    ],
)
def test_bad_rxpk_entries_are_dropped_with_a_reason(overrides: dict[str, object], reason: str) -> None:
    good = rxpk()
    bad = rxpk(**overrides)
    for key in [k for k, v in overrides.items() if v is None]:
        bad.pop(key, None)
    msg = gwmp.decode_upstream(push(json.dumps({"rxpk": [good, bad]})))
    assert isinstance(msg, gwmp.PushData)
    assert len(msg.rxpk) == 1
    assert msg.rejects == (reason,)


def test_overflowing_number_is_out_of_range() -> None:
    text = json.dumps({"rxpk": [rxpk(freq=1.5)]}).replace("1.5", "1e999")
    msg = gwmp.decode_upstream(push(text))
    assert msg.rejects == ("out_of_range",)  # type: ignore[union-attr]


def test_unpadded_base64_is_accepted() -> None:
    pk = rxpk(data=base64.b64encode(b"abcd").decode().rstrip("="), size=4)
    msg = gwmp.decode_upstream(push(json.dumps({"rxpk": [pk]})))
    assert msg.rxpk[0].data == b"abcd"  # type: ignore[union-attr]


def _valid_datagrams() -> list[bytes]:
    head = struct.pack(">BHB", 2, 77, gwmp.TX_ACK) + EUI
    return [
        push(json.dumps({"rxpk": [rxpk(), rxpk(stat=-1)], "stat": {"rxnb": 1}})),
        push(SPEC_RXPK),
        push(SPEC_STAT),
        struct.pack(">BHB", 2, 3, gwmp.PULL_DATA) + EUI,
        head,
        head + b'{"txpk_ack":{"error":"TOO_LATE"}}',
    ]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and buf:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 2:
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = rng.choice([b"{", b"}", b"[", b"]", b'"', b",", b":", b"null", b"-1", b"1e999",
                                       b"true", b"\x00", b"\xff", b"\\u0000", rng.randbytes(3)])
        elif op == 3 and len(buf) > 1:
            i, j = sorted(rng.sample(range(len(buf)), 2))
            del buf[i:j]
        elif op == 4 and buf:
            buf[0] = rng.choice([0, 1, 2, 3, 255])
        elif len(buf) > 3:
            buf[3] = rng.randrange(8)
    return bytes(buf)


def test_fuzz_100k_datagrams_only_gwmp_errors() -> None:
    rng = random.Random(1700)
    seeds = _valid_datagrams()
    reasons: dict[str, int] = {}
    decoded = 0
    for i in range(100_000):
        noise = i % 10 == 0
        datagram = rng.randbytes(rng.randrange(0, 120)) if noise else _mutate(rng, rng.choice(seeds))
        try:
            gwmp.decode_upstream(datagram)
            decoded += 1
        except gwmp.GwmpError as exc:
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
    assert decoded + sum(reasons.values()) == 100_000
    assert decoded > 1000  # mutations that keep the datagram valid are exercised too
    assert {"truncated", "unsupported_version", "bad_json", "unexpected_type"} <= set(reasons)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["tmst", "freq", "stat", "modu", "datr", "codr", "rssi", "lsnr", "size",
                                        "data", "chan", "rfch", "time"]), json_values))
def test_fuzz_rxpk_objects(obj: dict[str, object]) -> None:
    try:
        msg = gwmp.decode_upstream(push(json.dumps({"rxpk": [obj]})))
    except gwmp.GwmpError:
        return
    assert isinstance(msg, gwmp.PushData)
    assert len(msg.rxpk) + len(msg.rejects) == 1
