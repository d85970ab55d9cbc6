"""Quantiser forward + backward: ArcQuantizer (dense and chunked ArcLoss) against taming's
``VectorQuantizer2`` and vector-quantize-pytorch's cosine ``VectorQuantize``.

Every arm quantises the same N latents of dimension D with K codes in training mode and runs one
backward through ``quantised.square().mean() + quantiser_loss`` (a stand-in for the decoder's
loss; the straight-through estimator and each quantiser's own loss are differentiated), plus,
for ArcQuantizer, ``after_optimizer_step()`` (the norm-bound hook a training step fires). Arms:

- ``ArcQuantizer``: its defaults (BBNR, ArcLoss with top-k 3, dense: ``arc_chunk_size=None``);
- ``ArcQuantizer chunked``: the same with ``arc_chunk_size`` of the case;
- ``VectorQuantizer2``: taming's quantiser (nearest code in L2, beta 0.25, no extra loss);
- ``VectorQuantize``: ``vector_quantize_pytorch.VectorQuantize(dim=D, codebook_size=K,
  use_cosine_sim=True)`` with its defaults (EMA codebook update, rotation trick), fed the same
  latents channel-last as it expects (needs ``pip install vector-quantize-pytorch``).

Per arm: seconds (:func:`benchmarks.measure.timed`: CUDA events on a GPU; median of interleaved
repeats), the peak memory of one call on a GPU (:func:`benchmarks.measure.peak_memory`), and
whether its output, loss and input gradient are finite. ``bf16`` runs the forward under
``torch.autocast(dtype=torch.bfloat16)`` on latents given in bf16 (as an encoder under autocast
produces them); the backward runs outside autocast. An arm that runs out of memory is reported.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from arcvq_plugin import ArcQuantizer
from arcvq_plugin.validation import check_choice

from .measure import (Comparison, interleaved, is_out_of_memory, out_of_memory_note, peak_memory,
                      release_memory, timed)

__all__ = ["ARMS", "DTYPES", "QuantizerCase", "QuantizerResult", "run_case", "vector_quantize_available"]

ARMS = ("ArcQuantizer", "ArcQuantizer chunked", "VectorQuantizer2", "VectorQuantize")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
"""Autocast dtype of each precision setting (None: no autocast)."""


def vector_quantize_available() -> bool:
    return importlib.util.find_spec("vector_quantize_pytorch") is not None


@dataclass(frozen=True)
class QuantizerCase:
    """K codes of dimension D; latents as a (batch, D, side, side) feature map: N = batch * side**2;
    ``chunk_size``: latents per ArcLoss chunk of the chunked arm."""

    k: int
    d: int
    batch: int
    side: int
    chunk_size: int

    @property
    def n(self) -> int:
        return self.batch * self.side * self.side


@dataclass
class QuantizerResult:
    case: QuantizerCase
    dtype: str  # a key of DTYPES
    seconds: Comparison  # per arm; failures: out of memory
    peak_bytes: dict[str, float] = field(default_factory=dict)  # per arm, GPU only
    finite: dict[str, bool] = field(default_factory=dict)  # per arm that ran


def _build(case: QuantizerCase, device: torch.device) -> dict[str, tuple[nn.Module, bool]]:
    """arm -> (quantiser on ``device`` in training mode, whether it takes channel-last latents)."""
    torch.manual_seed(0)
    arms = {"ArcQuantizer": (ArcQuantizer(case.k, case.d), False),
            "ArcQuantizer chunked": (ArcQuantizer(case.k, case.d, arc_chunk_size=case.chunk_size), False),
            "VectorQuantizer2": (VectorQuantizer2(case.k, case.d, beta=0.25), False)}
    if vector_quantize_available():
        from vector_quantize_pytorch import VectorQuantize

        arms["VectorQuantize"] = (VectorQuantize(dim=case.d, codebook_size=case.k, use_cosine_sim=True), True)
    return {name: (module.to(device).train(), channel_last) for name, (module, channel_last) in arms.items()}


def _step(module: nn.Module, channel_last: bool, z: torch.Tensor, device: torch.device,
          autocast_dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward + backward (+ the norm-bound hook); returns (quantised, loss), detached."""
    module.zero_grad(set_to_none=True)
    z.grad = None
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        if channel_last:
            quantised, _, loss = module(z)
            loss = loss.sum()
        else:
            quantised, loss, _ = module(z)
        total = quantised.float().square().mean() + loss
    total.backward()
    if hasattr(module, "after_optimizer_step"):
        module.after_optimizer_step()
    return quantised.detach(), loss.detach()


def run_case(case: QuantizerCase, dtype: str, repeats: int,
             device: torch.device = torch.device("cpu")) -> QuantizerResult:
    """Every arm on the same latents: warm-up, one call for peak memory and finiteness, then
    ``repeats`` interleaved timed calls."""
    check_choice("dtype", dtype, sorted(DTYPES))
    autocast_dtype = DTYPES[dtype]
    input_dtype = autocast_dtype or torch.float32
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(case.batch, case.d, case.side, case.side, generator=generator)
    z_channel_last = z.permute(0, 2, 3, 1).reshape(case.batch, -1, case.d)
    inputs = {False: z.to(device, input_dtype).clone().requires_grad_(),  # leaves of their own
              True: z_channel_last.to(device, input_dtype).clone().requires_grad_()}
    arms = _build(case, device)
    calls: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
        name: (lambda m=module, last=channel_last: _step(m, last, inputs[last], device, autocast_dtype))
        for name, (module, channel_last) in arms.items()}

    result = QuantizerResult(case, dtype, Comparison())
    probe_failures = {}
    for name, call in calls.items():  # warm-up, then one call for memory and finiteness
        failure = None
        try:
            call()
            module, channel_last = arms[name]
            z_arm = inputs[channel_last]
            module.zero_grad(set_to_none=True)  # so that the peak counts this call's gradients, not
            z_arm.grad = None  # the warm-up's
            box = {}
            peak = peak_memory(lambda: box.update(out=call()), device)
            quantised, loss = box["out"]
            grad = z_arm.grad
            result.finite[name] = bool(torch.isfinite(quantised).all() and torch.isfinite(loss).all()
                                       and grad is not None and torch.isfinite(grad).all())
            if peak is not None:
                result.peak_bytes[name] = float(peak)
        except Exception as error:  # noqa: BLE001 - only out-of-memory is a result
            if not is_out_of_memory(error):
                raise
            failure = out_of_memory_note(error)
        if failure is not None:
            probe_failures[name] = failure
            release_memory(device)
    timed_calls = {name: (lambda c=call: timed(c, device)) for name, call in calls.items()
                   if name not in probe_failures}
    result.seconds = interleaved(timed_calls, repeats, warmup=0, device=device)
    for name, failure in probe_failures.items():
        result.seconds.samples[name] = []
        result.seconds.failures[name] = failure
    return result
