"""What ``python -m benchmarks`` runs on each device: the sizes, precisions and repeats.

The CPU plan's sizes take minutes on a 2-core machine; the GPU plan's sizes take a few minutes
on one GPU and would take hours on the CPU. ``--quick`` uses toy sizes on either device (seconds;
a smoke test of every code path).
"""
from __future__ import annotations

from dataclasses import dataclass

from arcvq_plugin.validation import check_choice

from .arc_loss_memory import ArcLossCase
from .devices import check_device
from .quantizers import DTYPES, QuantizerCase
from .train_step import F8_ARMS, F16_ARMS, NO_LPIPS, SMALL_OVERRIDES, TrainStepCase, disc_reconstruction_arms

__all__ = ["Plan", "plan_for"]


@dataclass(frozen=True)
class Plan:
    """What one ``python -m benchmarks`` run measures on ``device``: the cases of each benchmark,
    the quantisers' precisions and the repeats (``quick``: toy sizes)."""

    device: str
    quick: bool
    train: tuple[TrainStepCase, ...]
    arc_loss: tuple[ArcLossCase, ...]
    arc_loss_repeats: int
    quantizers: tuple[QuantizerCase, ...]
    quantizer_dtypes: tuple[str, ...]
    quantizer_repeats: int

    def __post_init__(self) -> None:
        check_device(self.device)
        for dtype in self.quantizer_dtypes:
            check_choice("quantizer_dtypes", dtype, sorted(DTYPES))


TINY_OVERRIDES = NO_LPIPS + (
    "model.params.n_embed=64", "model.params.ddconfig.resolution=32", "model.params.ddconfig.ch=32",
    "model.params.ddconfig.ch_mult=[1,2]", "model.params.ddconfig.attn_resolutions=[]",
    "model.params.ddconfig.num_res_blocks=1", "model.params.lossconfig.params.disc_num_layers=1",
    "model.params.lossconfig.params.disc_ndf=8",
)
"""A toy VQGAN (32 px, ch 32, one downsampling: 16x16 tokens, K=64) for ``--quick``."""

CPU = Plan(
    "cpu", False,
    train=(TrainStepCase("small (64 px, ch 64, f8)", F16_ARMS, SMALL_OVERRIDES, 64, 8, rounds=5, steps_per_round=2),
           TrainStepCase("paper f16 (256 px, ch 128)", F16_ARMS, NO_LPIPS, 256, 1, rounds=2, steps_per_round=3),
           TrainStepCase("small (64 px, ch 64, f8): discriminator reconstructions", disc_reconstruction_arms(F16_ARMS),
                         SMALL_OVERRIDES, 64, 8, rounds=3, steps_per_round=2, quantizer_repeats=1, target=False)),
    arc_loss=(ArcLossCase(16384, 32768, 16, 1024), ArcLossCase(16384, 32768, 256, 1024)),
    arc_loss_repeats=3,
    quantizers=(QuantizerCase(1024, 16, 30, 16, 1024), QuantizerCase(16384, 16, 8, 32, 1024),
                QuantizerCase(16384, 256, 8, 32, 1024)),
    quantizer_dtypes=("fp32",), quantizer_repeats=3,
)
CUDA = Plan(
    "cuda", False,
    train=(TrainStepCase("paper f8 (256 px, ch 128)", F8_ARMS, NO_LPIPS, 256, 30, rounds=3, steps_per_round=3,
                         quantizer_repeats=50),
           TrainStepCase("paper f8 (256 px, ch 128): discriminator reconstructions",
                         disc_reconstruction_arms(F8_ARMS[1:]), NO_LPIPS, 256, 30, rounds=2, steps_per_round=2,
                         quantizer_repeats=1, target=False)),
    arc_loss=(ArcLossCase(16384, 32768, 16, 2048), ArcLossCase(16384, 32768, 256, 2048),
              ArcLossCase(100000, 32768, 8, 2048)),
    arc_loss_repeats=10,
    quantizers=(QuantizerCase(1024, 16, 30, 32, 2048), QuantizerCase(16384, 16, 32, 32, 2048),
                QuantizerCase(16384, 256, 32, 32, 2048), QuantizerCase(100000, 8, 32, 32, 2048)),
    quantizer_dtypes=("fp32", "bf16"), quantizer_repeats=10,
)


def _quick(device: str) -> Plan:
    return Plan(
        device, True,
        train=(TrainStepCase("tiny (32 px, ch 32)", F16_ARMS, TINY_OVERRIDES, 32, 2, rounds=1, steps_per_round=1,
                             quantizer_repeats=3),
               TrainStepCase("tiny (32 px, ch 32): discriminator reconstructions", disc_reconstruction_arms(F16_ARMS[1:]),
                             TINY_OVERRIDES, 32, 2, rounds=1, steps_per_round=1, quantizer_repeats=1, target=False)),
        arc_loss=(ArcLossCase(64, 256, 8, 32),), arc_loss_repeats=1,
        quantizers=(QuantizerCase(64, 8, 2, 4, 16),), quantizer_dtypes=("fp32", "bf16"), quantizer_repeats=1,
    )


def plan_for(device: str, quick: bool) -> Plan:
    """The plan for ``device`` ("cpu" or "cuda"); ``quick``: toy sizes."""
    check_device(device)
    if quick:
        return _quick(device)
    return CPU if device == "cpu" else CUDA
