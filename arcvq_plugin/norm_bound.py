"""Ball-Bounded Norm Regularisation (BBNR, METHOD.md section 3) and its post-step hook.

``e_k <- e_k * min(1, R(t) / ||e_k||)`` is computed as ``e_k * exp(min(0, log R - log||e_k||))``:
the factor is an exp of a non-positive number, so no R(t) overflow can turn rows into inf or NaN,
and rows inside the ball are multiplied by exactly 1 (left bit-for-bit unchanged).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:  # pragma: no cover
    from .quantizer import ArcQuantizer

__all__ = ["NORM_FLOOR", "clip_rows_to_radius_", "log_row_norms", "quantizers_in", "register_norm_bound_hook"]

NORM_FLOOR = 1e-12


def log_row_norms(weight: torch.Tensor) -> torch.Tensor:
    """``log max(||w_k||, NORM_FLOOR)`` of each row of ``weight`` (K, D) -> (K, 1), in float32 or wider.

    Rows are scaled by their largest entry before squaring, so norms near float32's max (where a
    plain ``norm`` squares to inf) still come out finite.
    """
    w = weight.to(torch.promote_types(weight.dtype, torch.float32))
    peak = w.abs().amax(dim=1, keepdim=True).clamp_min(NORM_FLOOR)
    return (peak.log() + (w / peak).norm(dim=1, keepdim=True).log()).clamp_min(math.log(NORM_FLOOR))


@torch.no_grad()
def clip_rows_to_radius_(weight: torch.Tensor, log_radius: torch.Tensor) -> torch.Tensor:
    """Scale every row of ``weight`` (K, D) whose L2 norm exceeds ``exp(log_radius)`` onto the sphere.

    In place; directions never change; rows inside the ball are untouched; returns ``weight``.
    ``log_radius`` is a scalar tensor (any float dtype).
    """
    log_norms = log_row_norms(weight)
    log_scale = (log_radius.to(log_norms) - log_norms).clamp(max=0.0)
    weight.mul_(log_scale.exp().to(weight.dtype))
    return weight


def quantizers_in(module: nn.Module, *, trainable_only: bool = False) -> list["ArcQuantizer"]:
    """Every ArcQuantizer inside ``module`` (itself included), in ``modules()`` order.

    With ``trainable_only``, frozen codebooks (``requires_grad=False``, e.g. a LatentDiffusion's
    first stage) are left out: no optimizer steps them, so there is no bound to apply.
    """
    from .quantizer import ArcQuantizer

    return [m for m in module.modules() if isinstance(m, ArcQuantizer)
            and (m.embedding.weight.requires_grad or not trainable_only)]


def _owns(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> bool:
    return any(p is parameter for group in optimizer.param_groups for p in group["params"])


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


def _post_step_hook(quantizer: "ArcQuantizer"):
    def hook(optimizer: torch.optim.Optimizer, args: Iterable, kwargs: dict) -> None:
        quantizer.after_optimizer_step()

    return hook
