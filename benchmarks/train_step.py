"""VQGAN train-step time: ``arcvq_plugin.taming.VQModel`` with ArcQuantizer over the same model
with taming's ``VectorQuantizer2``.

Both arms are built from the repository's configs (``configs/taming/imagenet_arcvq_f16.yaml``
and its baseline ``imagenet_vqgan_f16.yaml``, which differ only in ``quantizer_config``), with
the same overrides, and share every weight except the quantiser's. A step is what the model's
manual-optimisation ``training_step`` does, run without a Trainer so that single steps of the
two arms can alternate (A B, B A, ...; whole-step times drift by tens of percent on a shared
machine): one forward, the model's own autoencoder loss, backward, its Adam step (which for
ArcVQ also fires the norm-bound hook that ``NormBoundCallback`` registers: clock + BBNR), then
the discriminator loss, backward and Adam step. Lightning's logging is left out of both arms.
LPIPS weights are not installed offline, so both arms use ``perceptual_weight: 0``
(``arcvq_plugin.taming.VQLPIPSWithDiscriminator`` then builds no LPIPS): L1 + codebook + GAN.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch

from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.norm_bound_callback import register_norm_bound_hook

from .measure import Comparison, interleaved, timed

__all__ = ["F16_OVERRIDES", "SMALL_OVERRIDES", "ManualTrainStep", "TrainStepCase", "TrainStepResult", "run_case"]

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "taming"
ARC_CONFIG, BASELINE_CONFIG = CONFIGS / "imagenet_arcvq_f16.yaml", CONFIGS / "imagenet_vqgan_f16.yaml"
ARMS = {"ArcQuantizer": ARC_CONFIG, "VectorQuantizer2": BASELINE_CONFIG}

F16_OVERRIDES: tuple[str, ...] = ("model.params.lossconfig.params.perceptual_weight=0.0",)
"""The paper's f16 model (256 px, ch 128, K=1024, D=16) without LPIPS."""

SMALL_OVERRIDES: tuple[str, ...] = F16_OVERRIDES + (
    "model.params.ddconfig.resolution=64", "model.params.ddconfig.ch=64",
    "model.params.ddconfig.ch_mult=[1,2,2,4]", "model.params.ddconfig.attn_resolutions=[8]",
)
"""A small real VQGAN: 64 px, ch 64, f8 (8x8 tokens), K=1024, D=16, full discriminator."""


@dataclass(frozen=True)
class TrainStepCase:
    name: str
    overrides: tuple[str, ...]
    resolution: int
    batch_size: int
    steps: int = 6


@dataclass
class TrainStepResult:
    case: TrainStepCase
    tokens: str  # latent grid per image, e.g. "16x16"
    seconds: Comparison = field(default_factory=lambda: Comparison({arm: [] for arm in ARMS}))
    quantizer_seconds: Comparison = field(default_factory=lambda: Comparison({arm: [] for arm in ARMS}))


class ManualTrainStep:
    """One training batch of ``model`` as its ``training_step`` does it, without a Trainer."""

    def __init__(self, model: pl.LightningModule) -> None:
        optimizers, _ = model.configure_optimizers()
        self.model, (self.opt_ae, self.opt_disc) = model.train(), optimizers
        self.handles = register_norm_bound_hook(self.opt_ae, model)  # as NormBoundCallback

    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        model = self.model
        step = model.batches_trained
        x = model.get_input(batch, model.image_key)
        xrec, qloss = model(x)
        aeloss, _ = model.loss(qloss, x, xrec, 0, step, last_layer=model.get_last_layer(), split="train")
        self.opt_ae.zero_grad(set_to_none=True)
        aeloss.backward()
        self.opt_ae.step()
        discloss, _ = model.loss(qloss.detach(), x, xrec.detach(), 1, step,
                                 last_layer=model.get_last_layer(), split="train")
        self.opt_disc.zero_grad(set_to_none=True)
        discloss.backward()
        self.opt_disc.step()


def build_models(overrides: Sequence[str]) -> dict[str, pl.LightningModule]:
    """Both arms from the repository configs with ``overrides``; same weights but the quantiser's."""
    models = {}
    for arm, path in ARMS.items():
        config = load_configs([str(path)], overrides)
        torch.manual_seed(0)
        model = instantiate_from_config(config.model)
        model.learning_rate = float(config.model.base_learning_rate)
        models[arm] = model
    shared = {k: v for k, v in models["VectorQuantizer2"].state_dict().items() if not k.startswith("quantize.")}
    models["ArcQuantizer"].load_state_dict(shared, strict=False)
    return models


def quantizer_seconds(models: dict[str, pl.LightningModule], latent_shape: Sequence[int],
                      repeats: int) -> Comparison:
    """Each arm's quantiser alone (copies of it) on random latents of ``latent_shape`` (B, D, h, w):
    forward + backward of ``z_q.square().mean() + loss``, plus ``after_optimizer_step`` (the
    norm-bound hook) where the quantiser has one."""
    def step(quantizer, z):
        z.grad = None
        z_q, loss, _ = quantizer(z)
        (z_q.square().mean() + loss).backward()
        if hasattr(quantizer, "after_optimizer_step"):
            quantizer.after_optimizer_step()

    z = torch.randn(*latent_shape).requires_grad_()
    arms = {}
    for arm, model in models.items():
        quantizer = copy.deepcopy(model.quantize).train()
        arms[arm] = lambda q=quantizer: timed(lambda: step(q, z))
    return interleaved(arms, repeats, warmup=3)


def run_case(case: TrainStepCase) -> TrainStepResult:
    """``case.steps`` interleaved train steps per arm (after one warm-up step each), then the
    quantisers alone at the model's latent shape."""
    models = build_models(case.overrides)
    side = case.resolution // 2 ** (models["ArcQuantizer"].encoder.num_resolutions - 1)
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(case.batch_size, case.resolution, case.resolution, 3, generator=generator) * 2 - 1}
    steps = {arm: ManualTrainStep(model) for arm, model in models.items()}
    seconds = interleaved({arm: (lambda s=s: timed(lambda: s(batch))) for arm, s in steps.items()}, case.steps)
    embed_dim = models["ArcQuantizer"].quantize.e_dim
    quantizer = quantizer_seconds(models, (case.batch_size, embed_dim, side, side), 30)
    return TrainStepResult(case, f"{side}x{side}", seconds, quantizer)
