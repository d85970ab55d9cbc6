"""docs/RELIABILITY.md stays true: at least 30 bad inputs, each naming tests that exist."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("ArcQuantizer", "arcvq-train", "arcvq-convert", "arcvq-eval", "arcvq-tokens", "arcvq-sample-ldm",
         "arcvq-patch", "arcvq-reproduce")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_row_names_tests_that_exist():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 30
    assert [int(row.split("|")[1]) for row in rows] == list(range(1, len(rows) + 1))
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert all(any(tool in section for section in sections) for tool in TOOLS)
    previous: list = []
    for row in rows:
        tests_cell = row.split("|")[-2]
        references = previous if tests_cell.strip() == "same" else re.findall(r"`(?:([\w/]+\.py))?::(\w+)", tests_cell)
        assert references, row
        previous = references
        current = None
        for file, name in references:
            current = file or current
            assert current is not None, row
            assert name in _test_names(ROOT / "tests" / current), f"{current}::{name} (row: {row[:60]})"
