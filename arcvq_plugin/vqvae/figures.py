"""Figures of the ablation: a reconstruction grid, per-row codebook figures and per-table panels.

Per row (``save_codebook_figures``): usage histogram, norm histogram and pairwise-distance heatmap,
drawn with the shared helpers of ``arcvq_plugin.codebook_figures``. Per table
(``save_table_figures``): every row's code-norm histogram side by side (the paper's Figure 2),
every row's pairwise-distance matrix side by side on one colour scale (Figure 3), and, for rows
with a norm bound, the fraction of codes it clipped at each step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from arcvq_plugin.extras import require_extra

require_extra("train", "matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["CodebookSnapshot", "save_codebook_figures", "save_learning_curves", "save_reconstruction_grid",
           "save_table_figures"]


@dataclass
class CodebookSnapshot:
    """What the figures need from one trained row.

    Attributes:
        label: row name for titles.
        codebook: (K, D) raw codebook.
        counts: (K,) selections of each code over the evaluated images.
        reconstructions: (n, C, H, W) in [0, 1], the first test images' reconstructions.
        originals: (n, C, H, W) in [0, 1], the test images reconstructed (None: not kept).
        radius: the BBNR bound R(t) at the end of training, None without BBNR.
        clipped_fraction: (steps,) fraction of codes the bound clipped after each step, None
            without BBNR.
    """

    label: str
    codebook: torch.Tensor
    counts: torch.Tensor
    reconstructions: torch.Tensor
    originals: Optional[torch.Tensor] = None
    radius: Optional[float] = None
    clipped_fraction: Optional[torch.Tensor] = None


def _strip(images: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) in [0, 1] -> (H, n*W, C) one row of images side by side."""
    return images.permute(2, 0, 3, 1).reshape(images.shape[2], -1, images.shape[1])


def save_reconstruction_grid(originals: torch.Tensor, snapshots: Mapping[str, CodebookSnapshot], path: Path) -> Path:
    """PNG: the originals on top, then one labelled strip of reconstructions per row.

    Args:
        originals: (n, C, H, W) in [0, 1].
        snapshots: row name -> snapshot whose ``reconstructions`` match ``originals`` in shape.
        path: PNG to write.
    """
    strips = [("input", originals)] + [(s.label, s.reconstructions) for s in snapshots.values()]
    for label, images in strips:
        if images.shape != originals.shape:
            raise ValueError(f"reconstructions of {label!r} have shape {tuple(images.shape)}, "
                             f"expected {tuple(originals.shape)}")
    n = originals.shape[0]
    fig, axes = plt.subplots(len(strips), 1, figsize=(0.6 * n + 1.5, 0.75 * len(strips) + 0.3), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], strips):
        strip = _strip(images.float().clamp(0.0, 1.0)).numpy()
        grey = strip.shape[-1] == 1
        ax.imshow(strip[..., 0] if grey else strip, cmap="gray" if grey else None, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_codebook_figures(snapshots: Mapping[str, CodebookSnapshot], folder: Path) -> dict[str, Path]:
    """Per row: ``codebook_usage_<row>.png``, ``codebook_norms_<row>.png``, ``codebook_distances_<row>.png``.

    Usage histogram of ``counts``, histogram of the code norms and the (K, K) pairwise-distance
    heatmap; returns ``{"<kind>_<row>": path}``.
    """
    from arcvq_plugin.codebook_figures import (plot_norm_histogram, plot_pairwise_distances,
                                               plot_usage_histogram, save_figure)

    folder = Path(folder)
    written: dict[str, Path] = {}
    for row, snap in snapshots.items():
        figures = {
            "usage": plot_usage_histogram(snap.counts, title=snap.label),
            "norms": plot_norm_histogram(snap.codebook, radius=snap.radius, title=snap.label),
            "distances": plot_pairwise_distances(snap.codebook, title=f"{snap.label}: L2 distances"),
        }
        for kind, fig in figures.items():
            written[f"{kind}_{row}"] = Path(save_figure(fig, folder / f"codebook_{kind}_{row}.png"))
    return written


def _panel_grid(n: int, width: float, height: float):
    columns = min(n, 5)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_table_figures(snapshots: Mapping[str, CodebookSnapshot], folder: Path, suffix: str = "",
                       notes: Sequence[str] = ()) -> dict[str, Path]:
    """One figure per kind with every row of a table side by side; returns ``{"<kind><suffix>": path}``.

    - ``figure2_code_norms<suffix>.png``: each row's histogram of code norms (the paper's Figure 2),
      R(t) dashed where the row has a bound;
    - ``figure3_pairwise_distances<suffix>.png``: each row's (K, K) matrix of L2 distances between
      codes (Figure 3), all on one colour scale so brightness compares across rows;
    - ``bound_clipping<suffix>.png`` (only when a row has a norm bound): the fraction of codes
      clipped after each training step.

    ``notes`` (e.g. the schedule deviation) go into every figure's title.
    """
    from arcvq_plugin.codebook_figures import code_norms, pairwise_distances

    folder = Path(folder)
    if not snapshots:
        raise ValueError("snapshots must hold at least one row")
    title = "; ".join(notes)
    written: dict[str, Path] = {}

    fig, axes = _panel_grid(len(snapshots), 3.2, 2.8)
    for ax, snap in zip(axes, snapshots.values()):
        norms = code_norms(snap.codebook)
        ax.hist(norms, bins=40, color="tab:blue")
        if snap.radius is not None and np.isfinite(snap.radius) and snap.radius <= 10 * max(norms.max(), 1e-12):
            ax.axvline(snap.radius, color="tab:red", linestyle="--", label=f"R(t) = {snap.radius:.3g}")
            ax.legend(fontsize=7)
        ax.set_title(f"{snap.label}\nnorms {norms.min():.2g} to {norms.max():.2g}", fontsize=8)
        ax.set_xlabel("L2 norm of code", fontsize=8)
        ax.set_ylabel("codes", fontsize=8)
    fig.suptitle("Code norms (paper Figure 2)" + (f": {title}" if title else ""), fontsize=9)
    written[f"figure2_code_norms{suffix}"] = _save(fig, folder / f"figure2_code_norms{suffix}.png")

    matrices = [pairwise_distances(snap.codebook) for snap in snapshots.values()]
    vmax = max(float(m.max()) for m in matrices) or 1.0
    fig, axes = _panel_grid(len(snapshots), 3.2, 3.0)
    for ax, snap, matrix in zip(axes, snapshots.values(), matrices):
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{snap.label}\nmean distance {matrix.mean():.3g}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="L2 distance")
    fig.suptitle("Pairwise L2 distances between codes (paper Figure 3)" + (f": {title}" if title else ""), fontsize=9)
    path = folder / f"figure3_pairwise_distances{suffix}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)  # no tight_layout: the shared colour bar spans the axes
    plt.close(fig)
    written[f"figure3_pairwise_distances{suffix}"] = path

    traces = {s.label: s.clipped_fraction for s in snapshots.values() if s.clipped_fraction is not None}
    if traces:
        fig, ax = plt.subplots(figsize=(6.0, 3.2))
        for label, trace in traces.items():
            ax.plot(np.arange(1, trace.numel() + 1), 100.0 * trace.double().numpy(), label=label, linewidth=1)
        ax.set_xlabel("training step")
        ax.set_ylabel("codes clipped by the bound (%)")
        ax.legend(fontsize=7)
        ax.set_title("Norm bound activity" + (f": {title}" if title else ""), fontsize=9)
        written[f"bound_clipping{suffix}"] = _save(fig, folder / f"bound_clipping{suffix}.png")
    return written


def save_learning_curves(curves: Mapping[str, Mapping[int, Sequence[Mapping]]], metrics: Sequence[str],
                         path: Path) -> Path:
    """PNG: one panel per metric, the metric against training step for every row: each seed's points
    (small markers) and the mean over seeds (line). Metrics missing (None) at every point are skipped.

    Args:
        curves: row label -> seed -> curve points ``{"step", <metric>: value, ...}``.
        metrics: metric keys to draw, e.g. ``("psnr", "ssim", "lpips", "rfid", "usage")``.
        path: PNG to write.
    """
    drawn = [m for m in metrics if any(p.get(m) is not None for c in curves.values() for pts in c.values() for p in pts)]
    if not drawn:
        raise ValueError(f"no curve point has any of the metrics {list(metrics)}")
    fig, axes = _panel_grid(len(drawn), 3.6, 2.8)
    for ax, metric in zip(axes, drawn):
        for i, (label, seeds) in enumerate(curves.items()):
            colour = f"C{i % 10}"
            by_step: dict[int, list[float]] = {}
            for points in seeds.values():
                for p in points:
                    if p.get(metric) is not None:
                        by_step.setdefault(int(p["step"]), []).append(float(p[metric]))
                        ax.plot(p["step"], p[metric], ".", color=colour, alpha=0.4, markersize=4)
            steps = sorted(by_step)
            ax.plot(steps, [float(np.mean(by_step[s])) for s in steps], "-", color=colour, label=label, linewidth=1.2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=6)
    fig.suptitle("Learning curves on the validation images (points: seeds; lines: mean)", fontsize=9)
    return _save(fig, Path(path))
