"""Running every ArcQuantizer's ``after_optimizer_step`` after each step of its optimizer.

Three pieces, for the three ways a model is trained:

- :func:`register_norm_bound_hook`: a plain PyTorch loop registers it once on its optimizer;
- :class:`NormBoundCallback`: a Lightning Trainer registers it at train start;
- :func:`require_norm_bound_callback`: every LightningModule shipped here that trains an
  ArcQuantizer calls it from ``on_train_start``, so a Trainer without the callback fails before
  the first step instead of training with a clock stuck at 0 (no norm bound, no ArcLoss schedule).
"""
from __future__ import annotations

from typing import Iterable

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torch.utils.hooks import RemovableHandle

from .quantizer import ArcQuantizer

__all__ = ["NormBoundCallback", "quantizers_in", "register_norm_bound_hook", "require_norm_bound_callback"]


def quantizers_in(module: nn.Module, *, trainable_only: bool = False) -> list[ArcQuantizer]:
    """Every ArcQuantizer inside ``module`` (itself included), in ``modules()`` order.

    With ``trainable_only``, frozen codebooks (``requires_grad=False``, e.g. a LatentDiffusion's
    first stage) are left out: no optimizer steps them, so there is no bound to apply.
    """
    return [m for m in module.modules() if isinstance(m, ArcQuantizer)
            and (m.embedding.weight.requires_grad or not trainable_only)]


def _owns(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> bool:
    return any(p is parameter for group in optimizer.param_groups for p in group["params"])


def _post_step_hook(quantizer: ArcQuantizer):
    def hook(optimizer: torch.optim.Optimizer, args: Iterable, kwargs: dict) -> None:
        quantizer.after_optimizer_step()

    return hook


def register_norm_bound_hook(
    optimizer: torch.optim.Optimizer, module: nn.Module
) -> list[RemovableHandle]:
    """Call ``after_optimizer_step()`` of each ArcQuantizer in ``module`` after every ``optimizer.step()``.

    Only quantizers whose codebook ``optimizer`` updates are hooked (a GAN discriminator's
    optimizer gets none). For plain PyTorch loops::

        handles = register_norm_bound_hook(opt, model)
        ...  # loss.backward(); opt.step()  -> clock += 1, rows clipped to R(clock)

    Returns the hook handles (``handle.remove()`` undoes the registration).
    """
    return [
        optimizer.register_step_post_hook(_post_step_hook(q))
        for q in quantizers_in(module)
        if _owns(optimizer, q.embedding.weight)
    ]


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


def require_norm_bound_callback(trainer: pl.Trainer, module: pl.LightningModule) -> None:
    """RuntimeError, with the fix, when ``module`` trains an ArcQuantizer and ``trainer`` has no
    :class:`NormBoundCallback`. Call it from the module's ``on_train_start``."""
    if not quantizers_in(module, trainable_only=True):
        return
    if any(isinstance(callback, NormBoundCallback) for callback in trainer.callbacks):
        return
    raise RuntimeError(
        f"{type(module).__name__} trains an ArcQuantizer but the Trainer has no NormBoundCallback: "
        "without it the clock never advances (no norm bound, no ArcLoss schedule). Add `norm_bound: {target: arcvq_plugin.NormBoundCallback}` under "
        "lightning.callbacks, or pass callbacks=[arcvq_plugin.NormBoundCallback()] to the Trainer "
        "(arcvq-train adds it by itself)")
