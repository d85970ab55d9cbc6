"""``ImageLogger``: the model's ``log_images`` (inputs, reconstructions) to TensorBoard and PNG.

The callback of taming's/LDM's ``main.py`` for pytorch-lightning 2.x. It calls
``pl_module.log_images(batch, split=..., **log_images_kwargs)`` (taming's ``VQModel`` returns
``{"inputs": (B,C,H,W), "reconstructions": (B,C,H,W)}`` in [-1, 1]) in eval mode without gradients,
writes a grid per key to ``<logger.save_dir>/images/<split>/<key>_gs-<step>_e-<epoch>_b-<batch>.png``
and, with a TensorBoard logger, as ``<split>/<key>`` images.

When it logs: training batches whose ``global_step`` is a multiple of ``batch_frequency`` (and,
with ``increase_log_steps``, the powers of two below it), and the first batch of every validation
run (sanity checks excepted). The rule depends only on the step, so a resumed run logs where the
uninterrupted run would. The validation batch is logged in ``on_validation_end``, after every
``on_validation_epoch_end`` hook, so the extra forward of ``log_images`` does not enter statistics
that callbacks collect during validation (e.g. CodebookMonitor's code usage).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import numpy as np
import pytorch_lightning as pl
import torch
import torchvision
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from arcvq_plugin.validation import check_int

__all__ = ["ImageLogger"]


class ImageLogger(pl.Callback):
    """Log ``pl_module.log_images`` grids.

    Args:
        batch_frequency: log every this many global steps (>= 1).
        max_images: images per grid (>= 0; 0 disables logging).
        clamp: clamp tensors to [-1, 1] before writing.
        increase_log_steps: also log at steps 1, 2, 4, ... below ``batch_frequency``.
        rescale: map [-1, 1] to [0, 1] (set False for models that return [0, 1] images).
        disabled: log nothing.
        log_first_step: also log at global step 0.
        log_images_kwargs: extra keyword arguments for ``log_images``.
    """

    def __init__(
        self,
        batch_frequency: int,
        max_images: int,
        clamp: bool = True,
        increase_log_steps: bool = True,
        rescale: bool = True,
        disabled: bool = False,
        log_first_step: bool = False,
        log_images_kwargs: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        self.batch_frequency = check_int("batch_frequency", batch_frequency, minimum=1)
        self.max_images = check_int("max_images", max_images, minimum=0)
        self.clamp = clamp
        self.increase_log_steps = increase_log_steps
        self.rescale = rescale
        self.disabled = disabled
        self.log_first_step = log_first_step
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self._validation_batch: Any = None

    def should_log_step(self, global_step: int) -> bool:
        """Whether a training batch ending at ``global_step`` is logged."""
        if global_step == 0:
            return self.log_first_step
        if global_step % self.batch_frequency == 0:
            return True
        is_power_of_two = (global_step & (global_step - 1)) == 0
        return self.increase_log_steps and is_power_of_two and global_step < self.batch_frequency

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.should_log_step(pl_module.global_step):
            self.log_img(trainer, pl_module, batch, batch_idx, split="train")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and not trainer.sanity_checking:
            self._validation_batch = batch

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_batch is not None:
            batch, self._validation_batch = self._validation_batch, None
            self.log_img(trainer, pl_module, batch, 0, split="val")

    def log_img(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                split: str) -> None:
        """Call ``log_images`` in eval mode without gradients and write its tensors (all ranks
        compute, rank 0 writes); every submodule's train/eval mode is restored afterwards."""
        if self.disabled or self.max_images == 0 or not callable(getattr(pl_module, "log_images", None)):
            return
        if trainer.logger is None:
            return
        modes = [(module, module.training) for module in pl_module.modules()]
        pl_module.eval()
        with torch.no_grad():
            images = pl_module.log_images(batch, split=split, **self.log_images_kwargs)
        for module, training in modes:  # per module: parts kept in eval mode (e.g. LPIPS) stay so
            module.train(training)
        grids = {}
        for key, value in images.items():
            if not isinstance(value, torch.Tensor):
                continue
            value = value[: self.max_images].detach().float().cpu()
            if self.clamp:
                value = value.clamp(-1.0, 1.0)
            grid = torchvision.utils.make_grid(value, nrow=4)
            if self.rescale:
                grid = (grid + 1.0) / 2.0
            grids[key] = grid.clamp(0.0, 1.0)
        self._write(trainer, grids, split, pl_module.global_step, pl_module.current_epoch, batch_idx)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, grids: Mapping[str, torch.Tensor], split: str, global_step: int,
               epoch: int, batch_idx: int) -> None:
        root = os.path.join(trainer.logger.save_dir, "images", split)
        os.makedirs(root, exist_ok=True)
        for key, grid in grids.items():
            pixels = (grid.permute(1, 2, 0).squeeze(-1).numpy() * 255).round().astype(np.uint8)
            filename = f"{key}_gs-{global_step:06}_e-{epoch:06}_b-{batch_idx:06}.png"
            Image.fromarray(pixels).save(os.path.join(root, filename))
            if isinstance(trainer.logger, TensorBoardLogger):
                trainer.logger.experiment.add_image(f"{split}/{key}", grid, global_step=global_step)
