"""NormBoundCallback: runs every ArcQuantizer's ``after_optimizer_step`` after each optimizer step."""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from .norm_bound import quantizers_in, register_norm_bound_hook

__all__ = ["NormBoundCallback"]


class NormBoundCallback(pl.Callback):
    """Advance the ArcVQ clock and apply the norm bound after every step of the codebook's optimizer.

    Lightning has no callback hook after each optimizer step, so at train start this registers a
    post-step hook (``torch.optim.Optimizer.register_step_post_hook``) on every optimizer that owns
    an ArcQuantizer's codebook: exactly once per step of that optimizer, never on others (a GAN
    discriminator's). Frozen codebooks (``requires_grad=False``) are ignored. Works with automatic
    and manual optimization, and on resume (the clock is restored from the checkpoint's state_dict).

    Usage in a taming-style config::

        lightning:
          callbacks:
            norm_bound:
              target: arcvq_plugin.NormBoundCallback
    """

    def __init__(self) -> None:
        self._handles: list = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        quantizers = quantizers_in(pl_module, trainable_only=True)
        for optimizer in trainer.optimizers:
            self._handles.extend(register_norm_bound_hook(optimizer, pl_module))
        hooked = len(self._handles)
        if quantizers and hooked < len(quantizers):
            raise RuntimeError(
                f"NormBoundCallback: {len(quantizers) - hooked} of {len(quantizers)} ArcQuantizer "
                "codebooks are not updated by any optimizer of this Trainer; their clock would not "
                "advance. Put quantize.embedding.weight in the autoencoder optimizer.")
        if quantizers:
            rank_zero_info(f"NormBoundCallback: norm bound hooked on {hooked} codebook(s)")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
