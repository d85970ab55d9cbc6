"""FSQ: finite scalar quantisation (an implicit codebook) behind taming's ``VectorQuantizer2`` contract.

Mentzer et al. 2024, "Finite Scalar Quantization: VQ-VAE Made Simple" (ICLR 2024, arXiv 2309.15505),
adapted from lucidrains' vector-quantize-pytorch at commit 0d7d1aa
(``vector_quantize_pytorch/finite_scalar_quantization.py``, class ``FSQ``; cited as line numbers),
itself the PyTorch port of the paper's JAX listing (Appendix A.1)::

    quantizer:
      target: arcvq_plugin.baselines.FSQ
      params: {levels: [8, 8, 8]}     # n_e = 8 * 8 * 8 = 512

Codebook size: this adapter takes ``levels`` (one integer L_i >= 3 per FSQ channel) and requires
``n_e`` (filled from the model's ``n_embed``) to equal their product; it does not pick levels for an
``n_e``. The paper's recommended levels (its Table 1) are [8, 6, 5] (240 codes), [8, 5, 5, 5] (1000),
[7, 5, 5, 5, 5] (4375), [8, 8, 8, 6, 5] (15,360), [8, 8, 8, 5, 5, 5] (64,000); [8, 8, 8] gives 512.

The method (d = len(levels) channels; lucidrains :116-118, :147-157, :195-224)::

    z_d   = project_in(z)                          Linear(e_dim, d) with bias (none when e_dim == d)
    half  = (L - 1) (1 + 1e-3) / 2;  offset = 0.5 for even L, else 0;  shift = atanh(offset / half)
    zhat  = round_ste(tanh(z_d + shift) * half - offset) / (L // 2)     each channel in [-1, 1]
    z_q   = project_out(zhat)                      Linear(d, e_dim) with bias (none when e_dim == d)
    index = sum_i (zhat_i * (L_i // 2) + L_i // 2) * prod_{j < i} L_j

``round_ste`` is rounding with the straight-through gradient. The paper's listing writes
``(1 - eps)`` and ``tan``; lucidrains' ``(1 + eps)`` and ``atanh`` (the inverse of the tanh, so that
z_d = 0 lands on the offset) are used here. There is no loss (FSQ has no codebook to fit or commit
to): the returned loss is a zero tensor, and ``beta`` / ``legacy`` do not exist. lucidrains'
options (``num_codebooks``, ``scale``, ``preserve_symmetry``, ``noise_dropout``, ``bound_hard_clamp``,
``orthogonal_rotation``) keep their defaults and are not offered; quantisation runs in float32 at
least, as lucidrains' ``force_quantization_f32``.

``get_codebook_entry(indices)`` is ``project_out(codes(indices))``, the training z_q. The module has no
``embedding``; :attr:`codebook` (K, e_dim) is ``project_out`` of all K codes. No statistics are kept:
on several processes DDP's gradient averaging keeps both projections identical on every rank; eval-mode
and ``passive()`` forwards change nothing.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from einops import rearrange
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from arcvq_plugin.quantizer_contract import QuantizerContract
from arcvq_plugin.validation import check_int

__all__ = ["BOUND_EPS", "FSQ"]

BOUND_EPS = 1e-3
"""The eps of lucidrains' ``bound`` (:147): half = (L - 1) (1 + eps) / 2."""


def round_ste(z: torch.Tensor) -> torch.Tensor:
    """Round with the straight-through gradient (lucidrains :52-55)."""
    return z + (z.round() - z).detach()


class FSQ(QuantizerContract, nn.Module):
    """Finite scalar quantisation with linear projections from and to ``e_dim``.

    Args:
        n_e: codebook size K, an integer equal to the product of ``levels``.
        e_dim: channels of the encoder output (and the decoder input), an integer >= 1.
        remap, unknown_index, sane_index_shape: as ``VectorQuantizer2``.
    FSQ arguments (keyword only):
        levels: a non-empty list of integers >= 3, the number of values of each FSQ channel (required).

    Every argument is checked here; a ValueError names the argument and its allowed range.

    Shapes: ``forward(z)`` with z (B, e_dim, H, W) returns ``(z_q (B, e_dim, H, W), loss () = 0,
    (perplexity (), None, indices))``; indices are (B*H*W,), (B*H*W, 1) with remap, or (B, H, W)
    with sane_index_shape.
    """

    remap_to_used = VectorQuantizer2.remap_to_used
    unmap_to_all = VectorQuantizer2.unmap_to_all

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        remap: Optional[str] = None,
        unknown_index: Union[str, int] = "random",
        sane_index_shape: bool = False,
        *,
        levels: Optional[Sequence[int]] = None,
    ) -> None:
        n_e, e_dim, _ = self.check_taming_arguments(n_e, e_dim, 0.0, unknown_index, sane_index_shape, False)
        if (levels is None or isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence)
                or len(levels) == 0):
            raise ValueError(f"levels must be a non-empty list of integers >= 3, got {levels!r}")
        levels = [check_int(f"levels[{i}]", level, minimum=3) for i, level in enumerate(levels)]
        if int(np.prod(levels)) != n_e:
            raise ValueError(f"n_e must equal the product of levels {levels} ({int(np.prod(levels))}), got {n_e}")
        super().__init__()
        self.n_e, self.e_dim, self.levels = n_e, e_dim, levels
        self.register_buffer("_levels", torch.tensor(levels), persistent=False)  # lucidrains :89-93
        self.register_buffer("_basis", torch.cumprod(torch.tensor([1] + levels[:-1]), dim=0), persistent=False)
        d = len(levels)
        projected = e_dim != d  # :116-118
        self.project_in = nn.Linear(e_dim, d) if projected else nn.Identity()
        self.project_out = nn.Linear(d, e_dim) if projected else nn.Identity()
        self.remap, self.sane_index_shape = remap, sane_index_shape
        if remap is not None:  # taming's VectorQuantizer2 remap state, for its remap_to_used / unmap_to_all
            self.register_buffer("used", torch.tensor(np.load(remap)))
            self.re_embed = self.used.shape[0]
            self.unknown_index = unknown_index
            if unknown_index == "extra":
                self.unknown_index, self.re_embed = self.re_embed, self.re_embed + 1
        else:
            self.re_embed = n_e

    def bound_and_round(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) codes, each channel on its L values in [-1, 1] (lucidrains :147-157)."""
        levels = self._levels.to(z.dtype)
        half = (levels - 1) * (1 + BOUND_EPS) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half)
        return round_ste(torch.tanh(z + shift) * half - offset) / (self._levels // 2).to(z.dtype)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d) codes -> (...,) int64 indices in [0, n_e) (lucidrains :220-224)."""
        half_width = (self._levels // 2).to(codes.dtype)
        return ((codes * half_width + half_width) * self._basis.to(codes.dtype)).sum(dim=-1).round().long()

    def indices_to_codes(self, indices: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(...,) indices -> (..., d) codes in [-1, 1] (lucidrains :209-218)."""
        level_indices = (indices[..., None] // self._basis) % self._levels
        half_width = (self._levels // 2).to(dtype)
        return (level_indices.to(dtype) - half_width) / half_width

    @property
    def codebook(self) -> torch.Tensor:
        """(K, e_dim): ``project_out`` of every code, row k the vector of index k."""
        codes = self.indices_to_codes(torch.arange(self.n_e, device=self._levels.device))
        return self.project_out(codes.to(self._float_dtype()))

    def _float_dtype(self) -> torch.dtype:
        """The projections' dtype (float32 without projections)."""
        return next((p.dtype for p in self.parameters()), torch.float32)

    def forward(self, z: torch.Tensor, temp=None, rescale_logits=False, return_logits=False):
        self.check_input(z, temp, rescale_logits, return_logits)
        z = rearrange(z, "b c h w -> b h w c")
        z_d = self.project_in(z)
        with torch.autocast(device_type=z.device.type, enabled=False):  # lucidrains force_quantization_f32
            dtype = torch.promote_types(z_d.dtype, torch.float32)
            codes = self.bound_and_round(z_d.to(dtype))
            indices = self.codes_to_indices(codes.detach()).reshape(-1)
        z_q = self.project_out(codes.to(z_d.dtype))
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()
        loss = z.new_zeros(())
        return z_q, loss, (self.selection_perplexity(indices), None, self.output_indices(indices, z_q))

    def get_codebook_entry(self, indices: torch.Tensor, shape: Optional[Sequence[int]]) -> torch.Tensor:
        """``project_out(codes(indices))`` for indices (N,), the training forward's z_q: (N, e_dim) with
        ``shape=None``, else (B, e_dim, H, W) for ``shape = (B, H, W, e_dim)``."""
        if self.remap is not None:
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = self.project_out(self.indices_to_codes(indices.long(), torch.float32).to(self._float_dtype()))
        if shape is not None:
            z_q = rearrange(z_q.view(shape), "b h w c -> b c h w").contiguous()
        return z_q

    def extra_repr(self) -> str:
        return f"n_e={self.n_e}, e_dim={self.e_dim}, levels={self.levels}"
