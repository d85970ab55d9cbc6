"""CodebookMonitor: codebook usage, norms and figures after every validation run.

Per validation run it logs (through ``pl_module.log``, so every logger and ``callback_metrics``
see them)::

    codebook/usage_percent   codes selected at least once during validation, in % of K
    codebook/perplexity      exp(entropy) of the validation selection frequencies (1..K)
    codebook/dead_codes      codes never selected during validation
    codebook/norm_min, codebook/norm_mean, codebook/norm_max   L2 norms of the codebook rows
    codebook/radius          BBNR's bound R(t) (quantisers that have one)

and, on global rank zero, the norm histogram, the pairwise-distance matrix and the usage
histogram (the paper's Figures 2 and 3): to every TensorBoard logger (``add_figure``) and as PNG
files ``<logger.save_dir or default_root_dir>/codebook/<figure>_gs-<global_step>_e-<epoch>.png``.

Counts: an ArcQuantizer's ``code_counts`` buffer, reset at the start of each validation run; for
quantisers without it (taming's VectorQuantizer2, the baseline) a forward hook counts the indices
they return. Under DDP the counts are summed over ranks before any statistic is computed, so
every rank logs the same values. Sanity-check validation is not reported.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.hooks import RemovableHandle

from .codebook_figures import (plot_norm_histogram, plot_pairwise_distances, plot_usage_histogram,
                               save_figure)
from .evaluation.codebook import codebook_metrics_from_counts
from .validation import check_int

__all__ = ["CodebookMonitor", "codebook_statistics"]


def codebook_statistics(counts: torch.Tensor, codebook: torch.Tensor,
                        radius: Optional[float] = None) -> dict[str, float]:
    """Usage statistics of ``counts`` (K,) (selections per code) and norms of ``codebook`` (K, D).

    Returns ``usage_percent``, ``perplexity`` (1.0 when nothing was counted), ``dead_codes``,
    ``norm_min``, ``norm_mean``, ``norm_max`` and, when given, ``radius``.
    """
    counts = counts.detach().double()
    if counts.ndim != 1 or codebook.ndim != 2 or counts.shape[0] != codebook.shape[0]:
        raise ValueError(f"counts (K,) and codebook (K, D) must agree, got {tuple(counts.shape)} "
                         f"and {tuple(codebook.shape)}")
    norms = codebook.detach().double().norm(dim=1)
    usage = (codebook_metrics_from_counts(counts) if counts.sum() > 0
             else {"usage": 0.0, "perplexity": 1.0, "dead_codes": counts.shape[0]})
    stats = {
        "usage_percent": 100.0 * usage["usage"],
        "perplexity": usage["perplexity"],
        "dead_codes": float(usage["dead_codes"]),
        "norm_min": float(norms.min()),
        "norm_mean": float(norms.mean()),
        "norm_max": float(norms.max()),
    }
    if radius is not None:
        stats["radius"] = float(radius)
    return stats


class CodebookMonitor(pl.Callback):
    """Log codebook usage, perplexity, dead codes, norms, radius and figures per validation run.

    Args:
        quantizer: dotted attribute path of the quantiser in the LightningModule (default
            ``"quantize"``, taming's and ldm's name). It needs an ``embedding`` nn.Embedding.
        figures: draw the figures (default True); the scalars are always logged.
        figures_every_n_validations: draw them every n-th validation run (default 1, >= 1).
        max_codes_in_matrix: codes shown in the pairwise-distance matrix (default 1024, >= 1).
        save_dir: folder for the PNGs (default ``<logger.save_dir>/codebook``, or
            ``<trainer.default_root_dir>/codebook`` without a logger).

    Config::

        lightning:
          callbacks:
            codebook_monitor:
              target: arcvq_plugin.CodebookMonitor
    """

    FIGURES = ("norm_histogram", "pairwise_distances", "usage_histogram")

    def __init__(self, quantizer: str = "quantize", figures: bool = True,
                 figures_every_n_validations: int = 1, max_codes_in_matrix: int = 1024,
                 save_dir: Optional[str] = None) -> None:
        if not isinstance(quantizer, str) or not quantizer:
            raise ValueError(f"quantizer must be a dotted attribute path such as 'quantize', "
                             f"got {quantizer!r}")
        check_int("figures_every_n_validations", figures_every_n_validations, minimum=1)
        check_int("max_codes_in_matrix", max_codes_in_matrix, minimum=1)
        self.quantizer = quantizer
        self.figures = bool(figures)
        self.figures_every_n_validations = figures_every_n_validations
        self.max_codes_in_matrix = max_codes_in_matrix
        self.save_dir = save_dir
        self.validations = 0
        self.last_statistics: dict[str, float] = {}
        self.last_figure_paths: list[str] = []
        self._counts: Optional[torch.Tensor] = None
        self._hook: Optional[RemovableHandle] = None

    # ---- locating the quantiser ------------------------------------------------------------
    def find_quantizer(self, pl_module: nn.Module) -> nn.Module:
        module: Any = pl_module
        for part in self.quantizer.split("."):
            if not hasattr(module, part):
                raise ValueError(f"CodebookMonitor: {type(pl_module).__name__} has no attribute "
                                 f"{self.quantizer!r} (set CodebookMonitor(quantizer=...))")
            module = getattr(module, part)
        if not isinstance(getattr(module, "embedding", None), nn.Embedding):
            raise ValueError(f"CodebookMonitor: {self.quantizer!r} is a {type(module).__name__} "
                             "without an 'embedding' nn.Embedding codebook")
        return module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.find_quantizer(pl_module)

    # ---- counting --------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        quantizer = self.find_quantizer(pl_module)
        self._remove_hook()
        if isinstance(getattr(quantizer, "code_counts", None), torch.Tensor):
            quantizer.reset_code_counts()
            self._counts = None
        else:
            self._counts = torch.zeros(quantizer.embedding.num_embeddings, device=pl_module.device)
            self._hook = quantizer.register_forward_hook(self._count_returned_indices)

    def _count_returned_indices(self, quantizer: nn.Module, inputs: Any, output: Any) -> None:
        indices = output[2][2]
        if getattr(quantizer, "remap", None) is not None:
            indices = quantizer.unmap_to_all(indices.reshape(indices.shape[0], -1))
        indices = indices.reshape(-1).to(self._counts.device)
        self._counts += torch.bincount(indices, minlength=self._counts.shape[0])[: self._counts.shape[0]]

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # ---- reporting -------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
        if trainer.sanity_checking:
            return
        quantizer = self.find_quantizer(pl_module)
        local = self._counts if self._counts is not None else quantizer.code_counts
        counts = trainer.strategy.reduce(local.detach().float().clone(), reduce_op="sum")
        codebook = quantizer.embedding.weight.detach()
        radius = getattr(quantizer, "radius", None)
        radius = float(radius) if radius is not None else None
        self.last_statistics = codebook_statistics(counts, codebook, radius)
        for name, value in self.last_statistics.items():
            pl_module.log(f"codebook/{name}", value, sync_dist=True)
        self.validations += 1
        due = self.validations % self.figures_every_n_validations == 0
        if self.figures and due and trainer.is_global_zero:
            self.last_figure_paths = self._write_figures(trainer, counts.cpu(), codebook.cpu(), radius)

    def _write_figures(self, trainer: pl.Trainer, counts: torch.Tensor, codebook: torch.Tensor,
                       radius: Optional[float]) -> list[str]:
        figures = {
            "norm_histogram": plot_norm_histogram(codebook, radius=radius),
            "pairwise_distances": plot_pairwise_distances(codebook, max_codes=self.max_codes_in_matrix),
            "usage_histogram": plot_usage_histogram(counts),
        }
        step, epoch = trainer.global_step, trainer.current_epoch
        folder = self.save_dir or os.path.join(
            trainer.logger.save_dir if trainer.logger is not None and trainer.logger.save_dir
            else trainer.default_root_dir, "codebook")
        paths = []
        for name, fig in figures.items():
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"codebook/{name}", fig, global_step=step, close=False)
            paths.append(save_figure(fig, os.path.join(folder, f"{name}_gs-{step:06}_e-{epoch:06}.png")))
        return paths

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hook()
