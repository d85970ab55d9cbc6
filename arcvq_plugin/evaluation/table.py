"""The paper's results table: PSNR | SSIM | LPIPS | rFID, plus codebook usage, perplexity, dead codes."""
from __future__ import annotations

from typing import Mapping, Optional

from arcvq_plugin.markdown import markdown_table

__all__ = ["TABLE_COLUMNS", "format_table"]

# (header, result key, format); usage is printed in percent
TABLE_COLUMNS = (
    ("PSNR", "psnr", "{:.2f}"),
    ("SSIM", "ssim", "{:.4f}"),
    ("LPIPS", "lpips", "{:.4f}"),
    ("rFID", "rfid", "{:.2f}"),
    ("Usage %", "usage", "{:.1f}"),
    ("Perplexity", "perplexity", "{:.1f}"),
    ("Dead codes", "dead_codes", "{:d}"),
)


def _cell(row: Mapping, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None and isinstance(row.get("codebook"), Mapping):
        value = row["codebook"].get(key)
    if value is None:
        return "n/a"
    return fmt.format(100.0 * value if key == "usage" else value)


def _notes(rows: Mapping[str, Mapping]) -> list[str]:
    """Why metrics are unavailable (unless not requested) and which weights were substitutes, each once."""
    notes: dict[str, str] = {}
    for name, row in rows.items():
        for metric, reason in (row.get("unavailable") or {}).items():
            if reason != "not requested":
                notes.setdefault(f"{metric} unavailable: {reason}", name)
        if row.get("substitute_weights"):
            for metric, provenance in (row.get("weights") or {}).items():
                if "substitute weights" in provenance:
                    notes.setdefault(f"{metric}: {provenance}", name)
    return list(notes)


def format_table(rows: Mapping[str, Mapping], title: Optional[str] = None) -> str:
    """A Markdown table with one row per ``{name: result}``.

    Each result is a :func:`reconstruction_metrics` dict, optionally with a ``"codebook"`` entry
    (:func:`codebook_metrics`) or those keys at top level; missing values print as ``n/a``.
    Below the table: why metrics are unavailable, and which weights were substitutes.
    """
    header = ["Method", *(name for name, _, _ in TABLE_COLUMNS)]
    cells = [[name, *(_cell(row, key, fmt) for _, key, fmt in TABLE_COLUMNS)] for name, row in rows.items()]
    lines = ([f"**{title}**", ""] if title else []) + markdown_table(header, cells)
    return "\n".join(lines + [f"- {note}" for note in _notes(rows)])
