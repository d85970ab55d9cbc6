"""VQGAN train-step time: ``arcvq_plugin.taming.VQModel`` arms (ArcQuantizer, taming's
``VectorQuantizer2``, ...) built from the repository's configs, each step run by a Lightning
``Trainer`` through the model's own ``training_step``.

A case names its arms (:class:`TrainArm`: a config file plus dotlist overrides); the first arm is
the baseline every ratio is taken over. All arms get the case's overrides, share every weight
but the quantiser's, and train on one fixed batch already on the device. A step is what the
Trainer runs for one batch, from its ``on_train_batch_start`` to its ``on_train_batch_end``: the
model's ``training_step`` (whatever its loop does: forward, autoencoder loss, backward, Adam step
with the norm-bound hook of ``NormBoundCallback``, discriminator loss, backward, Adam step,
logging calls), timed with :class:`benchmarks.measure.Interval` (CUDA events on a GPU).

The arms alternate in rounds (A B, B A, ...): each round fits each arm for
``warmup_batches + steps_per_round`` batches with a fresh Trainer and keeps the last
``steps_per_round`` (the first batch of a fit creates the optimizer state). A batch that does not
fit in memory is halved until one does (reported). LPIPS weights are not installed offline, so
the configs are run with ``perceptual_weight: 0`` (``arcvq_plugin.taming.VQLPIPSWithDiscriminator``
then builds no LPIPS): L1 + codebook + GAN loss.

Comparing training-loop modes is more arms: :func:`disc_reconstruction_arms` gives each arm
twice, with the discriminator on fresh reconstructions (the default, upstream's) and on the
autoencoder pass's reused ones (``disc_reconstruction: reuse``); such a case has no target.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.norm_bound_callback import NormBoundCallback
from arcvq_plugin.validation import check_int

from .measure import (Comparison, Interval, interleaved, is_out_of_memory, out_of_memory_note, release_memory,
                      timed)

__all__ = ["BatchTimer", "F16_ARMS", "F8_ARMS", "NO_LPIPS", "SMALL_OVERRIDES", "TrainArm", "TrainStepCase",
           "TrainStepResult", "build_models", "disc_reconstruction_arms", "run_case"]

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "taming"


@dataclass(frozen=True)
class TrainArm:
    """One arm: a model config file and dotlist overrides of its own (on top of the case's)."""

    name: str
    config: Path
    overrides: tuple[str, ...] = ()


F16_ARMS = (TrainArm("VectorQuantizer2", CONFIGS / "imagenet_vqgan_f16.yaml"),
            TrainArm("ArcQuantizer", CONFIGS / "imagenet_arcvq_f16.yaml"))
"""The paper's f16 tokenizer and its baseline (the files differ only in ``quantizer_config``)."""
F8_ARMS = (TrainArm("VectorQuantizer2", CONFIGS / "imagenet_vqgan_f8.yaml"),
           TrainArm("ArcQuantizer", CONFIGS / "imagenet_arcvq_f8.yaml"))
"""The paper's f8 ImageNet tokenizer (256 px -> 32x32 tokens, K=1024, D=16) and its baseline."""

def disc_reconstruction_arms(arms: Sequence[TrainArm]) -> tuple[TrainArm, ...]:
    """Each of ``arms`` with ``disc_reconstruction`` fresh (as configured: the default) and reuse."""
    return tuple(TrainArm(f"{arm.name}, {mode}", arm.config,
                          arm.overrides + (("model.params.disc_reconstruction=reuse",) if mode == "reuse" else ()))
                 for arm in arms for mode in ("fresh", "reuse"))


NO_LPIPS: tuple[str, ...] = ("model.params.lossconfig.params.perceptual_weight=0.0",)
SMALL_OVERRIDES: tuple[str, ...] = NO_LPIPS + (
    "model.params.ddconfig.resolution=64", "model.params.ddconfig.ch=64",
    "model.params.ddconfig.ch_mult=[1,2,2,4]", "model.params.ddconfig.attn_resolutions=[8]",
)
"""With :data:`F16_ARMS`: a small real VQGAN, 64 px, ch 64, f8 (8x8 tokens), K=1024, D=16."""


@dataclass(frozen=True)
class TrainStepCase:
    """A model size and batch, the arms to compare and how many steps to time.

    ``batch_size`` is the largest batch tried (halved while it runs out of memory). ``target``:
    whether the ratios are held to the train-step target (False for training-loop modes).
    """

    name: str
    arms: tuple[TrainArm, ...]
    overrides: tuple[str, ...]
    resolution: int
    batch_size: int
    rounds: int = 3
    steps_per_round: int = 2
    warmup_batches: int = 1
    quantizer_repeats: int = 30
    target: bool = True

    def __post_init__(self) -> None:
        if len(self.arms) < 2 or len({arm.name for arm in self.arms}) != len(self.arms):
            raise ValueError(f"a train-step case needs >= 2 arms with distinct names, got {self.arms}")
        for name in ("batch_size", "rounds", "steps_per_round", "quantizer_repeats"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("warmup_batches", self.warmup_batches, minimum=0)

    @property
    def baseline(self) -> str:
        return self.arms[0].name


@dataclass
class TrainStepResult:
    case: TrainStepCase
    batch_size: int  # the batch that fit (case.batch_size unless that ran out of memory)
    tokens: str  # latent grid per image, e.g. "32x32"
    seconds: Comparison  # per arm: seconds per step
    quantizer_seconds: Comparison  # per distinct quantiser (named after its first arm): seconds alone
    batches_out_of_memory: list[int] = field(default_factory=list)
    failure: Optional[str] = None  # set when not even batch 1 fit


class BatchTimer(pl.Callback):
    """Times every training batch the Trainer runs, from ``on_train_batch_start`` to
    ``on_train_batch_end`` (CUDA events on a GPU: no host synchronisation per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.intervals: list[Interval] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        interval = Interval(self.device)
        self.intervals.append(interval)
        interval.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.intervals[-1].stop()

    def seconds(self) -> list[float]:
        return [interval.seconds() for interval in self.intervals]


class _SameBatch(Dataset):
    """``length`` times the same batch (a dict of tensors already on the device)."""

    def __init__(self, batch: dict[str, torch.Tensor], length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batch


def build_models(case: TrainStepCase) -> dict[str, pl.LightningModule]:
    """Every arm of ``case`` from its config; all share the baseline's weights but the quantiser's."""
    models = {}
    for arm in case.arms:
        config = load_configs([str(arm.config)], list(case.overrides) + list(arm.overrides))
        torch.manual_seed(0)
        model = instantiate_from_config(config.model)
        model.learning_rate = float(config.model.base_learning_rate)
        models[arm.name] = model
    shared = {k: v for k, v in models[case.baseline].state_dict().items() if not k.startswith("quantize.")}
    for name, model in models.items():
        if name != case.baseline:
            model.load_state_dict(shared, strict=False)
    return models


def fit_and_time(model: pl.LightningModule, batch: dict[str, torch.Tensor], device: torch.device,
                 warmup_batches: int, steps: int) -> list[float]:
    """Fit ``model`` on ``warmup_batches + steps`` copies of ``batch`` with a fresh Trainer; the
    seconds of the last ``steps`` batches."""
    timer = BatchTimer(device)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
            limit_train_batches=warmup_batches + steps, limit_val_batches=0, num_sanity_val_steps=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[NormBoundCallback(), timer], default_root_dir=root)
        trainer.fit(model, train_dataloaders=DataLoader(_SameBatch(batch, warmup_batches + steps), batch_size=None))
    seconds = timer.seconds()
    if len(seconds) != warmup_batches + steps:
        raise RuntimeError(f"the Trainer ran {len(seconds)} batches, expected {warmup_batches + steps}")
    return seconds[warmup_batches:]


def quantizer_seconds(models: dict[str, pl.LightningModule], latent_shape: Sequence[int], repeats: int,
                      device: torch.device) -> Comparison:
    """Each distinct quantiser (copies; arms with an identical quantiser are timed once, under the
    first arm's name) alone on random latents of ``latent_shape`` (B, D, h, w): forward + backward
    of ``z_q.square().mean() + loss``, plus ``after_optimizer_step`` (the norm-bound hook) where
    the quantiser has one."""
    def step(quantizer, z):
        z.grad = None
        z_q, loss, _ = quantizer(z)
        (z_q.square().mean() + loss).backward()
        if hasattr(quantizer, "after_optimizer_step"):
            quantizer.after_optimizer_step()

    z = torch.randn(*latent_shape, device=device).requires_grad_()
    arms, seen = {}, set()
    for arm, model in models.items():
        if repr(model.quantize) in seen:
            continue
        seen.add(repr(model.quantize))
        quantizer = copy.deepcopy(model.quantize).to(device).train()
        arms[arm] = lambda q=quantizer: timed(lambda: step(q, z), device)
    return interleaved(arms, repeats, warmup=3, device=device)


def _run_at_batch(case: TrainStepCase, batch_size: int, device: torch.device) -> TrainStepResult:
    models = build_models(case)
    baseline = models[case.baseline]
    side = case.resolution // 2 ** (baseline.encoder.num_resolutions - 1)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, case.resolution, case.resolution, 3, generator=generator) * 2 - 1
    batch = {baseline.image_key: images.to(device)}
    seconds = Comparison({arm.name: [] for arm in case.arms})
    for round_index in range(case.rounds):
        for arm in case.arms if round_index % 2 == 0 else reversed(case.arms):
            seconds.samples[arm.name] += fit_and_time(models[arm.name], batch, device,
                                                      case.warmup_batches, case.steps_per_round)
    alone = quantizer_seconds(models, (batch_size, baseline.quantize.e_dim, side, side),
                              case.quantizer_repeats, device)
    return TrainStepResult(case, batch_size, f"{side}x{side}", seconds, alone)


def run_case(case: TrainStepCase, device: torch.device = torch.device("cpu")) -> TrainStepResult:
    """Time ``case`` at ``case.batch_size``, halving the batch while it runs out of memory."""
    batch_size, out_of_memory = case.batch_size, []
    while True:
        failure = None
        try:
            result = _run_at_batch(case, batch_size, device)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is a result
            if not is_out_of_memory(error):
                raise
            failure = out_of_memory_note(error)
        if failure is None:
            result.batches_out_of_memory = out_of_memory
            return result
        out_of_memory.append(batch_size)
        release_memory(device)
        if batch_size == 1:
            empty = Comparison({arm.name: [] for arm in case.arms})
            return TrainStepResult(case, 0, "-", empty, Comparison(), out_of_memory,
                                   f"every batch size down to 1 ran {failure}")
        batch_size = max(1, batch_size // 2)
