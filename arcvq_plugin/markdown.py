"""Markdown tables: the one formatter behind every table this package prints or writes.

``markdown_table(["Method", "PSNR"], [["VQ-VAE", "26.48"]])`` gives the lines::

    | Method | PSNR |
    |---|---|
    | VQ-VAE | 26.48 |

Callers format their cells (numbers, ``n/a``) and add titles and notes around the lines;
``align="lr"`` left-aligns the first column and right-aligns the second (``|---|---:|``).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

__all__ = ["markdown_table"]

_RULES = {"l": "---", "r": "---:"}
"""The rule cell of a left-aligned (``l``) and a right-aligned (``r``) column."""


def _table_row(cells: Sequence[str]) -> str:
    """``| a | b |``; an empty cell is one space wide (``| | |``)."""
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   align: Optional[str] = None) -> list[str]:
    """The lines of a markdown table: ``header``, the rule (``|---|`` per column), one line per row.

    Args:
        header: the column names (>= 1).
        rows: each row's cells, already formatted, as many as ``header`` has.
        align: None (default: every column left, ``|---|``) or one letter per column, ``l`` (left) or
            ``r`` (right, ``|---:|``).
    """
    if not header:
        raise ValueError("header must name at least one column")
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - set(_RULES):
        raise ValueError(f"align must be one letter 'l' or 'r' per column ({len(header)}), got {align!r}")
    lines = [_table_row(header), "|" + "|".join(_RULES[a] for a in align) + "|"]
    for cells in rows:
        if len(cells) != len(header):
            raise ValueError(f"a row has {len(cells)} cells, the header {len(header)} columns: {list(cells)}")
        lines.append(_table_row(cells))
    return lines
