"""The rotation trick: a gradient estimator through vector quantisation, instead of straight-through.

Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation Trick" (arXiv 2410.06424),
section 4.2. For each latent z (D,) and its selected code z_q (D,), with

    u = z / ||z||,   q = z_q / ||z_q||,   r = (u + q) / ||u + q||,   lambda = ||z_q|| / ||z||,
    R = I - 2 r r^T + 2 q u^T      (the rotation taking u onto q: R u = q)

the output is ``lambda R z``, with R and lambda treated as constants (stop-gradient): its value
is z_q, and the gradient reaching z is ``(lambda R)^T grad``, so the encoder's gradient keeps the
angle between z and its code instead of being copied unchanged (straight-through, R = I, lambda = 1).
``R z = z - 2 (z . r) r + 2 (z . u) q`` is computed row by row, never as a D x D matrix (as in
vector-quantize-pytorch's ``efficient_rotation_trick_transform``, the authors' reference).

Edge cases, all finite:

- u = -q (antipodal): ``u + q = 0``, r is taken as 0 (``F.normalize``), and R = I + 2 q u^T =
  I - 2 u u^T, the reflection that takes u onto q = -u;
- ||z|| = 0 (no direction to rotate): the row falls back to straight-through (gradient unchanged);
- the value returned is ``z_q`` through ``x + (z_q - x).detach()``, exact up to one rounding, as
  taming's straight-through ``z + (z_q - z).detach()``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .norm_bound import NORM_FLOOR

__all__ = ["rotate_onto"]


def rotate_onto(z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """z_q in value, ``(lambda R)^T grad`` as the gradient of z (module docstring); rows on the last axis.

    Args:
        z: latents (..., D), requiring grad or not.
        z_q: their selected codes (..., D), same shape; no gradient flows into them here.
    Returns:
        (..., D) in ``promote_types(z.dtype, z_q.dtype, float32)``, computed with autocast off.
    """
    if z.shape != z_q.shape:
        raise ValueError(f"z and z_q must have the same shape, got {tuple(z.shape)} and {tuple(z_q.shape)}")
    dtype = torch.promote_types(torch.promote_types(z.dtype, z_q.dtype), torch.float32)
    with torch.autocast(device_type=z.device.type, enabled=False):
        x, target = z.to(dtype), z_q.detach().to(dtype)
        z_norm = x.detach().norm(dim=-1, keepdim=True)
        q_norm = target.norm(dim=-1, keepdim=True)
        has_direction = z_norm > NORM_FLOOR
        u = x.detach() / z_norm.clamp_min(NORM_FLOOR)
        q = target / q_norm.clamp_min(NORM_FLOOR)
        r = F.normalize(u + q, dim=-1, eps=NORM_FLOOR)
        scale = torch.where(has_direction, q_norm / z_norm.clamp_min(NORM_FLOOR), torch.ones_like(z_norm))
        rotated = x - 2 * (x * r).sum(-1, keepdim=True) * r + 2 * (x * u).sum(-1, keepdim=True) * q
        transformed = torch.where(has_direction, scale * rotated, x)
        return transformed + (target - transformed).detach()
