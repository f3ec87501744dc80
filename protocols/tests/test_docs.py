"""docs/protocol.md embeds generated parts; they must match the code and the vectors."""

from __future__ import annotations

import pytest

from lifeline.tools import gen_docs


@pytest.mark.parametrize("name", sorted(gen_docs.blocks()))
def test_generated_block_is_current(name: str) -> None:
    current = gen_docs.block(gen_docs.DOC.read_text(), name)
    assert current is not None, f"docs/protocol.md lacks the {name} block"
    assert current == gen_docs.blocks()[name], "run: python -m lifeline.tools.gen_docs"
