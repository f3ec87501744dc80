"""Generated blocks of docs/protocol.md (registry table, annotated example frame).

`python -m lifeline.tools.gen_docs` refreshes them; protocols/tests/test_docs.py fails when they drift.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lifeline.protocols import render, schema_table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"


def example() -> str:
    vectors = json.loads((ROOT / "protocols" / "vectors" / "frames.json").read_text())
    vec = next(v for v in vectors if v["name"] == "water_level/queued+test")
    data: str = vec["frame"]
    parts = [("version|suite", data[0:2]), ("kind", data[2:4]), ("flags", data[4:6]), ("device id", data[6:22]),
             ("fcnt", data[22:30]), ("time", data[30:38]), ("body", data[38:-16]), ("MIC", data[-16:])]
    lines = [f"root key  {vec['root_key']}", f"fields    {json.dumps(vec['fields'])}", f"frame     {data}"]
    lines += [f"  {name:<14} {hexs}" for name, hexs in parts]
    return "\n".join(lines) + "\n"


SCHEMA = ROOT / "protocols" / "schema.py"
PACKED_BEGIN = ("# packed:begin (generated from schema_table.KINDS by `python -m lifeline.tools.gen_docs`;"
                " do not edit)\n")
PACKED_END = "# packed:end"
SCHEMA_LAZY = ROOT / "protocols" / "rekey.py"  # schema_table.LAZY's packed kinds


def blocks() -> dict[str, str]:
    return {"registry": render.registry_markdown() + "\n", "example": example()}


def packed_block(text: str) -> str | None:
    if PACKED_BEGIN not in text:
        return None
    return text.split(PACKED_BEGIN, 1)[1].split(PACKED_END, 1)[0]


def block(text: str, name: str) -> str | None:
    m = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    return m.group(1) if m else None


def main() -> None:
    text = DOC.read_text()
    for name, content in blocks().items():
        start, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = head + start + content + end + tail
    DOC.write_text(text)
    src = SCHEMA.read_text()
    head, _, rest = src.partition(PACKED_BEGIN)
    _, _, tail = rest.partition(PACKED_END)
    SCHEMA.write_text(head + PACKED_BEGIN + schema_table.packed_source() + PACKED_END + tail)
    src = SCHEMA_LAZY.read_text()
    head, _, rest = src.partition(PACKED_BEGIN)
    _, _, tail = rest.partition(PACKED_END)
    SCHEMA_LAZY.write_text(head + PACKED_BEGIN + schema_table.packed_source(lazy=True) + PACKED_END + tail)


if __name__ == "__main__":
    main()
