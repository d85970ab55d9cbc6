"""ArcQuantizer: ArcVQ's codebook as a drop-in for taming's ``VectorQuantizer2``.

Selection by cosine (geodesic nearest neighbour), the RAW code as output, the host quantiser's
VQ loss on raw vectors, BBNR applied after every optimizer step, ArcLoss folded into the returned
loss in training mode (METHOD.md sections 1-5); the gradient reaches the encoder straight-through
(the paper) or, with ``gradient_estimator="rotation"``, through the rotation trick
(:mod:`arcvq_plugin.rotation_trick`)::

    quantizer:
      target: arcvq_plugin.ArcQuantizer
      params: {n_e: 1024, e_dim: 16, beta: 0.25, bbnr_alpha: 1.0e-5, arc_gamma_decay: 1.0e-4}

The schedules run on ``clock``, an int64 buffer saved in the state_dict and advanced by
``after_optimizer_step()`` (registered on the optimizer by ``NormBoundCallback`` or
``register_norm_bound_hook``): during training batch t the forward sees lambda(t) and every code
norm <= R(t).
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from einops import rearrange
from taming.modules.vqvae.quantize import VectorQuantizer2

from .all_gather import all_gather_rows
from .losses import arc_margin_loss_normalized, normalize_rows, scan_cosines, validate_arc_options
from .norm_bound import clip_rows_to_radius_, log_row_norms
from .quantizer_contract import QuantizerContract
from .rotation_trick import rotate_onto
from .schedules import arc_weight, log_radius, radius
from .validation import check_bool, check_real

__all__ = ["ArcQuantizer"]

UNBOUNDED_FORWARDS_WARNING = 100
"""Training forwards without ``after_optimizer_step()`` after which a (single) warning is issued."""
GRADIENT_ESTIMATORS = ("ste", "rotation")


class ArcQuantizer(QuantizerContract, VectorQuantizer2):
    """Cosine-selection vector quantiser with BBNR and ArcLoss (ArcVQ-VAE).

    Args (taming's first, same meaning and defaults):
        n_e: codebook size K >= 1.
        e_dim: code dimension D >= 1 (channels of the encoder output).
        beta: commitment weight, finite and >= 0 (default 0.25, taming VQModel's value). With
            ``legacy=True`` (taming's default) beta multiplies the codebook term, as upstream.
        remap, unknown_index, sane_index_shape, legacy: as ``VectorQuantizer2``.
    ArcVQ arguments (keyword only):
        use_bbnr: apply the norm bound after each optimizer step (default True).
        use_arc_loss: add lambda(t) * L_arc to the training loss (default True).
            ``use_bbnr=False, use_arc_loss=False`` is the paper's "cosine matching only" row.
        bbnr_alpha: growth rate alpha (finite, >= 0) of R(t) = exp(alpha t) (default 3e-4; 0: fixed R = 1).
        arc_s: logit scale, finite and > 0 (default 10). arc_m: margin in [0, pi) (default 0.1).
        arc_top_k: positives per code, an integer >= 1 (default 3).
        arc_gamma: gamma0, finite and >= 0 (default 1). arc_gamma_decay: delta, finite and >= 0
            (default 5e-4).
        arc_chunk_size: None or an integer >= 1, latents per chunk of the K x N cosine matrix (None: dense,
            holds one K x N float matrix from forward to backward; an integer bounds that to
            K x arc_chunk_size at the cost of one more K x N x D matrix product in backward;
            docs/BENCHMARKS.md times both).
        arc_gather_negatives: under torch.distributed, ArcLoss uses all ranks' latents (default False).
        check_finite: raise on non-finite input instead of poisoning the codebook (default True;
            costs one device-to-host sync per forward).
        gradient_estimator: how z_q's gradient reaches z: ``"ste"`` (default, the paper and taming:
            straight-through, copied unchanged) or ``"rotation"`` (the rotation trick of Fifty et al.
            2024, :func:`arcvq_plugin.rotation_trick.rotate_onto`: through the rotation and rescaling
            that takes z onto its raw code). Selection, losses and the codebook's gradient are the same.

    Every argument is checked here: integers must be ints (a bool is refused), numbers finite, and a
    ValueError names the argument and its allowed range.

    Shapes: ``forward(z)`` with z (B, e_dim, H, W) returns ``(z_q (B, e_dim, H, W), loss (),
    (perplexity (), None, indices))``; indices are (B*H*W,) or (B, H, W) with sane_index_shape.
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
        use_bbnr: bool = True,
        use_arc_loss: bool = True,
        bbnr_alpha: float = 3e-4,
        arc_s: float = 10.0,
        arc_m: float = 0.1,
        arc_top_k: int = 3,
        arc_gamma: float = 1.0,
        arc_gamma_decay: float = 5e-4,
        arc_chunk_size: Optional[int] = None,
        arc_gather_negatives: bool = False,
        check_finite: bool = True,
        gradient_estimator: str = "ste",
    ) -> None:
        n_e, e_dim, beta = self.check_taming_arguments(n_e, e_dim, beta, unknown_index, sane_index_shape, legacy)
        for name, flag in [("use_bbnr", use_bbnr), ("use_arc_loss", use_arc_loss),
                           ("arc_gather_negatives", arc_gather_negatives),
                           ("check_finite", check_finite)]:
            check_bool(name, flag)
        check_real("bbnr_alpha", bbnr_alpha, minimum=0.0)
        check_real("arc_gamma", arc_gamma, minimum=0.0)
        check_real("arc_gamma_decay", arc_gamma_decay, minimum=0.0)
        validate_arc_options(arc_s, arc_m, arc_top_k, arc_chunk_size, prefix="arc_")
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(f"gradient_estimator must be one of {GRADIENT_ESTIMATORS}, got {gradient_estimator!r}")
        super().__init__(n_e, e_dim, beta, remap=remap, unknown_index=unknown_index,
                         sane_index_shape=sane_index_shape, legacy=legacy)
        with torch.no_grad():  # eq. 4: random draw (upstream's uniform), then onto the unit sphere
            self.embedding.weight.copy_(normalize_rows(self.embedding.weight))
        self.use_bbnr, self.use_arc_loss = use_bbnr, use_arc_loss
        self.bbnr_alpha = float(bbnr_alpha)
        self.arc_s, self.arc_m, self.arc_top_k = float(arc_s), float(arc_m), int(arc_top_k)
        self.arc_gamma, self.arc_gamma_decay = float(arc_gamma), float(arc_gamma_decay)
        self.arc_chunk_size = arc_chunk_size
        self.arc_gather_negatives = arc_gather_negatives
        self.check_finite = check_finite
        self.gradient_estimator = gradient_estimator
        self.register_buffer("clock", torch.zeros((), dtype=torch.long))
        self.register_buffer("code_counts", torch.zeros(n_e), persistent=False)
        # fraction of codes the last norm-bound step actually moved (0-dim, on the device: no host sync)
        self.register_buffer("clipped_fraction", torch.zeros(()), persistent=False)
        self.loss_breakdown: dict[str, torch.Tensor] = {}
        self._forwards_since_step = 0
        self._warned_unbounded = False

    # ---- schedules -------------------------------------------------------------------------
    @property
    def radius(self) -> torch.Tensor:
        """R(clock) = exp(bbnr_alpha * clock), float32 scalar (saturates at float32 max)."""
        return radius(self.bbnr_alpha, self.clock)

    @property
    def arc_weight(self) -> torch.Tensor:
        """lambda(clock) = arc_gamma * exp(-arc_gamma_decay * clock), float32 scalar."""
        return arc_weight(self.arc_gamma, self.arc_gamma_decay, self.clock)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Advance the clock by one step, then clip every code to the ball of radius R(clock).

        ``clipped_fraction`` records the fraction of codes this step moved onto the sphere (the rows
        whose norm exceeds R(clock)), as a device tensor.
        """
        self.clock += 1
        self._forwards_since_step = 0
        if self.use_bbnr:
            log_bound = log_radius(self.bbnr_alpha, self.clock)
            log_norms = log_row_norms(self.embedding.weight)
            self.clipped_fraction.copy_((log_norms > log_bound.to(log_norms)).float().mean())
            clip_rows_to_radius_(self.embedding.weight, log_bound)

    def reset_code_counts(self) -> None:
        """Zero ``code_counts`` (per-code selection counts accumulated over forwards)."""
        self.code_counts.zero_()

    # ---- forward ---------------------------------------------------------------------------
    def _check_input(self, z: torch.Tensor, temp, rescale_logits, return_logits) -> None:
        self.check_input(z, temp, rescale_logits, return_logits)
        if self.check_finite and not bool(torch.isfinite(z).all()):
            raise ValueError("ArcQuantizer received non-finite latents (NaN or inf); refusing to "
                             "update the codebook with them")

    def _note_training_forward(self) -> None:
        if not (self.use_bbnr or self.use_arc_loss):
            return
        self._forwards_since_step += 1
        if self._forwards_since_step > UNBOUNDED_FORWARDS_WARNING and not self._warned_unbounded:
            self._warned_unbounded = True
            warnings.warn(
                f"ArcQuantizer ran {self._forwards_since_step} training forwards without "
                "after_optimizer_step(): its clock is stuck, so the norm bound and the ArcLoss "
                "schedule are not applied. Add arcvq_plugin.NormBoundCallback() to the Trainer's "
                "callbacks, or call arcvq_plugin.register_norm_bound_hook(optimizer, model) once "
                "in a plain PyTorch loop.", RuntimeWarning, stacklevel=3)

    def forward(self, z: torch.Tensor, temp=None, rescale_logits=False, return_logits=False):
        self._check_input(z, temp, rescale_logits, return_logits)
        active = not self._passive
        use_arc = self.training and self.use_arc_loss and active
        if self.training and active:
            self._note_training_forward()
        z = rearrange(z, "b c h w -> b h w c").contiguous()
        z_flat = z.view(-1, self.e_dim)
        with torch.autocast(device_type=z.device.type, enabled=False):
            dtype = torch.promote_types(z.dtype, torch.float32)
            z_hat = normalize_rows(z_flat.to(dtype))
            e_hat = normalize_rows(self.embedding.weight.detach().to(dtype))
            z_all, offset = all_gather_rows(z_hat) if use_arc and self.arc_gather_negatives else (z_hat, 0)
            if use_arc and z_all.shape[0] < self.arc_top_k:
                raise ValueError(f"arc_top_k={self.arc_top_k} exceeds the {z_all.shape[0]} latents "
                                 "in this batch; lower arc_top_k or use larger batches")
            scan = scan_cosines(z_all, e_hat, self.arc_top_k if use_arc else 0,
                                self.arc_chunk_size, s=self.arc_s)
            indices = scan.nearest[offset:offset + z_flat.shape[0]]
            z_q = self.embedding(indices).view(z.shape)
            commit = torch.mean((z_q.detach().to(dtype) - z.to(dtype)) ** 2)
            codebook = torch.mean((z_q.to(dtype) - z.detach().to(dtype)) ** 2)
            vq = commit + self.beta * codebook if self.legacy else self.beta * commit + codebook
            weight = self.arc_weight
            if use_arc:
                arc = arc_margin_loss_normalized(z_all, e_hat, scan, s=self.arc_s,
                                                 m=self.arc_m, chunk_size=self.arc_chunk_size)
                loss = vq + weight * arc
            else:
                arc = vq.new_zeros(())
                loss = vq
            perplexity, usage = self._count_codes(indices, record=active)
        if active:
            self.loss_breakdown = {
                "vq": vq.detach(), "arc": arc.detach(), "arc_weight": weight,
                "radius": self.radius, "perplexity": perplexity, "usage": usage,
            }
        if self.gradient_estimator == "rotation":
            z_q = rotate_onto(z, z_q)
        else:
            z_q = z + (z_q - z).detach()  # straight-through estimator
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()
        return z_q, loss, (perplexity, None, self.output_indices(indices, z_q))

    @torch.no_grad()
    def _count_codes(self, indices: torch.Tensor, record: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Perplexity and used fraction of this batch's codes (no host sync); with ``record``,
        adds them to ``code_counts``."""
        counts = torch.zeros(self.n_e, device=indices.device).index_add_(
            0, indices, torch.ones(indices.shape[0], device=indices.device))
        if record:
            self.code_counts += counts
        p = counts / indices.shape[0]
        perplexity = torch.exp(-torch.special.xlogy(p, p).sum())
        return perplexity, (counts > 0).float().mean()

    def extra_repr(self) -> str:
        return (f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, legacy={self.legacy}, "
                f"use_bbnr={self.use_bbnr}, bbnr_alpha={self.bbnr_alpha}, "
                f"use_arc_loss={self.use_arc_loss}, arc_s={self.arc_s}, arc_m={self.arc_m}, "
                f"arc_top_k={self.arc_top_k}, arc_gamma={self.arc_gamma}, "
                f"arc_gamma_decay={self.arc_gamma_decay}, arc_chunk_size={self.arc_chunk_size}, "
                f"gradient_estimator={self.gradient_estimator!r}")
