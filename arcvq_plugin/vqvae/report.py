"""The tables of ``arcvq-reproduce``: per-seed rows, mean +- std, paired differences, the paper's numbers.

A *table* (what ``reproduce`` writes to results.json) is a dict::

    {"name": "ablation" | "sweep_<key>", "title": str, "reference": row name,
     "rows": {row: {"label", "sweep": {"key", "value"} | None, "seeds": {seed: metrics},
                    "summary": {metric: {"mean", "std", "n"}}, "mean": {metric: mean}}},
     "differences": {row: {metric: statistics.paired_difference(...)}}}

``metrics`` has ``psnr, ssim, lpips, rfid`` (None when not computed), ``usage`` (fraction),
``used_codes``, ``perplexity``, ``dead_codes``, ``mean_code_norm``, ``clipped_last`` (fraction
of codes the norm bound clipped at the last step, None without BBNR), ``train_seconds`` and
``train_cpu_seconds``. The paper's numbers come from its Tables 1/6 (ablation; CVQ-VAE from Table 1),
11 (cosine matching, CIFAR-10), 12 (fixed bound R = 1), 4 (top-k, m, s) and 5 (code dimension, FFHQ);
the rotation-trick row (its future work) has none.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

from arcvq_plugin.markdown import markdown_table
from arcvq_plugin.vqvae.statistics import paired_difference, seed_summary

__all__ = ["DIFFERENCE_METRICS", "METRIC_KEYS", "PAPER_RESULTS", "PAPER_SWEEPS", "ROW_LABELS", "build_table",
           "format_curve_differences", "format_table", "paper_lines"]

ROW_LABELS: dict[str, str] = {
    "vq": "VQ-VAE",
    "cosine": "cosine matching only",
    "bbnr": "+ BBNR",
    "arcvq": "ArcVQ-VAE",
    "arcvq_fixed_bound": "ArcVQ-VAE, fixed bound R = 1",
    "cvq": "CVQ-VAE",
    "arcvq_rotation": "ArcVQ-VAE, rotation trick",
    "simvq": "SimVQ",
    "ibq": "IBQ",
    "fsq": "FSQ",
}

# The paper's tables (500 epochs, batch 1024); None: not reported for that row.
PAPER_RESULTS: dict[str, dict[str, dict[str, Optional[float]]]] = {
    "mnist": {
        "vq": {"psnr": 26.48, "ssim": 0.9777, "lpips": 0.0282, "rfid": 3.43},
        "cosine": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
        "bbnr": {"psnr": 27.39, "ssim": 0.9814, "lpips": None, "rfid": 2.71},
        "arcvq": {"psnr": 28.01, "ssim": 0.9840, "lpips": 0.0217, "rfid": 1.68},
        "arcvq_fixed_bound": {"psnr": 27.47, "ssim": 0.9786, "lpips": 0.0257, "rfid": 1.97},
        "cvq": {"psnr": 27.87, "ssim": 0.9833, "lpips": 0.0222, "rfid": 1.80},
        "arcvq_rotation": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
        "simvq": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
        "ibq": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
        "fsq": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
    },
    "cifar10": {
        "vq": {"psnr": 23.32, "ssim": 0.8595, "lpips": 0.2504, "rfid": 39.67},
        "cosine": {"psnr": 23.37, "ssim": 0.8607, "lpips": 0.2466, "rfid": 39.04},
        "bbnr": {"psnr": 23.97, "ssim": 0.8774, "lpips": None, "rfid": 35.18},
        "arcvq": {"psnr": 24.78, "ssim": 0.8989, "lpips": 0.1857, "rfid": 26.91},
        "arcvq_fixed_bound": {"psnr": 24.01, "ssim": 0.8797, "lpips": 0.2112, "rfid": 30.70},
        "cvq": {"psnr": 24.72, "ssim": 0.8978, "lpips": 0.1883, "rfid": 24.73},
        "arcvq_rotation": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
        "simvq": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
        "ibq": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
        "fsq": {"psnr": None, "ssim": None, "lpips": None, "rfid": None},
    },
}
PAPER_NOTES: dict[str, str] = {
    "mnist": "Tables 1 and 6 (CVQ-VAE: Table 1); the fixed-bound row is Table 12 (Appendix D.4, whose ArcVQ-VAE row "
             "reads 28.13 / 0.9843 / 0.0213 / 1.59); cosine matching only is reported for CIFAR-10 only; the "
             "rotation trick is the paper's future work, without numbers."
             " SimVQ, IBQ and FSQ have no published numbers for this VQ-VAE (their papers report ImageNet tokenizers: "
             "SimVQ rFID 2.24 at K = 65,536, 128 x 128, youngsheen/SimVQ README Table 1; IBQ rFID 1.37 at K = 16,384, "
             "256 x 256, SEED-Voken docs/IBQ.md), so their rows show none.",
    "cifar10": "Tables 1 and 6 (CVQ-VAE: Table 1); cosine matching only is Table 11 (Appendix D.3); the fixed-bound "
               "row is Table 12 (Appendix D.4, whose ArcVQ-VAE row reads 24.71 / 0.8976 / 0.1928 / 27.17); the "
               "rotation trick is the paper's future work, without numbers."
               " SimVQ, IBQ and FSQ have no published numbers for this VQ-VAE (their papers report ImageNet tokenizers: "
               "SimVQ rFID 2.24 at K = 65,536, 128 x 128, youngsheen/SimVQ README Table 1; IBQ rFID 1.37 at K = 16,384, "
               "256 x 256, SEED-Voken docs/IBQ.md), so their rows show none.",
}

# Table 4 (ArcVQ-VAE, MNIST and CIFAR-10): value -> (PSNR, SSIM, rFID); Table 5 (FFHQ, VQGAN with
# K = 1024): D -> (mean code norm, usage, PSNR, SSIM, rFID).
PAPER_SWEEPS: dict[str, dict[str, Any]] = {
    "arc_top_k": {"source": "Table 4", "columns": ("psnr", "ssim", "rfid"), "values": {
        "mnist": {1: (28.07, 0.9841, 1.70), 3: (28.01, 0.9840, 1.68), 8: (28.19, 0.9844, 1.72)},
        "cifar10": {1: (24.70, 0.8990, 27.08), 3: (24.78, 0.8989, 26.91), 8: (24.69, 0.8966, 27.02)}}},
    "arc_m": {"source": "Table 4", "columns": ("psnr", "ssim", "rfid"), "values": {
        "mnist": {0.1: (28.01, 0.9840, 1.68), 0.5: (28.05, 0.9840, 1.77), 1.0: (28.03, 0.9844, 1.72)},
        "cifar10": {0.1: (24.78, 0.8989, 26.91), 0.5: (24.75, 0.8980, 27.93), 1.0: (24.68, 0.8965, 28.52)}}},
    "arc_s": {"source": "Table 4", "columns": ("psnr", "ssim", "rfid"), "values": {
        "mnist": {5: (28.03, 0.9839, 1.65), 10: (28.01, 0.9840, 1.68), 20: (27.92, 0.9835, 1.87)},
        "cifar10": {5: (24.65, 0.8980, 26.83), 10: (24.78, 0.8989, 26.91), 20: (23.95, 0.8970, 28.90)}}},
    "embed_dim": {"source": "Table 5 (FFHQ, the VQGAN tokenizer with K = 1024, not this VQ-VAE)",
                  "columns": ("mean_code_norm", "usage", "psnr", "ssim", "rfid"), "values": {
        "any": {4: (1.81, 0.98, 25.69, 0.8021, 2.71), 8: (1.95, 0.87, 26.71, 0.8124, 2.24),
                16: (2.64, 0.78, 26.28, 0.8128, 2.14)}}},
}

METRIC_KEYS = ("psnr", "ssim", "lpips", "rfid", "usage", "used_codes", "perplexity", "dead_codes", "mean_code_norm",
               "clipped_last", "train_seconds", "train_cpu_seconds")
DIFFERENCE_METRICS = ("psnr", "ssim", "lpips", "rfid", "usage")
# the columns of the per-seed and the mean +- std tables
_SEED_TABLE_COLUMNS = ("psnr", "ssim", "lpips", "rfid", "usage", "used_codes", "perplexity", "mean_code_norm",
                       "clipped_last", "train_seconds")
_DIGITS = {"psnr": 2, "ssim": 4, "lpips": 4, "rfid": 2, "usage": 1, "used_codes": 0, "perplexity": 1,
           "mean_code_norm": 3, "clipped_last": 1, "train_seconds": 0, "train_cpu_seconds": 0}
_PERCENT = ("usage", "clipped_last")
_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "rfid": "rFID", "usage": "usage %",
          "used_codes": "codes used", "perplexity": "perplexity", "mean_code_norm": "mean code norm",
          "clipped_last": "clipped at last step %", "train_seconds": "train s", "train_cpu_seconds": "train CPU s"}


def build_table(name: str, title: str, reference: str, rows: Mapping[str, Mapping]) -> dict:
    """A table dict (module doc) from ``rows``: ``{row: {"label", "sweep", "seeds": {seed: metrics}}}``.

    Adds each row's ``summary`` (mean, std, n per metric) and ``mean``, and the paired differences
    ``reference - row`` of :data:`DIFFERENCE_METRICS` for every other row.
    """
    if reference not in rows:
        raise ValueError(f"reference row {reference!r} is not among the rows {list(rows)}")
    table_rows = {}
    for row, entry in rows.items():
        seeds = {int(s): dict(m) for s, m in entry["seeds"].items()}
        if not seeds:
            raise ValueError(f"row {row!r} has no seed")
        summary = {key: seed_summary([m.get(key) for m in seeds.values()]) for key in METRIC_KEYS}
        table_rows[row] = {"label": entry["label"], "sweep": entry.get("sweep"), "seeds": seeds,
                           "summary": summary, "mean": {k: v["mean"] for k, v in summary.items()}}
    reference_seeds = table_rows[reference]["seeds"]
    differences = {}
    for row, entry in table_rows.items():
        if row == reference:
            continue
        differences[row] = {}
        for metric in DIFFERENCE_METRICS:
            d = paired_difference({s: m.get(metric) for s, m in reference_seeds.items()},
                                  {s: m.get(metric) for s, m in entry["seeds"].items()})
            if d is not None:
                differences[row][metric] = d
    return {"name": name, "title": title, "reference": reference, "rows": table_rows, "differences": differences}


def _number(value: Optional[float], metric: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    scale = 100.0 if metric in _PERCENT else 1.0
    return f"{value * scale:{'+' if signed else ''}.{_DIGITS.get(metric, 3)}f}"


def _mean_std_cell(summary: Mapping, metric: str) -> str:
    """``mean ± std`` of one metric's seed summary (``statistics.seed_summary``); ``n/a`` without a mean."""
    s = summary[metric]
    if s["mean"] is None:
        return "n/a"
    return _number(s["mean"], metric) + ("" if s["std"] is None else f" ± {_number(s['std'], metric)}")


def _difference_cell(d: Optional[Mapping], metric: str) -> str:
    if d is None:
        return "n/a"
    cell = _number(d["mean"], metric, signed=True)
    if d["interval"] is not None:
        low, high = d["interval"]
        cell += f" [{_number(low, metric, signed=True)}, {_number(high, metric, signed=True)}]"
    return cell


def _resolved(differences: Mapping[str, Mapping]) -> str:
    verdicts = []
    for metric, d in differences.items():
        if d["resolved"] is None:
            continue
        verdicts.append(f"{_NAMES[metric]}: {'yes' if d['resolved'] else 'no'}")
    return ", ".join(verdicts) if verdicts else "no interval (1 seed)"


def _paper_ablation_lines(table: Mapping, dataset: str) -> list[str]:
    paper = PAPER_RESULTS.get(dataset)
    if paper is None:
        return [f"The paper reports no {dataset} ablation."]
    columns = ("psnr", "ssim", "lpips", "rfid")
    rows = [[entry["label"], *(_number(paper.get(row, {}).get(c), c) for c in columns)]
            for row, entry in table["rows"].items()]
    return [f"Paper ({dataset}, 500 epochs, batch 1024; {PAPER_NOTES[dataset]}):", "",
            *markdown_table(["Method", *(_NAMES[c] for c in columns)], rows)]


def _paper_sweep_lines(sweep_key: str, dataset: str) -> list[str]:
    paper = PAPER_SWEEPS.get(sweep_key)
    values = None if paper is None else paper["values"].get(dataset, paper["values"].get("any"))
    if values is None:
        return [f"The paper reports no sweep of {sweep_key} on {dataset}."]
    columns = paper["columns"]
    rows = [[str(value), *(_number(n, c) for n, c in zip(numbers, columns))] for value, numbers in values.items()]
    return [f"Paper, {paper['source']} (ArcVQ-VAE, 500 epochs):", "",
            *markdown_table([sweep_key, *(_NAMES[c] for c in columns)], rows)]


def paper_lines(table: Mapping, dataset: str) -> list[str]:
    """The paper's numbers for the rows of ``table`` (markdown lines), or a line saying there are none."""
    if table["name"].startswith("sweep_"):
        return _paper_sweep_lines(table["name"][len("sweep_"):], dataset)
    return _paper_ablation_lines(table, dataset)


def _seed_lines(table: Mapping) -> list[str]:
    """Every seed of every row, one line each."""
    rows = [[entry["label"], str(seed), *(_number(metrics.get(c), c) for c in _SEED_TABLE_COLUMNS)]
            for entry in table["rows"].values() for seed, metrics in entry["seeds"].items()]
    return ["Every seed:", "", *markdown_table(["Method", "seed", *(_NAMES[c] for c in _SEED_TABLE_COLUMNS)], rows)]


def _summary_lines(table: Mapping) -> list[str]:
    """Mean ± std over seeds, one line per row."""
    rows = [[entry["label"], str(len(entry["seeds"])),
             *(_mean_std_cell(entry["summary"], c) for c in _SEED_TABLE_COLUMNS)] for entry in table["rows"].values()]
    return ["Mean ± standard deviation over seeds (sample std, ddof 1):", "",
            *markdown_table(["Method", "seeds", *(_NAMES[c] for c in _SEED_TABLE_COLUMNS)], rows)]


def _interval_text(n_seeds: int) -> str:
    if n_seeds == 1:
        return "no interval with 1 seed"
    weak = " (fewer than 3 seeds: 1 degree of freedom, t = 12.71)" if n_seeds == 2 else ""
    return f"95% t-interval over seeds in brackets{weak}"


def _difference_lines(table: Mapping) -> list[str]:
    """The reference row minus every other row, paired by seed, with intervals and verdicts."""
    reference = table["rows"][table["reference"]]["label"]
    metrics = [m for m in ("psnr", "ssim", "usage", "lpips", "rfid")
               if any(m in d for d in table["differences"].values())]
    n_seeds = max(len(e["seeds"]) for e in table["rows"].values())
    rows = [[table["rows"][row]["label"], *(_difference_cell(diffs.get(m), m) for m in metrics), _resolved(diffs)]
            for row, diffs in table["differences"].items()]
    return [f"{reference} minus each row, paired by seed (same seed, same data order); {_interval_text(n_seeds)}; "
            "resolved = the interval excludes 0:", "",
            *markdown_table([f"{reference} minus", *(f"Δ {_NAMES[m]}" for m in metrics), "resolved at this budget"],
                            rows)]


def format_table(table: Mapping, dataset: str, notes: Sequence[str] = ()) -> str:
    """Markdown: every seed, mean +- std per row, the paired differences, then the paper's numbers."""
    lines = [f"### {table['title']}", "", *notes] + ([""] if notes else [])
    lines += _seed_lines(table) + [""] + _summary_lines(table)
    if table["differences"]:
        lines += [""] + _difference_lines(table)
    lines += [""] + paper_lines(table, dataset)
    return "\n".join(lines) + "\n"


def format_curve_differences(tables: Mapping[int, Mapping]) -> str:
    """Markdown: the reference row minus each row at every step of a learning curve, with intervals.

    Args:
        tables: step -> table (:func:`build_table`) of the metrics measured at that step, all with the
            same reference and rows.
    """
    if not tables:
        return ""
    first = next(iter(tables.values()))
    reference = first["rows"][first["reference"]]["label"]
    metrics = [m for m in DIFFERENCE_METRICS if any(m in d for t in tables.values() for d in t["differences"].values())]
    rows = [[table["rows"][row]["label"], str(step),
             *(_difference_cell(table["differences"][row].get(m), m) for m in metrics),
             _resolved(table["differences"][row])]
            for row in first["differences"] for step, table in tables.items()]
    lines = [f"{reference} minus each row at every evaluated step, paired by seed; 95% t-interval in brackets "
             "(none with 1 seed):", "",
             *markdown_table(["row", "step", *(f"Δ {_NAMES[m]}" for m in metrics), "resolved"], rows)]
    return "\n".join(lines) + "\n"
