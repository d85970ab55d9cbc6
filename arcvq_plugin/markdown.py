"""Markdown tables: the one formatter behind every table this package prints or writes.

``markdown_table(["Method", "PSNR"], [["VQ-VAE", "26.48"]])`` gives the lines::

    | Method | PSNR |
    |---|---|
    | VQ-VAE | 26.48 |

Callers format their cells (numbers, ``n/a``) and add titles and notes around the lines.
"""
from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["markdown_table"]


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: ``header``, the rule (``|---|`` per column), one line per row.

    Args:
        header: the column names (>= 1).
        rows: each row's cells, already formatted, as many as ``header`` has.
    """
    if not header:
        raise ValueError("header must name at least one column")
    lines = [_table_row(header), "|---" * len(header) + "|"]
    for cells in rows:
        if len(cells) != len(header):
            raise ValueError(f"a row has {len(cells)} cells, the header {len(header)} columns: {list(cells)}")
        lines.append(_table_row(cells))
    return lines
