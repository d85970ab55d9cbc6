"""Running every ArcQuantizer's ``after_optimizer_step`` after each step of its optimizer.

Three pieces, for the three ways a model is trained:

- :func:`register_norm_bound_hook`: a plain PyTorch loop registers it once on its optimizer;
- :class:`NormBoundCallback`: a Lightning Trainer registers it at train start (and resolves
  ``schedule_horizon: auto`` from the run's length at setup, :func:`run_codebook_steps`);
- :func:`require_norm_bound_callback`: every LightningModule shipped here that trains an
  ArcQuantizer calls it from ``on_train_start``, so a Trainer without the callback fails before
  the first step instead of training with a clock stuck at 0 (no norm bound, no ArcLoss schedule).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torch.utils.hooks import RemovableHandle

from .quantizer import ArcQuantizer

__all__ = ["NormBoundCallback", "quantizers_in", "register_norm_bound_hook", "require_norm_bound_callback",
           "run_codebook_steps"]


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


def run_codebook_steps(trainer: pl.Trainer, module: pl.LightningModule) -> int:
    """The codebook optimizer steps of ``trainer.fit(module)``: the ``schedule_horizon: auto`` T.

    From ``max_steps`` (Lightning's ``global_step`` limit, which under
    :class:`arcvq_plugin.gan_training.ManualGANTraining` counts both optimizers: ``ceil(max_steps /
    2)`` codebook steps) and from ``max_epochs x ceil(batches per epoch / accumulation)`` (an
    optimizer step every ``accumulate_grad_batches`` batches and at an epoch's last batch: the
    Trainer's accumulation, or the GAN model's own), whichever ends the run first. Batches per epoch
    are the train dataloader's on this rank after ``limit_train_batches`` (loaded here if needed);
    every DDP rank gets the same count. ``max_time`` is not a length; Lightning's default
    ``max_epochs`` (1000 when neither limit is set) is. ValueError when the run has no finite
    length (or no training batch) or is manually optimised by anything but ``ManualGANTraining``.
    """
    from arcvq_plugin.gan_training import OPTIMIZERS_PER_STEP, ManualGANTraining  # it imports this module

    if module.automatic_optimization:
        accumulate, global_steps_per_step = int(trainer.accumulate_grad_batches), 1
    elif isinstance(module, ManualGANTraining):
        accumulate, global_steps_per_step = int(module.accumulate_grad_batches), OPTIMIZERS_PER_STEP
    else:
        raise ValueError(f"schedule_horizon='auto' cannot count the codebook steps of {type(module).__name__} "
                         "(manual optimisation other than ManualGANTraining): set schedule_horizon to "
                         "the run's codebook optimizer steps")
    candidates = []
    if trainer.max_steps is not None and trainer.max_steps != -1:
        candidates.append(math.ceil(trainer.max_steps / global_steps_per_step))
    if trainer.max_epochs is not None and trainer.max_epochs != -1:
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if batches != float("inf"):
            candidates.append(int(trainer.max_epochs) * math.ceil(int(batches) / accumulate))
    if not candidates or min(candidates) < 1:
        raise ValueError(
            "schedule_horizon='auto' needs a run of finite length: set lightning.trainer.max_steps "
            f"(>= 1) or max_epochs (>= 1) with a sized train dataloader (got max_steps={trainer.max_steps}, "
            f"max_epochs={trainer.max_epochs}), or give schedule_horizon as an integer")
    return min(candidates)


def _replace_auto_horizons(node: Any, steps: int) -> None:
    """Every ``schedule_horizon: auto`` in a config tree becomes ``steps`` (in place)."""
    if isinstance(node, DictConfig):
        for key in list(node.keys()):
            value = node.get(key)
            if key == "schedule_horizon" and value == "auto":
                node[key] = steps
            else:
                _replace_auto_horizons(node.get(key), steps)
    elif isinstance(node, ListConfig):
        for item in node:
            _replace_auto_horizons(item, steps)


class NormBoundCallback(pl.Callback):
    """Advance the ArcVQ clock and apply the norm bound after every step of the codebook's optimizer.

    Lightning has no callback hook after each optimizer step, so at train start this registers a
    post-step hook (``torch.optim.Optimizer.register_step_post_hook``) on every optimizer that owns
    an ArcQuantizer's codebook: exactly once per step of that optimizer, never on others (a GAN
    discriminator's). Frozen codebooks (``requires_grad=False``) are ignored. Works with automatic
    and manual optimization, and on resume (the clock is restored from the checkpoint's state_dict).

    At setup (before a resumed checkpoint is restored) it resolves every ``schedule_horizon: auto``
    codebook to T = :func:`run_codebook_steps` and writes T in place of ``auto`` into the config
    that ``arcvq-train`` saves as ``configs/<timestamp>-project.yaml``; the checkpoint carries T
    too, and a resumed run keeps the checkpoint's.

    Usage in a taming-style config::

        lightning:
          callbacks:
            norm_bound:
              target: arcvq_plugin.NormBoundCallback
    """

    def __init__(self) -> None:
        self._handles: list = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        auto = [q for q in quantizers_in(pl_module, trainable_only=True) if q.schedule_horizon == "auto"]
        if not auto:
            return
        steps = run_codebook_steps(trainer, pl_module)
        for quantizer in auto:
            quantizer.resolve_schedule_horizon(steps)
        from arcvq_plugin.trainer_cli.callbacks import SetupCallback

        for callback in trainer.callbacks:
            if isinstance(callback, SetupCallback):
                _replace_auto_horizons(callback.config, steps)
        rank_zero_info(f"NormBoundCallback: schedule_horizon auto = {steps} codebook steps; effective "
                       f"bbnr_alpha {auto[0].effective_bbnr_alpha:.6g}, arc_gamma_decay "
                       f"{auto[0].effective_arc_gamma_decay:.6g}")

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
