"""IndexPropagationQuantizer: IBQ's differentiable one-hot selection as a drop-in for ``VectorQuantizer2``.

Shi et al. 2024, "Taming Scalable Visual Tokenizer for Autoregressive Image Generation" (Index
Backpropagation Quantization, arXiv 2412.02692), transcribed from the authors' code,
github.com/TencentARC/SEED-Voken at commit b9a17ea (``src/IBQ/modules/vqvae/quantize.py``, class
``IndexPropagationQuantize`` and ``compute_entropy_loss``; cited as line numbers; the loss weights
from ``src/IBQ/modules/losses/vqperceptual.py`` and ``configs/IBQ/gpu/imagenet_ibqgan_16384.yaml``)::

    quantizer:
      target: arcvq_plugin.baselines.IndexPropagationQuantizer
      params: {beta: 0.25, entropy_weight: 0.05}

The method, line by line (z (B, D, H, W), codebook E (K, D), initialised N(0, 1) as nn.Embedding, :386):

    logits   = z . E                       (B, K, H, W)   inner products, :433
    soft     = softmax(logits over K)                      :439
    index    = argmax soft;  hard = one_hot(index)         :446-447
    one_hot  = hard - sg(soft) + soft      value: hard; gradient: the softmax's, :448
    z_q      = one_hot . E                 returned WITHOUT the usual straight-through, :450
    z_q_2    = hard . E                                    :451
    loss_q   = mean((z_q - z)^2) + mean((sg(z_q_2) - z)^2) + beta * mean((z_q_2 - sg(z))^2)   :453

so the decoder's gradient reaches the encoder and every code through the softmax over all K codes
(the "index backpropagation"), not by copying it onto z. The entropy term (``compute_entropy_loss``,
:343-372, MAGVIT-v2's) with temperature ``entropy_temperature`` (default 0.01, :377)::

    p = softmax(logits / T),  log p = log_softmax(logits / T + 1e-5)      :358-359
    sample_entropy = mean over latents of -sum_k p log p                    :365-366
    avg_entropy    = -sum_k p_bar log(p_bar + 1e-5),  p_bar = mean of p     :361-363
    entropy_loss   = sample_entropy - avg_entropy                            :368-370 (weights 1, 1)

The authors' forward returns the tuple ``(loss_q, sample_entropy, avg_entropy, entropy_loss)`` when the
entropy loss is on (:459), and their perceptual loss sums ``quant_loss_weight * loss_q +
entropy_loss_weight * entropy_loss`` (vqperceptual.py:181-182; weights 1.0 and 0.05 in the ImageNet
16,384 config). taming's and this package's models add the quantiser's loss as one tensor, so here the
loss is that sum, ``loss_q + entropy_weight * entropy_loss``, and the four parts are in
``loss_breakdown`` (``entropy_weight=0`` is the authors' ``use_entropy_loss=False``).

Differences from the authors' code: ``get_codebook_entry`` returns ``E[index]``, the value of the
training z_q (as theirs, :468-483); indices follow taming's ``remap`` / ``sane_index_shape``
conventions (theirs ignores ``sane_index_shape``); the perplexity of the batch's selection is returned
(theirs None); ``remap`` restricts the returned indices only, not the softmax (theirs restricts both);
the entropy term is computed in float32 at least, the logits divided by 0.01 overflow float16.
lucidrains' vector-quantize-pytorch has no IBQ; the authors' code is followed.

Memory: the soft one-hot is dense, B x K x H x W, and the forward with its backward holds about
:data:`DENSE_COPIES` tensors of that size (logits, softmax, hard and straight-through one-hots, the
entropy term's probabilities and log-probabilities, their gradients). A forward whose estimate
``DENSE_COPIES * B * K * H * W * bytes per element`` exceeds the memory z's device can still give
(CUDA: free plus torch's unused cache; CPU: the host's available memory), or ``memory_limit_bytes``
when given, is refused with a ValueError before any work; docs/BENCHMARKS.md has the measured peak.

The entropy term's batch average p_bar is over the latents of this process's batch, as in the
authors' multi-GPU training (no reduction over ranks); the method keeps no statistics, so on several
processes DDP's gradient averaging keeps the codebook identical on every rank. Eval-mode and
``passive()`` forwards change nothing (there is nothing to change except ``loss_breakdown``, which
only training forwards outside ``passive()`` set).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from arcvq_plugin.quantizer_contract import QuantizerContract
from arcvq_plugin.validation import check_optional_int, check_real

__all__ = ["DENSE_COPIES", "ENTROPY_EPS", "IndexPropagationQuantizer", "entropy_terms"]

DENSE_COPIES = 12
"""Tensors of the soft one-hot's size (B x K x H x W) a training forward and backward hold at once
(an upper estimate from the operations of the forward; docs/BENCHMARKS.md has the measured peak)."""
ENTROPY_EPS = 1e-5
"""The eps of ``compute_entropy_loss`` (quantize.py:348)."""


def entropy_terms(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sample_entropy, avg_entropy)`` of (N, K) logits at ``temperature`` (quantize.py:358-366).

    softmax and log_softmax (logsumexp inside) keep the temperature's large logits finite."""
    scaled = logits / temperature
    probs = F.softmax(scaled, dim=-1)
    log_probs = F.log_softmax(scaled + ENTROPY_EPS, dim=-1)
    avg_probs = reduce(probs, "n k -> k", "mean")
    avg_entropy = -torch.sum(avg_probs * torch.log(avg_probs + ENTROPY_EPS))
    sample_entropy = torch.mean(-torch.sum(probs * log_probs, dim=-1))
    return sample_entropy, avg_entropy


def _free_bytes(device: torch.device) -> int:
    """Memory a forward on ``device`` can still take, in bytes. CUDA: the device's free memory plus what
    torch's caching allocator holds unused; otherwise the host's ``MemAvailable`` (/proc/meminfo), or
    its free pages where that file does not exist."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + int(cached)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class IndexPropagationQuantizer(QuantizerContract, VectorQuantizer2):
    """IBQ's quantiser: softmax over z . E, a hard one-hot with the softmax's gradient, the entropy term.

    Args (taming's, same meaning and defaults):
        n_e: codebook size K >= 1.
        e_dim: code dimension D >= 1 (channels of the encoder output).
        beta: weight of the codebook term ``mean((z_q_2 - sg(z))^2)``, finite and >= 0 (default 0.25,
            quantize.py:375). There is no ``legacy``: the loss is the authors' (:453).
        remap, unknown_index, sane_index_shape: as ``VectorQuantizer2``.
    IBQ arguments (keyword only):
        entropy_weight: weight of the entropy loss in the returned loss, finite and >= 0 (default 0.05,
            the ImageNet config's ``entropy_loss_weight``; 0 turns the term off).
        entropy_temperature: the entropy term's softmax temperature, finite and > 0 (default 0.01).
        memory_limit_bytes: None (default: the free memory of z's device, checked every forward) or
            an integer >= 1: a forward whose dense one-hots would need more is refused.

    Every argument is checked here; a ValueError names the argument and its allowed range.

    Shapes: ``forward(z)`` with z (B, e_dim, H, W) returns ``(z_q (B, e_dim, H, W), loss (),
    (perplexity (), None, indices))``; indices are (B*H*W,), (B*H*W, 1) with remap, or (B, H, W)
    with sane_index_shape. ``loss_breakdown`` holds the last training forward's ``quant`` (loss_q),
    ``sample_entropy``, ``avg_entropy``, ``entropy`` (sample - avg) and ``perplexity``.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float = 0.25,
        remap: Optional[str] = None,
        unknown_index: Union[str, int] = "random",
        sane_index_shape: bool = False,
        *,
        entropy_weight: float = 0.05,
        entropy_temperature: float = 0.01,
        memory_limit_bytes: Optional[int] = None,
    ) -> None:
        n_e, e_dim, beta = self.check_taming_arguments(n_e, e_dim, beta, unknown_index, sane_index_shape, False)
        entropy_weight = check_real("entropy_weight", entropy_weight, minimum=0.0)
        entropy_temperature = check_real("entropy_temperature", entropy_temperature, minimum=0.0, exclusive=True)
        memory_limit_bytes = check_optional_int("memory_limit_bytes", memory_limit_bytes, minimum=1)
        super().__init__(n_e, e_dim, beta, remap=remap, unknown_index=unknown_index,
                         sane_index_shape=sane_index_shape, legacy=False)
        nn.init.normal_(self.embedding.weight)  # nn.Embedding's own N(0, 1), as quantize.py:386
        self.entropy_weight = entropy_weight
        self.entropy_temperature = entropy_temperature
        self.memory_limit_bytes = memory_limit_bytes
        self.loss_breakdown: dict[str, torch.Tensor] = {}

    def dense_bytes(self, z: torch.Tensor) -> int:
        """Estimated bytes of the dense one-hots of a forward and backward on z (B, D, H, W)."""
        dtype = torch.promote_types(z.dtype, torch.float32)
        return DENSE_COPIES * z.shape[0] * self.n_e * z.shape[2] * z.shape[3] * dtype.itemsize

    def check_memory(self, z: torch.Tensor) -> None:
        """ValueError when :meth:`dense_bytes` exceeds ``memory_limit_bytes`` or the device's free memory."""
        needed = self.dense_bytes(z)
        limit = self.memory_limit_bytes if self.memory_limit_bytes is not None else _free_bytes(z.device)
        if needed > limit:
            b, _, h, w = z.shape
            source = "memory_limit_bytes" if self.memory_limit_bytes is not None else f"free memory of {z.device}"
            raise ValueError(
                f"IndexPropagationQuantizer: the dense soft one-hot is B x K x H x W = {b} x {self.n_e} x {h} x {w}; "
                f"a forward and backward need about {DENSE_COPIES} such tensors, {needed / 2 ** 30:.2f} GiB, more than "
                f"the {limit / 2 ** 30:.2f} GiB {source}: lower the batch size, the latent resolution or n_e")

    def forward(self, z: torch.Tensor, temp=None, rescale_logits=False, return_logits=False):
        self.check_input(z, temp, rescale_logits, return_logits)
        self.check_memory(z)
        weight = self.embedding.weight.to(z.dtype)
        logits = torch.einsum("bdhw,nd->bnhw", z, weight)  # quantize.py:433
        soft = F.softmax(logits, dim=1)  # :439
        index = soft.argmax(dim=1, keepdim=True)  # :446
        hard = torch.zeros_like(logits).scatter_(1, index, 1.0)  # :447
        one_hot = hard - soft.detach() + soft  # :448
        z_q = torch.einsum("bnhw,nd->bdhw", one_hot, weight)  # :450
        z_q_2 = torch.einsum("bnhw,nd->bdhw", hard, weight)  # :451
        quant = (torch.mean((z_q - z) ** 2) + torch.mean((z_q_2.detach() - z) ** 2)
                 + self.beta * torch.mean((z_q_2 - z.detach()) ** 2))  # :453
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = rearrange(logits, "b n h w -> (b h w) n").to(torch.promote_types(logits.dtype, torch.float32))
            sample_entropy, avg_entropy = entropy_terms(flat, self.entropy_temperature)  # :458
        entropy = sample_entropy - avg_entropy  # :368-370
        loss = quant + self.entropy_weight * entropy  # vqperceptual.py:181-182
        indices = index.flatten()
        perplexity = self.selection_perplexity(indices)
        if self.training and not self._passive:
            self.loss_breakdown = {"quant": quant.detach(), "sample_entropy": sample_entropy.detach(),
                                   "avg_entropy": avg_entropy.detach(), "entropy": entropy.detach(),
                                   "perplexity": perplexity}
        return z_q, loss, (perplexity, None, self.output_indices(indices, z_q))

    def extra_repr(self) -> str:
        return (f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, entropy_weight={self.entropy_weight}, "
                f"entropy_temperature={self.entropy_temperature}")
