"""Training of one VQGAN comparison row with learning-curve evaluation that does not change the training.

:class:`CurveEvaluation` evaluates the model on fixed validation images after the optimizer steps in
``steps`` (default :func:`log_spaced_steps`: every doubling from 64, plus the last). Each evaluation
runs in eval mode, without gradients, with every quantiser passive, and restores the python, numpy
and torch generator states and the train mode afterwards, so a run with and without intermediate
evaluation ends with bit-identical weights (tests/test_vqgan_bench.py proves it).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from arcvq_plugin.config import instantiate_from_config
from arcvq_plugin.data.image_folder import uint8_to_signed_unit
from arcvq_plugin.gan_training import passive_quantizers
from arcvq_plugin.random_state import collect_random_states, restore_random_states
from arcvq_plugin.validation import check_int

__all__ = ["CurveEvaluation", "TrainedVQGAN", "log_spaced_steps", "reconstruct", "train_vqgan"]

FIRST_CURVE_STEP = 64


def log_spaced_steps(last: int, first: int = FIRST_CURVE_STEP) -> list[int]:
    """``first, 2 first, 4 first, ... < last`` and ``last`` (``[last]`` when ``last <= first``)."""
    steps, step = [], first
    while step < last:
        steps.append(step)
        step *= 2
    return [*steps, last]


@torch.no_grad()
def reconstruct(model: torch.nn.Module, pixels: torch.Tensor, batch_size: int = 64
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruct uint8 images ``pixels`` (N, H, W, 3) with a taming VQModel in eval mode.

    Returns ``(real, fake, indices)`` on the CPU: (N, 3, H, W) float in [0, 1] and the selected codes
    (N * h * w,) int64. The caller restores the train mode.
    """
    model.eval()
    real, fake, indices = [], [], []
    for start in range(0, pixels.shape[0], batch_size):
        x = uint8_to_signed_unit(pixels[start:start + batch_size]).permute(0, 3, 1, 2).contiguous()
        quant, _, (_, _, codes) = model.encode(x)
        real.append(((x + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
        fake.append(((model.decode(quant) + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
        indices.append(codes.reshape(-1).cpu())
    return torch.cat(real), torch.cat(fake), torch.cat(indices)


@dataclass
class CurvePoint:
    step: int
    seconds: float
    metrics: dict


class CurveEvaluation(pl.Callback):
    """Evaluate ``metrics_of(model, step)`` after each optimizer step in ``steps`` (see module docstring).

    Args:
        steps: autoencoder optimizer steps to evaluate at (``ManualGANTraining.optimizer_steps``).
        metrics_of: ``(model, step) -> dict`` of metrics (called in eval mode, under no_grad).
        report: called with each :class:`CurvePoint` (the progress line).
        heartbeat: called as ``heartbeat(step, seconds)`` after every ``heartbeat_every`` steps that are
            not curve steps, so that a long run shows it is alive (default: none).
        heartbeat_every: steps between heartbeats (>= 1, default 50).
    """

    def __init__(self, steps: Sequence[int], metrics_of: Callable[[torch.nn.Module, int], dict],
                 report: Optional[Callable[[CurvePoint], None]] = None,
                 heartbeat: Optional[Callable[[int, float], None]] = None, heartbeat_every: int = 50) -> None:
        check_int("heartbeat_every", heartbeat_every, minimum=1)
        self.steps = sorted(set(int(s) for s in steps))
        self.heartbeat, self.heartbeat_every = heartbeat, heartbeat_every
        self.metrics_of = metrics_of
        self.report = report
        self.points: list[CurvePoint] = []
        self.start = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = pl_module.optimizer_steps
        if step not in self.steps:
            if self.heartbeat is not None and step % self.heartbeat_every == 0:
                self.heartbeat(step, time.perf_counter() - self.start)
            return
        if any(p.step == step for p in self.points):
            return
        states, was_training = collect_random_states(), pl_module.training
        try:
            with torch.no_grad(), passive_quantizers(pl_module):
                pl_module.eval()
                metrics = self.metrics_of(pl_module, step)
        finally:
            pl_module.train(was_training)
            restore_random_states(states)
        point = CurvePoint(step, time.perf_counter() - self.start, metrics)
        self.points.append(point)
        if self.report is not None:
            self.report(point)


@dataclass
class TrainedVQGAN:
    model: torch.nn.Module
    seconds: float
    curve: list[CurvePoint] = field(default_factory=list)


def train_vqgan(config: DictConfig, seed: int, curve: Optional[CurveEvaluation] = None,
                device: str | torch.device = "cpu") -> TrainedVQGAN:
    """Seed everything, build the taming VQModel, data and callbacks of ``config`` and fit it on ``device``
    for ``lightning.trainer.max_steps`` autoencoder steps. The learning rate is ``model.base_learning_rate``
    unscaled. ``curve`` (optional) evaluates during the run."""
    device = torch.device(device)
    config = copy.deepcopy(config)  # the caller's config (a restarted run's fingerprint) stays as given
    pl.seed_everything(seed, workers=True)
    model = instantiate_from_config(config.model)
    model.learning_rate = float(config.model.base_learning_rate)
    config.data.params.shuffle_seed = seed
    datamodule = instantiate_from_config(config.data)
    callbacks = [instantiate_from_config(c) for c in (config.get("lightning", {}).get("callbacks") or {}).values()]
    if curve is not None:
        callbacks.append(curve)
    trainer_config = config.lightning.trainer
    # manual optimisation: Lightning counts both optimizers' steps, so max_steps is twice the autoencoder's
    trainer = pl.Trainer(max_epochs=int(trainer_config.max_epochs), max_steps=2 * int(trainer_config.max_steps),
                         accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
                         enable_checkpointing=False, callbacks=callbacks, limit_val_batches=0,
                         num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=False)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    model.to(device)
    return TrainedVQGAN(model, time.perf_counter() - start, [] if curve is None else curve.points)
