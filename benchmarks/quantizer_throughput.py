"""Quantiser forward + backward throughput: ArcQuantizer over vector-quantize-pytorch.

Both arms quantise the same N latents of dimension D with K codes in training mode and run one
backward through ``quantised.square().mean() + quantiser_loss`` (a stand-in for the decoder's
loss; the straight-through estimator and each quantiser's own loss are differentiated).
The other arm is ``vector_quantize_pytorch.VectorQuantize(dim=D, codebook_size=K,
use_cosine_sim=True)`` with its defaults (EMA codebook update, rotation trick), fed the same
latents channel-last, as it expects. ArcQuantizer runs with its defaults (BBNR, ArcLoss, top-k 3)
and, as a second row, with ``arc_chunk_size`` set. Throughput = N / median seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from arcvq_plugin import ArcQuantizer

from .measure import Comparison, interleaved, timed

__all__ = ["QuantizerCase", "QuantizerResult", "run_case"]


@dataclass(frozen=True)
class QuantizerCase:
    """K codes of dimension D; latents as a (batch, D, side, side) feature map: N = batch * side**2."""

    k: int
    d: int
    batch: int
    side: int
    arc_chunk_size: Optional[int] = None

    @property
    def n(self) -> int:
        return self.batch * self.side * self.side


@dataclass
class QuantizerResult:
    case: QuantizerCase
    seconds: Comparison  # arms "ArcQuantizer", "VectorQuantize"


def run_case(case: QuantizerCase, repeats: int) -> QuantizerResult:
    """Interleaved forward + backward timings of both quantisers on the same latents."""
    from vector_quantize_pytorch import VectorQuantize

    torch.manual_seed(0)
    arc = ArcQuantizer(case.k, case.d, arc_chunk_size=case.arc_chunk_size).train()
    lucid = VectorQuantize(dim=case.d, codebook_size=case.k, use_cosine_sim=True).train()
    z = torch.randn(case.batch, case.d, case.side, case.side)
    z_arc = z.clone().requires_grad_()
    z_lucid = z.permute(0, 2, 3, 1).reshape(case.batch, -1, case.d).contiguous().requires_grad_()

    def arc_step() -> None:
        z_arc.grad = None
        quantised, loss, _ = arc(z_arc)
        (quantised.square().mean() + loss).backward()

    def lucid_step() -> None:
        z_lucid.grad = None
        quantised, _, loss = lucid(z_lucid)
        (quantised.square().mean() + loss.sum()).backward()

    seconds = interleaved({"ArcQuantizer": lambda: timed(arc_step),
                           "VectorQuantize": lambda: timed(lucid_step)}, repeats)
    return QuantizerResult(case, seconds)
