"""ClusteredQuantizer: CVQ-VAE's online clustered codebook as a drop-in for taming's ``VectorQuantizer2``.

Zheng and Vedaldi 2023, "Online Clustered Codebook" (ICCV 2023, arXiv 2307.15139), transcribed from
the authors' code, github.com/lyndonzheng/CVQ-VAE at commit 04864b7 (``quantise.py``, class
``VectorQuantiser``, and the defaults of its training script ``main.py``; cited as file:line)::

    quantizer:
      target: arcvq_plugin.baselines.ClusteredQuantizer
      params: {beta: 0.25, legacy: false}

Every training forward (``self.training`` and not inside ``passive()``; quantise.py:82) updates the
running usage and moves rarely used codes, after the codes are selected and the loss is computed with
the codebook as it was (quantise.py:82-101)::

    p_k       = (latents of the batch that selected code k) / N
    usage_k  <- usage_decay * usage_k + (1 - usage_decay) * p_k         quantise.py:84, decay 0.99 (:32)
    a_k       = the latent of the batch most similar to code k            anchor "closest" (:88-90, main.py:194)
    w_k       = exp(-usage_k * K * 10 / (1 - usage_decay) - 1e-3)        quantise.py:100
    e_k      <- e_k * (1 - w_k) + a_k * w_k                               quantise.py:101

A code used at the uniform rate 1/K has w ~ exp(-10) and stays; a code no latent selects has w ~ 1
and jumps onto the encoder feature nearest to it. The move is not a gradient step: this forward's
gradients (the VQ loss w.r.t. the codebook as it was) are applied by the optimizer to the moved
codebook afterwards, as in the reference, where the update also sits inside ``forward``. It runs once
per training forward, so with gradient accumulation once per batch, not per optimizer step.

Choices and their sources:

- similarity (``distance``): ``"cos"``, the published default (main.py:193, and the README's training
  command ``--distance cos``; quantise.py:55-59), or ``"l2"``: minus the squared Euclidean distance
  (quantise.py:50-54), which selects what ``VectorQuantizer2`` selects. The output is the RAW code
  either way (quantise.py:69).
- loss and gradient: taming's ``VectorQuantizer2`` loss with its ``beta`` and ``legacy`` (quantise.py:71
  is ``legacy=False``); straight-through (quantise.py:73); codebook initialised uniform(-1/K, 1/K), as
  taming and quantise.py:37.
- anchors: ``closest`` only, the published default (main.py:194 and the README). Not included:
  ``random`` (quantise.py:92-93: a FeaturePool that is not module state, so a resumed run would
  differ) and ``probrandom`` (quantise.py:95-98, the class default that main.py overrides);
  ``first_batch`` (quantise.py:102-103, the paper's one-shot "offline" ablation, off: main.py:195);
  the contrastive loss (quantise.py:105-111, off: main.py:196 is a ``store_true`` flag the README's
  command does not pass). ArcVQ-VAE's Table 1 compares against the published default.
- ties: the lowest index wins (``argmax``), where the reference takes the last of an unstable sort.

Distributed (torch.distributed initialised): the batch's code counts and its number of latents are
summed over ranks (``all_reduce``) before the running usage is updated, and each code's anchor is the
most similar latent over all ranks: every rank sends its best (similarity, latent) per code (K x (D + 1)
numbers, whatever the batch size) and keeps the best over ranks (the lowest rank on ties). No random
draw is involved, so running usage, anchors and codebook stay identical on every rank.

``running_usage`` (the reference's ``embed_prob``) is a persistent buffer: it is in the state_dict,
so a resumed run continues exactly.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.distributed as dist
from einops import rearrange
from taming.modules.vqvae.quantize import VectorQuantizer2

from arcvq_plugin.all_gather import distributed_world_size
from arcvq_plugin.losses import normalize_rows
from arcvq_plugin.quantizer_contract import QuantizerContract, code_perplexity
from arcvq_plugin.validation import check_choice, check_real

__all__ = ["ClusteredQuantizer", "DISTANCES", "REINIT_OFFSET", "USAGE_SCALE"]

DISTANCES = ("cos", "l2")
USAGE_SCALE = 10.0
"""The 10 of quantise.py:100: w = exp(-usage * K * USAGE_SCALE / (1 - decay) - REINIT_OFFSET)."""
REINIT_OFFSET = 1e-3
"""The 1e-3 of quantise.py:100."""


class ClusteredQuantizer(QuantizerContract, VectorQuantizer2):
    """CVQ-VAE's quantiser: nearest code, running usage, rarely used codes re-initialised toward anchors.

    Args (taming's first, same meaning and defaults):
        n_e: codebook size K >= 1.
        e_dim: code dimension D >= 1 (channels of the encoder output).
        beta: commitment weight, finite and >= 0 (default 0.25). ``legacy=True`` (taming's default)
            puts beta on the codebook term; the reference's loss is ``legacy=False``.
        remap, unknown_index, sane_index_shape, legacy: as ``VectorQuantizer2``.
    CVQ-VAE arguments (keyword only):
        distance: ``"cos"`` (default, the published one) or ``"l2"``: how codes are selected and
            anchors chosen.
        usage_decay: decay of the running usage, a number in (0, 1) (default 0.99, quantise.py:32).

    Every argument is checked here; a ValueError names the argument and its allowed range.

    Shapes: ``forward(z)`` with z (B, e_dim, H, W) returns ``(z_q (B, e_dim, H, W), loss (),
    (perplexity (), None, indices))``; indices are (B*H*W,), (B*H*W, 1) with remap, or (B, H, W)
    with sane_index_shape. ``running_usage`` (K,) is the running usage; ``loss_breakdown`` holds the
    last training forward's ``vq`` loss, ``perplexity``, ``usage`` (fraction of codes this batch
    selected) and ``reinit`` (mean re-initialisation weight w over the codes).
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
        *,
        distance: str = "cos",
        usage_decay: float = 0.99,
    ) -> None:
        n_e, e_dim, beta = self.check_taming_arguments(n_e, e_dim, beta, unknown_index, sane_index_shape, legacy)
        check_choice("distance", distance, DISTANCES)
        usage_decay = check_real("usage_decay", usage_decay, minimum=0.0, exclusive=True, below=1.0)
        super().__init__(n_e, e_dim, beta, remap=remap, unknown_index=unknown_index,
                         sane_index_shape=sane_index_shape, legacy=legacy)
        self.distance = distance
        self.usage_decay = usage_decay
        self.register_buffer("running_usage", torch.zeros(n_e))
        self.loss_breakdown: dict[str, torch.Tensor] = {}

    def similarity(self, z_flat: torch.Tensor) -> torch.Tensor:
        """(N, D) latents -> (N, K) similarity to each code, larger is closer, no gradient:
        cosine (``distance="cos"``) or minus the squared distance (``"l2"``), in z's dtype."""
        z_flat = z_flat.detach()
        e = self.embedding.weight.detach().to(z_flat.dtype)
        if self.distance == "cos":
            return normalize_rows(z_flat) @ normalize_rows(e).T
        squared = (torch.sum(z_flat ** 2, dim=1, keepdim=True) + torch.sum(e ** 2, dim=1)
                   - 2 * torch.einsum("bd,dn->bn", z_flat, rearrange(e, "n d -> d n")))
        return -squared

    def forward(self, z: torch.Tensor, temp=None, rescale_logits=False, return_logits=False):
        self.check_input(z, temp, rescale_logits, return_logits)
        z = rearrange(z, "b c h w -> b h w c").contiguous()
        z_flat = z.view(-1, self.e_dim)
        with torch.autocast(device_type=z.device.type, enabled=False):
            dtype = torch.promote_types(z.dtype, torch.float32)
            latents = z_flat.detach().to(dtype)
            scores = self.similarity(latents)
            indices = scores.argmax(dim=1)
            z_q = self.embedding(indices).view(z.shape)
            loss = self.vq_loss(z_q.to(dtype), z.to(dtype))
            counts = torch.zeros(self.n_e, dtype=dtype, device=z.device).index_add_(
                0, indices, torch.ones(indices.shape[0], dtype=dtype, device=z.device))
            perplexity = code_perplexity(counts, indices.shape[0])
            if self.training and not self._passive:
                reinit = self._reinitialise(latents, scores, counts)
                self.loss_breakdown = {"vq": loss.detach(), "perplexity": perplexity,
                                       "usage": (counts > 0).to(dtype).mean(), "reinit": reinit}
        z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()
        return z_q, loss, (perplexity, None, self.output_indices(indices, z_q))

    @torch.no_grad()
    def _reinitialise(self, latents: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Update ``running_usage`` with this batch's ``counts`` (K,) of its ``latents`` (N, D), move
        each code toward its anchor (module docstring); returns the mean re-initialisation weight."""
        total = counts.new_full((1,), float(latents.shape[0]))
        if distributed_world_size() > 1:
            summed = torch.cat([counts, total])
            dist.all_reduce(summed)
            counts, total = summed[:-1], summed[-1:]
        decay = self.usage_decay
        self.running_usage.mul_(decay).add_(counts / total, alpha=1.0 - decay)
        anchors = self._closest_latents(latents, scores)
        weight = torch.exp(-(self.running_usage * self.n_e * USAGE_SCALE) / (1.0 - decay) - REINIT_OFFSET)[:, None]
        codebook = self.embedding.weight
        codebook.copy_(codebook * (1 - weight) + anchors * weight)
        return weight.mean()

    def _closest_latents(self, latents: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(K, D): for each code, the latent of the batch (of all ranks' batches) most similar to it."""
        codes = torch.arange(self.n_e, device=latents.device)
        nearest = scores.argmax(dim=0)
        best, anchors = scores[nearest, codes], latents[nearest]
        world = distributed_world_size()
        if world == 1:
            return anchors
        all_best = [torch.empty_like(best) for _ in range(world)]
        all_anchors = [torch.empty_like(anchors) for _ in range(world)]
        dist.all_gather(all_best, best.contiguous())
        dist.all_gather(all_anchors, anchors.contiguous())
        rank = torch.stack(all_best).argmax(dim=0)  # the first maximum: the lowest rank on ties
        return torch.stack(all_anchors)[rank, codes]

    def extra_repr(self) -> str:
        return (f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, legacy={self.legacy}, "
                f"distance={self.distance!r}, usage_decay={self.usage_decay}")
