"""Figures of the ablation: a reconstruction grid and per-row codebook figures.

The codebook figures (usage histogram, norm histogram, pairwise-distance heatmap: the paper's
Figures 2 and 3) draw with the shared helpers of ``arcvq_plugin.codebook_figures``, one panel
per ablation row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

__all__ = ["CodebookSnapshot", "save_codebook_figures", "save_reconstruction_grid"]


@dataclass
class CodebookSnapshot:
    """What the figures need from one trained row.

    Attributes:
        label: row name for titles.
        codebook: (K, D) raw codebook.
        counts: (K,) selections of each code over the evaluated images.
        reconstructions: (n, C, H, W) in [0, 1], the first test images' reconstructions.
        radius: the BBNR bound R(t) at the end of training, None without BBNR.
    """

    label: str
    codebook: torch.Tensor
    counts: torch.Tensor
    reconstructions: torch.Tensor
    radius: Optional[float] = None


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
