"""Codebook figures (matplotlib, Agg canvas, no pyplot state): norms, pairwise distances, usage.

The paper's Figure 2 is a histogram of the codebook's row norms (vanilla VQ: many near-zero
unused codes and a few long used ones; ArcVQ: norms bounded by R(t)); Figure 3 is the matrix of
pairwise L2 distances between codes (brighter and more homogeneous = codes spread more widely).

Every ``plot_*`` function takes a tensor or array and returns a ``matplotlib.figure.Figure``;
:func:`save_figure` writes it as PNG. Figures are not registered with pyplot, so nothing needs
closing and they are safe to build in a training process.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np
import torch

from arcvq_plugin.extras import require_extra
from arcvq_plugin.validation import check_int, check_optional_int

require_extra("train", "matplotlib")
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["code_norms", "pairwise_distances", "plot_norm_histogram", "plot_pairwise_distances",
           "plot_usage_histogram", "save_figure"]

ArrayLike = Union[torch.Tensor, np.ndarray]


def _codebook(codebook: ArrayLike) -> torch.Tensor:
    weight = torch.as_tensor(codebook).detach().to("cpu", torch.float64)
    if weight.ndim != 2 or weight.shape[0] < 1:
        raise ValueError(f"codebook must be a (K, D) matrix with K >= 1, got shape {tuple(weight.shape)}")
    return weight


def _counts(counts: ArrayLike) -> np.ndarray:
    values = torch.as_tensor(counts).detach().to("cpu", torch.float64).numpy()
    if values.ndim != 1 or values.shape[0] < 1 or (values < 0).any():
        raise ValueError(f"counts must be a non-negative vector (K,), got shape {values.shape}")
    return values


def _new_figure(width: float = 5.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def code_norms(codebook: ArrayLike) -> np.ndarray:
    """L2 norm of every row of ``codebook`` (K, D) -> (K,) float64."""
    return _codebook(codebook).norm(dim=1).numpy()


def pairwise_distances(codebook: ArrayLike, max_codes: Optional[int] = None) -> np.ndarray:
    """L2 distances between the first ``max_codes`` rows (default: all) -> (k, k) float64."""
    weight = _codebook(codebook)
    max_codes = check_optional_int("max_codes", max_codes, minimum=1)
    if max_codes is not None:
        weight = weight[:max_codes]
    return torch.cdist(weight, weight).numpy()


def plot_norm_histogram(codebook: ArrayLike, radius: Optional[float] = None, bins: int = 50,
                        title: str = "Codebook norms") -> Figure:
    """Histogram of the row norms of ``codebook`` (K, D).

    ``radius`` (BBNR's R(t)) is stated in the title and drawn as a dashed line when it lies within
    10x the largest norm (a far larger bound would squash the histogram against the axis).
    """
    check_int("bins", bins, minimum=1)
    norms = code_norms(codebook)
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(norms, bins=bins, color="tab:blue")
    if radius is not None and np.isfinite(radius) and radius <= 10 * max(norms.max(), 1e-12):
        ax.axvline(float(radius), color="tab:red", linestyle="--", label=f"R(t) = {float(radius):.4g}")
        ax.legend()
    ax.set_xlabel("L2 norm")
    ax.set_ylabel("codes")
    bound = "" if radius is None else f", R(t) {float(radius):.4g}"
    ax.set_title(f"{title} (K={norms.shape[0]})\nmin {norms.min():.3g}, max {norms.max():.3g}{bound}")
    fig.tight_layout()
    return fig


def plot_pairwise_distances(codebook: ArrayLike, max_codes: Optional[int] = 1024,
                            title: str = "Pairwise L2 distances") -> Figure:
    """Heatmap of the (k, k) L2 distance matrix of the first ``max_codes`` codes (default 1024)."""
    distances = pairwise_distances(codebook, max_codes)
    fig = _new_figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(distances, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="L2 distance")
    ax.set_xlabel("code")
    ax.set_ylabel("code")
    ax.set_title(f"{title} ({distances.shape[0]} codes)")
    fig.tight_layout()
    return fig


def plot_usage_histogram(counts: ArrayLike, title: str = "Code usage") -> Figure:
    """Selection frequency of every code, sorted from most to least used; ``counts`` (K,) >= 0."""
    values = _counts(counts)
    total = values.sum()
    freq = np.sort(values / total if total > 0 else values)[::-1]
    used = int((values > 0).sum())
    fig = _new_figure(6.0, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(freq.shape[0]), freq, width=1.0, color="tab:green")
    ax.set_xlabel("codes, most used first")
    ax.set_ylabel("selection frequency")
    ax.set_title(f"{title} (K={values.shape[0]})\n{used} used ({100.0 * used / values.shape[0]:.1f}%)")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Union[str, os.PathLike], dpi: int = 100) -> str:
    """Write ``fig`` to ``path`` (PNG by extension), creating parent folders; returns the path."""
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
