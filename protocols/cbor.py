# A small, bounded CBOR (RFC 8949) encoder/decoder for the device-side protocol code.
# MicroPython subset: runs on ESP32 MicroPython, the WebAssembly build in CI, and CPython.
#
# Supported: unsigned and negative integers (up to 64 bits), byte strings, text strings, arrays, maps,
# false/true/null. Refused on decode: indefinite lengths, floats, tags, simple values other than
# false/true/null, duplicate map keys, nesting deeper than max_depth, more than max_items items.
# The encoder writes the deterministic form (RFC 8949 section 4.2.1): shortest heads, map keys sorted by
# their encoded bytes.


class CBORError(ValueError):
    """Malformed or unsupported CBOR. ``reason`` is one of: bad_cbor, too_deep, trailing_bytes."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail


def _head(out: bytearray, major: int, n: int) -> None:
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(n.to_bytes(2, "big"))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(n.to_bytes(4, "big"))
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out.extend(n.to_bytes(8, "big"))
    else:
        raise CBORError("bad_cbor", "integer too large")


def _enc(out: bytearray, obj: object) -> None:
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            _head(out, 0, obj)
        else:
            _head(out, 1, -1 - obj)
    elif isinstance(obj, (bytes, bytearray)):
        _head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (list, tuple)):
        _head(out, 4, len(obj))
        for item in obj:
            _enc(out, item)
    elif isinstance(obj, dict):
        pairs = []
        for k, v in obj.items():
            key_buf = bytearray()
            _enc(key_buf, k)
            pairs.append((bytes(key_buf), v))
        pairs.sort(key=_first)
        _head(out, 5, len(pairs))
        for kb, v in pairs:
            out.extend(kb)
            _enc(out, v)
    else:
        raise CBORError("bad_cbor", "cannot encode " + str(type(obj)))


def _first(pair: tuple) -> bytes:  # type: ignore[type-arg]
    return pair[0]  # type: ignore[no-any-return]


def dumps(obj: object) -> bytes:
    """Encode ``obj`` in deterministic CBOR."""
    out = bytearray()
    _enc(out, obj)
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth
        self.items = max_items

    def _arg(self, info: int) -> int:
        data = self.data
        pos = self.pos
        if info < 24:
            return info
        if info == 24:
            n = 1
        elif info == 25:
            n = 2
        elif info == 26:
            n = 4
        elif info == 27:
            n = 8
        else:
            # 28..30 reserved, 31 indefinite length: not accepted
            raise CBORError("bad_cbor", "unsupported additional info " + str(info))
        if pos + n > len(data):
            raise CBORError("bad_cbor", "truncated")
        self.pos = pos + n
        return int.from_bytes(data[pos : pos + n], "big")

    def item(self, depth: int) -> object:
        data = self.data
        if self.pos >= len(data):
            raise CBORError("bad_cbor", "truncated")
        self.items -= 1
        if self.items < 0:
            raise CBORError("bad_cbor", "too many items")
        ib = data[self.pos]
        self.pos += 1
        major = ib >> 5
        info = ib & 0x1F
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 22:
                return None
            raise CBORError("bad_cbor", "unsupported simple/float value")
        if major == 6:
            raise CBORError("bad_cbor", "tags not accepted")
        n = self._arg(info)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2 or major == 3:
            end = self.pos + n
            if end > len(data):
                raise CBORError("bad_cbor", "truncated string")
            raw = data[self.pos : end]
            self.pos = end
            if major == 2:
                return bytes(raw)
            try:
                return bytes(raw).decode("utf-8")
            except Exception:
                raise CBORError("bad_cbor", "invalid utf-8") from None
        # containers
        if depth >= self.max_depth:
            raise CBORError("too_deep", "nesting deeper than " + str(self.max_depth))
        # every item needs at least one byte: refuse counts the remaining input cannot hold
        if n > len(data) - self.pos:
            raise CBORError("bad_cbor", "length exceeds input")
        if major == 4:
            arr = []
            for _ in range(n):
                arr.append(self.item(depth + 1))
            return arr
        m = {}
        for _ in range(n):
            k = self.item(depth + 1)
            if isinstance(k, (list, dict)):
                raise CBORError("bad_cbor", "container as map key")
            if k in m:
                raise CBORError("bad_cbor", "duplicate map key")
            m[k] = self.item(depth + 1)
        return m


def loads(data: bytes, max_depth: int = 8, max_items: int = 1024) -> object:
    """Decode exactly one CBOR item that fills ``data``; raise CBORError otherwise.

    ``max_depth`` counts container levels: 0 allows only scalars, 1 a flat array or map of scalars.
    """
    r = _Reader(data, max_depth + 1, max_items)
    obj = r.item(1)
    if r.pos != len(data):
        raise CBORError("trailing_bytes", str(len(data) - r.pos) + " bytes after the item")
    return obj
