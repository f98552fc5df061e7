"""The runnable recipes of docs/integrations.md run as written, and print what the doc says."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
MARK = "<!-- tested: tests/test_integration_docs.py -->"


def recipe_blocks() -> list[str]:
    text = DOC.read_text()
    return re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", text, flags=re.S)


def expected_outputs(block: str) -> list[str]:
    """Printed values the doc states: ``print(...)  # [..]`` or a ``# [..]`` line right after a print."""
    lines = block.splitlines()
    expected = []
    for i, line in enumerate(lines):
        if not line.startswith("print("):
            continue
        inline = re.search(r"\)\s+#\s*(\[.*)$", line)
        if inline:
            expected.append(inline.group(1).strip())
        elif i + 1 < len(lines) and lines[i + 1].startswith("# ["):
            expected.append(lines[i + 1][2:].strip())
    return expected


def test_the_doc_has_runnable_recipes():
    assert len(recipe_blocks()) == 4


@pytest.mark.parametrize("index", range(4))
def test_recipe_runs_and_prints_what_the_doc_says(index):
    block = recipe_blocks()[index]
    expected = expected_outputs(block)
    assert expected, "each tested recipe states its output"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, f"{DOC.name}[{index}]", "exec"), {"__name__": "__recipe__"})
    printed = out.getvalue().splitlines()
    for value in expected:
        assert value in printed, (value, printed)
