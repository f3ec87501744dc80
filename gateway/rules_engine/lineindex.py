"""Where a key sits in a TOML file, so semantic errors can name the line (``tomllib`` keeps no positions).

:func:`index` scans the text once and maps key paths to line numbers: table headers (``[a.b]``), array
of tables (``[[rule]]`` -> ``("rule", 0)``, ``[[rule.action]]`` -> ``("rule", 0, "action", 1)``) and
``key = value`` lines (dotted keys included). Keys inside inline tables share their parent's line.
:func:`line_of` returns the line of the longest known prefix of a path. Multi-line strings and arrays are
skipped over, so a ``key = `` inside them is never mistaken for a key.
"""

from __future__ import annotations

from collections.abc import Sequence

Path = tuple[str | int, ...]


def _split_key(text: str) -> list[str]:
    """``a."b.c".d`` -> ["a", "b.c", "d"] (bare and quoted keys)."""
    parts: list[str] = []
    buf: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 2
                continue
            if c == quote:
                quote = ""
            else:
                buf.append(c)
        elif c in "\"'":
            quote = c
        elif c == ".":
            parts.append("".join(buf).strip())
            buf = []
        else:
            buf.append(c)
        i += 1
    parts.append("".join(buf).strip())
    return parts


def _key_end(line: str) -> int:
    """Index of the ``=`` that ends the key part, or -1."""
    quote = ""
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "=":
            return i
        elif c == "#":
            return -1
    return -1


def _scan_value(text: str, depth: int) -> tuple[int, str]:
    """Bracket depth after ``text`` and an open multi-line string delimiter, if one is left open."""
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if text.startswith('"""', i) or text.startswith("'''", i):
            delim = text[i:i + 3]
            end = text.find(delim, i + 3)
            if end < 0:
                return depth, delim
            i = end + 3
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if (c == '"' and text[j] == "\\") else 1
            i = j + 1
            continue
        if c == "#":
            break
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return max(depth, 0), ""


def index(text: str) -> dict[Path, int]:
    idx: dict[Path, int] = {}
    counts: dict[Path, int] = {}
    current: Path = ()
    open_string = ""
    depth = 0

    def resolve(names: Sequence[str]) -> Path:
        out: Path = ()
        for name in names:
            out = (*out, name)
            if out in counts:
                out = (*out, counts[out] - 1)
        return out

    for lineno, raw in enumerate(text.splitlines(), 1):
        if open_string:
            end = raw.find(open_string)
            if end < 0:
                continue
            rest = raw[end + 3:]
            open_string = ""
            depth, open_string = _scan_value(rest, depth)
            continue
        if depth > 0:
            depth, open_string = _scan_value(raw, depth)
            continue
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("[["):
            end = s.find("]]")
            if end < 0:
                continue
            names = _split_key(s[2:end])
            base = (*resolve(names[:-1]), names[-1])
            n = counts.get(base, 0)
            counts[base] = n + 1
            current = (*base, n)
            idx[current] = lineno
            idx.setdefault(base, lineno)
            continue
        if s.startswith("["):
            end = s.find("]")
            if end < 0:
                continue
            current = resolve(_split_key(s[1:end]))
            idx.setdefault(current, lineno)
            continue
        cut = _key_end(s)
        if cut <= 0:
            continue
        path = (*current, *_split_key(s[:cut]))
        idx.setdefault(path, lineno)
        depth, open_string = _scan_value(s[cut + 1:], 0)
    return idx


def line_of(idx: dict[Path, int], path: Path) -> int | None:
    for i in range(len(path), 0, -1):
        line = idx.get(path[:i])
        if line is not None:
            return line
    return None
