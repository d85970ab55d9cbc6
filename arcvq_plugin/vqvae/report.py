"""The ablation table: the paper's layout, per-seed rows, seed means and the paper's numbers beside.

``results`` (what ``reproduce`` writes to results.json under ``"rows"``) maps a row name to
``{"seeds": {seed: metrics}, "mean": metrics}``, where metrics has ``psnr, ssim, lpips, rfid``
(None when unavailable), ``usage`` (fraction), ``perplexity``, ``dead_codes`` and ``train_seconds``.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

__all__ = ["PAPER_RESULTS", "ROW_LABELS", "format_table", "mean_metrics"]

ROW_LABELS: dict[str, str] = {
    "vq": "VQ-VAE",
    "cosine": "cosine matching only",
    "bbnr": "+ BBNR",
    "arcvq": "ArcVQ-VAE",
}

# The paper's tables (500 epochs, batch 1024); None: not reported for that row.
PAPER_RESULTS: dict[str, dict[str, dict[str, Optional[float]]]] = {
    "mnist": {
        "vq": {"psnr": 26.48, "ssim": 0.9777, "lpips": 0.0282, "rfid": 3.43},
        "cosine": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
        "bbnr": {"psnr": 27.39, "ssim": 0.9814, "lpips": None, "rfid": 2.71},
        "arcvq": {"psnr": 28.01, "ssim": 0.9840, "lpips": 0.0217, "rfid": 1.68},
    },
    "cifar10": {
        "vq": {"psnr": 23.32, "ssim": 0.8595, "lpips": 0.2504, "rfid": 39.67},
        "cosine": {"psnr": 23.37, "ssim": 0.8607, "lpips": None, "rfid": None},
        "bbnr": {"psnr": 23.97, "ssim": 0.8774, "lpips": None, "rfid": 35.18},
        "arcvq": {"psnr": 24.78, "ssim": 0.8989, "lpips": 0.1857, "rfid": 26.91},
    },
}

METRIC_KEYS = ("psnr", "ssim", "lpips", "rfid", "usage", "perplexity", "dead_codes", "train_seconds")


def mean_metrics(per_seed: Sequence[Mapping]) -> dict:
    """Average each metric over seeds; a metric missing (None) in any seed is None."""
    if not per_seed:
        raise ValueError("per_seed must hold at least one seed's metrics")
    mean = {}
    for key in METRIC_KEYS:
        values = [m.get(key) for m in per_seed]
        mean[key] = None if any(v is None for v in values) else sum(values) / len(values)
    return mean


def _cell(value: Optional[float], digits: int, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value * scale:.{digits}f}"


def _metric_cells(m: Mapping, n_e: int) -> list[str]:
    used = None if m.get("usage") is None else m["usage"] * n_e
    return [_cell(m.get("psnr"), 2), _cell(m.get("ssim"), 4), _cell(m.get("lpips"), 4), _cell(m.get("rfid"), 2),
            _cell(m.get("usage"), 1, 100.0), _cell(used, 0), _cell(m.get("perplexity"), 1),
            _cell(m.get("train_seconds"), 0)]


def format_table(results: Mapping[str, Mapping], dataset: str, n_e: int, title: str) -> str:
    """Markdown: one line per row and seed, the seed mean, then the paper's table for ``dataset``."""
    header = ("| Method | seed | PSNR | SSIM | LPIPS | rFID | usage % | codes used | perplexity | train s |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    lines = [f"### {title}", "", header]
    for row, result in results.items():
        label = ROW_LABELS.get(row, row)
        seeds = result["seeds"]
        for seed, metrics in seeds.items():
            lines.append("| " + " | ".join([label, str(seed)] + _metric_cells(metrics, n_e)) + " |")
        if len(seeds) > 1:
            lines.append("| " + " | ".join([f"**{label}**", "**mean**"] + _metric_cells(result["mean"], n_e)) + " |")
    paper = PAPER_RESULTS.get(dataset)
    if paper is not None:
        lines += ["", f"Paper ({dataset}, 500 epochs, batch 1024):", "",
                  "| Method | PSNR | SSIM | LPIPS | rFID |", "|---|---|---|---|---|"]
        for row in results:
            p = paper.get(row, {})
            lines.append(f"| {ROW_LABELS.get(row, row)} | {_cell(p.get('psnr'), 2)} | {_cell(p.get('ssim'), 4)} | "
                         f"{_cell(p.get('lpips'), 4)} | {_cell(p.get('rfid'), 2)} |")
    return "\n".join(lines) + "\n"
