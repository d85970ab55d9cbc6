"""SimVQ: a frozen random codebook seen through a learned linear map, as a drop-in for ``VectorQuantizer2``.

Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with One Linear
Layer" (arXiv 2411.02038), transcribed from the authors' code, github.com/youngsheen/SimVQ at commit
d8bd94d (``taming/modules/vqvae/quantize.py``, class ``SimVQ``; cited as line numbers; their config
``configs/imagenet_simvq_128_B.yaml:40-46`` uses ``beta: 0.25, legacy: false``)::

    quantizer:
      target: arcvq_plugin.baselines.SimVQ
      params: {beta: 0.25, legacy: false}

The method, line by line:

- ``embedding`` (K, D): drawn once from N(0, 1 / D) and frozen (``requires_grad=False``), :28-31;
- ``embedding_proj``: ``nn.Linear(D, D)`` with bias, the only trained part, :33;
- codebook ``C = embedding_proj(embedding.weight)`` (K, D), recomputed every forward, :84;
- the nearest code by squared Euclidean distance to the rows of C, :86-90; ``z_q = C[index]``, :91;
- taming's ``VectorQuantizer2`` loss with ``beta`` and ``legacy`` on C's rows, :96-101, so the codebook
  term trains the projection (its weight and bias) and the frozen codebook gets no gradient;
- straight-through ``z_q = z + (z_q - z).detach()``, :104.

Differences from the authors' code: the forward returns taming's ``(z_q, loss, (perplexity, None,
indices))`` where theirs returns ``((z_q, 0, indices), LossBreakdown(...))`` (:118); the perplexity
of the batch's selection is computed (theirs is None); and ``get_codebook_entry`` applies the projection:
theirs (:120-135) returns the frozen ``embedding(indices)``, which is not what the decoder saw in
training. lucidrains' vector-quantize-pytorch (``sim_vq.py`` at commit 0d7d1aa) was compared and not
used: its projection has no bias, it turns the rotation trick on by default and it weighs the two loss
terms 1 and 0.25 without taming's ``legacy`` switch; the authors' code is followed here.

The method keeps no statistics: on several processes DDP's gradient averaging keeps the projection
identical on every rank, and the frozen codebook, drawn from the seeded generator, is broadcast by DDP
at wrapping. Eval-mode and ``passive()`` forwards change nothing (there is nothing to change).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from arcvq_plugin.quantizer_contract import QuantizerContract

__all__ = ["SimVQ"]


class SimVQ(QuantizerContract, VectorQuantizer2):
    """SimVQ's quantiser: nearest row of ``embedding_proj(frozen codebook)``, taming's loss, straight-through.

    Args (taming's, same meaning and defaults):
        n_e: codebook size K >= 1.
        e_dim: code dimension D >= 1 (channels of the encoder output).
        beta: commitment weight, finite and >= 0 (default 0.25); ``legacy`` as ``VectorQuantizer2``
            (the authors' configs use ``legacy=False``).
        remap, unknown_index, sane_index_shape, legacy: as ``VectorQuantizer2``.

    Every argument is checked here; a ValueError names the argument and its allowed range.

    Shapes: ``forward(z)`` with z (B, e_dim, H, W) returns ``(z_q (B, e_dim, H, W), loss (),
    (perplexity (), None, indices))``; indices are (B*H*W,), (B*H*W, 1) with remap, or (B, H, W)
    with sane_index_shape. :attr:`codebook` is the projected codebook (K, D) the decoder sees.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        remap: Optional[str] = None,
        unknown_index: Union[str, int] = "random",
        sane_index_shape: bool = False,
        legacy: bool = True,
    ) -> None:
        n_e, e_dim, beta = self.check_taming_arguments(n_e, e_dim, beta, unknown_index, sane_index_shape, legacy)
        super().__init__(n_e, e_dim, beta, remap=remap, unknown_index=unknown_index,
                         sane_index_shape=sane_index_shape, legacy=legacy)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=e_dim ** -0.5)  # SimVQ quantize.py:29
        self.embedding.weight.requires_grad_(False)  # :30-31
        self.embedding_proj = nn.Linear(e_dim, e_dim)  # :33

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D): the projected codebook ``embedding_proj(embedding.weight)`` (SimVQ quantize.py:84)."""
        return self.embedding_proj(self.embedding.weight)

    def forward(self, z: torch.Tensor, temp=None, rescale_logits=False, return_logits=False):
        self.check_input(z, temp, rescale_logits, return_logits)
        z = rearrange(z, "b c h w -> b h w c").contiguous()
        z_flat = z.view(-1, self.e_dim)
        codebook = self.codebook.to(z.dtype)
        with torch.no_grad():  # quantize.py:86-90: squared distances, nearest code (lowest index on ties)
            distances = (torch.sum(z_flat ** 2, dim=1, keepdim=True) + torch.sum(codebook ** 2, dim=1)
                         - 2 * torch.einsum("bd,dn->bn", z_flat, rearrange(codebook, "n d -> d n")))
            indices = torch.argmin(distances, dim=1)
        z_q = F.embedding(indices, codebook).view(z.shape)  # :91
        loss = self.vq_loss(z_q, z)  # :96-101
        perplexity = self.selection_perplexity(indices)
        z_q = z + (z_q - z).detach()  # :104, straight-through
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()
        return z_q, loss, (perplexity, None, self.output_indices(indices, z_q))

    def get_codebook_entry(self, indices: torch.Tensor, shape: Optional[Sequence[int]]) -> torch.Tensor:
        """Codes of ``indices`` (N,) through the projection, as the training forward's z_q: (N, D) with
        ``shape=None``, else (B, D, H, W) for ``shape = (B, H, W, D)``."""
        if self.remap is not None:
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = F.embedding(indices, self.codebook)
        if shape is not None:
            z_q = rearrange(z_q.view(shape), "b h w c -> b c h w").contiguous()
        return z_q

    def extra_repr(self) -> str:
        return f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, legacy={self.legacy}"
