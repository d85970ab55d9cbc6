"""Per-step record of the norm bound's activity, kept on the device until training ends.

``BoundTrace`` stores, after every optimizer step, the ``clipped_fraction`` of the model's
ArcQuantizer (the fraction of codes that step's norm bound moved onto the sphere of radius R(t))
in a preallocated device tensor: no host sync during training. At the end of each epoch it checks
once that the codebook is finite (the per-forward finiteness check is a host sync, which
``arcvq-reproduce`` turns off on CUDA).

Whether the bound binds is then read from the trace: if no code is clipped after the first few
steps, + BBNR trains exactly like cosine matching only (rows inside the ball are left bit for bit).
"""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
import torch

from arcvq_plugin.norm_bound_callback import quantizers_in

__all__ = ["BoundTrace", "summarize_clipping"]


class BoundTrace(pl.Callback):
    """Records the clipped fraction of the (single) trained ArcQuantizer with BBNR after each step.

    After ``fit``: ``clipped_fraction`` is a (steps,) float CPU tensor, or None when the model
    has no ArcQuantizer with ``use_bbnr``.
    """

    def __init__(self) -> None:
        self.clipped_fraction: Optional[torch.Tensor] = None
        self._buffer: Optional[torch.Tensor] = None
        self._quantizer = None
        self._step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bounded = [q for q in quantizers_in(pl_module, trainable_only=True) if q.use_bbnr]
        if len(bounded) > 1:
            raise ValueError(f"BoundTrace records one ArcQuantizer; the model has {len(bounded)} with use_bbnr")
        self._quantizer = bounded[0] if bounded else None
        self._step = 0
        if self._quantizer is not None:
            steps = int(trainer.estimated_stepping_batches)
            self._buffer = torch.full((steps,), float("nan"), device=self._quantizer.clipped_fraction.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._buffer is not None and self._step < self._buffer.shape[0]:
            self._buffer[self._step].copy_(self._quantizer.clipped_fraction)
        self._step += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for quantizer in quantizers_in(pl_module, trainable_only=True):
            if not bool(torch.isfinite(quantizer.embedding.weight).all()):
                raise RuntimeError(f"the codebook became non-finite in epoch {trainer.current_epoch} "
                                   f"(clock {int(quantizer.clock)}): training diverged")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._buffer is not None:
            self.clipped_fraction = self._buffer[: self._step].cpu()


def summarize_clipping(fractions: Optional[torch.Tensor]) -> Optional[dict]:
    """``{"steps", "mean", "first", "last", "steps_clipping", "last_step_clipping"}`` of a (steps,) trace.

    ``first``/``last`` are the fractions clipped at the first and last step, ``steps_clipping`` the
    number of steps that clipped at least one code and ``last_step_clipping`` the last such step
    (1-based; None when the bound never clipped). None for a row without BBNR.
    """
    if fractions is None or fractions.numel() == 0:
        return None
    values = fractions.double()
    clipping = torch.nonzero(values > 0).flatten()
    return {"steps": int(values.numel()), "mean": float(values.mean()), "first": float(values[0]),
            "last": float(values[-1]), "steps_clipping": int(clipping.numel()),
            "last_step_clipping": int(clipping[-1]) + 1 if clipping.numel() else None}
