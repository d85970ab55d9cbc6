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

The schedule horizon (``schedule_horizon``, ``schedule_reference_horizon``, ``schedule_rescale``)
fits the schedules to the run's length: ``bbnr_alpha`` and ``arc_gamma_decay`` are the rates set for
a run of ``T_ref`` codebook steps, and a run of ``T`` steps uses ``delta * T_ref / T`` (and
``alpha * T_ref / T`` with ``schedule_rescale="both"``), so that lambda(T) and R(T) are what the
configured schedule reached at ``T_ref`` (:func:`arcvq_plugin.schedules.effective_rates`)::

    params: {bbnr_alpha: 3.0e-4, arc_gamma_decay: 5.0e-4, schedule_reference_horizon: 29500,
             schedule_horizon: auto}   # auto: the Trainer's run length, set by NormBoundCallback

The horizon counts the codebook steps of the run that uses it, from the clock value at which that
run's first optimizer step starts (the *origin*: 0 for a new codebook). A codebook converted by
``arcvq-convert`` starts with its clock at ``t0``, where ``R(t0)`` covers its largest code norm;
that offset does not count inside the horizon: up to ``t0`` the configured rates apply, from it the
rescaled ones, so R(t0) and lambda(t0) are what the converter wrote and the run's ``T`` steps end
at ``R = R(t0) * exp(alpha' T)``, ``lambda = lambda(t0) * exp(-delta' T)``
(:func:`arcvq_plugin.schedules.rescaled_exponent`). The same holds for fine-tuning any trained
ArcVQ checkpoint with a horizon. The resolved horizon, the origin and the effective rates are
saved in the state_dict (buffers ``schedule_horizon_steps``, ``schedule_origin``,
``effective_rates``), so a resumed run keeps them, ``auto`` included.
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
from .quantizer_contract import QuantizerContract, code_perplexity
from .rotation_trick import rotate_onto
from .schedules import (arc_weight, arc_weight_from_exponent, check_schedule_options, effective_rates,
                        log_radius, radius, radius_from_log, rescaled_exponent)
from .validation import check_bool, check_choice, check_int, check_real

__all__ = ["ArcQuantizer", "is_schedule_state_key"]

UNBOUNDED_FORWARDS_WARNING = 100
"""Training forwards without ``after_optimizer_step()`` after which a (single) warning is issued."""
GRADIENT_ESTIMATORS = ("ste", "rotation")
HORIZON_BUFFERS = ("schedule_horizon_steps", "schedule_origin", "effective_rates")
def is_schedule_state_key(key: str) -> bool:
    """Whether a state_dict key is one of an ArcQuantizer's horizon buffers: schedule state, which
    a model for inference may have or lack whatever its checkpoint holds."""
    return key.rsplit(".", 1)[-1] in HORIZON_BUFFERS


UNSET = -1
"""``schedule_horizon_steps`` of an unresolved ``auto`` horizon and ``schedule_origin`` before the
first optimizer step."""


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
        schedule_horizon: None (default: the paper's absolute schedules, exactly), an integer T >= 1
            (the run's codebook optimizer steps) or ``"auto"`` (T from the Trainer's ``max_steps`` /
            ``max_epochs``, resolved by ``NormBoundCallback`` at fit start; a plain PyTorch loop calls
            :meth:`resolve_schedule_horizon`). See the module docstring.
        schedule_reference_horizon: None (default) or an integer T_ref >= 1: the run length, in
            codebook steps, for which ``bbnr_alpha`` and ``arc_gamma_decay`` were set; required
            with ``schedule_horizon``.
        schedule_rescale: ``"arc_weight"`` (default: only delta follows the horizon, the norm
            bound keeps its configured alpha) or ``"both"`` (delta and alpha).

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
        schedule_horizon: Optional[Union[int, str]] = None,
        schedule_reference_horizon: Optional[int] = None,
        schedule_rescale: str = "arc_weight",
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
        check_choice("gradient_estimator", gradient_estimator, GRADIENT_ESTIMATORS)
        schedule_horizon, schedule_reference_horizon, schedule_rescale = check_schedule_options(
            schedule_horizon, schedule_reference_horizon, schedule_rescale)
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
        self.schedule_horizon = schedule_horizon
        self.schedule_reference_horizon = schedule_reference_horizon
        self.schedule_rescale = schedule_rescale
        self._horizon_steps: Optional[int] = None  # the resolved T (host copies of the buffers)
        self._origin: Optional[int] = None
        if schedule_horizon is not None:  # with None, the state_dict is the paper schedule's, unchanged
            self.register_buffer("schedule_horizon_steps", torch.tensor(UNSET, dtype=torch.long))
            self.register_buffer("schedule_origin", torch.tensor(UNSET, dtype=torch.long))
            # (effective alpha, effective delta), float32 for display; the exact rates follow from T.
            # Zeros until T is resolved (schedule_horizon_steps == UNSET says so): state stays finite.
            self.register_buffer("effective_rates", torch.zeros(2))
            if schedule_horizon != "auto":
                self.resolve_schedule_horizon(schedule_horizon)

    # ---- schedules -------------------------------------------------------------------------
    def resolve_schedule_horizon(self, steps: int) -> None:
        """Set the horizon T = ``steps`` (codebook optimizer steps, an integer >= 1) and the
        effective rates. ``NormBoundCallback`` calls it for ``schedule_horizon="auto"``."""
        if self.schedule_horizon is None:
            raise ValueError("schedule_horizon is None (the paper's absolute schedules): there is no "
                             "horizon to resolve")
        steps = check_int("schedule_horizon", steps, minimum=1)
        alpha, delta = effective_rates(self.bbnr_alpha, self.arc_gamma_decay, steps,
                                       self.schedule_reference_horizon, self.schedule_rescale)
        self._horizon_steps = steps
        self.schedule_horizon_steps.fill_(steps)
        self.effective_rates.copy_(torch.tensor([alpha, delta]))

    @property
    def resolved_schedule_horizon(self) -> Optional[int]:
        """T in codebook steps; None for the paper's schedules and for an unresolved ``auto``."""
        return self._horizon_steps

    def _require_resolved(self) -> None:
        if self.schedule_horizon is not None and self._horizon_steps is None:
            raise RuntimeError(
                "ArcQuantizer: schedule_horizon='auto' is not resolved yet. A Lightning Trainer with "
                "arcvq_plugin.NormBoundCallback resolves it from max_steps / max_epochs at fit start; "
                "a plain PyTorch loop calls quantizer.resolve_schedule_horizon(total_codebook_steps) "
                "or sets schedule_horizon to that integer.")

    @property
    def effective_bbnr_alpha(self) -> float:
        """alpha of R(t) from the origin on: ``bbnr_alpha``, times T_ref / T with rescale ``"both"``."""
        self._require_resolved()
        if self.schedule_horizon is None:
            return self.bbnr_alpha
        return effective_rates(self.bbnr_alpha, self.arc_gamma_decay, self._horizon_steps,
                               self.schedule_reference_horizon, self.schedule_rescale)[0]

    @property
    def effective_arc_gamma_decay(self) -> float:
        """delta of lambda(t) from the origin on: ``arc_gamma_decay`` times T_ref / T with a horizon."""
        self._require_resolved()
        if self.schedule_horizon is None:
            return self.arc_gamma_decay
        return effective_rates(self.bbnr_alpha, self.arc_gamma_decay, self._horizon_steps,
                               self.schedule_reference_horizon, self.schedule_rescale)[1]

    def _exponent(self, rate: float, effective_rate: float) -> torch.Tensor:
        """The schedule exponent at the clock: configured rate up to the origin, effective after
        (an unfixed origin is the clock itself: no step of the horizon's run yet)."""
        origin = self.clock if self._origin is None else self._origin
        return rescaled_exponent(rate, effective_rate, self.clock, origin)

    def _log_radius(self) -> torch.Tensor:
        if self.schedule_horizon is None:
            return log_radius(self.bbnr_alpha, self.clock)
        return self._exponent(self.bbnr_alpha, self.effective_bbnr_alpha)

    @property
    def radius(self) -> torch.Tensor:
        """R(clock) = exp(bbnr_alpha * clock) (with a horizon: exp(alpha * origin + alpha' * (clock -
        origin))), float32 scalar (saturates at float32 max)."""
        if self.schedule_horizon is None:
            return radius(self.bbnr_alpha, self.clock)
        return radius_from_log(self._log_radius())

    @property
    def arc_weight(self) -> torch.Tensor:
        """lambda(clock) = arc_gamma * exp(-arc_gamma_decay * clock) (with a horizon: exp(-delta *
        origin - delta' * (clock - origin))), float32 scalar."""
        if self.schedule_horizon is None:
            return arc_weight(self.arc_gamma, self.arc_gamma_decay, self.clock)
        return arc_weight_from_exponent(self.arc_gamma,
                                        self._exponent(self.arc_gamma_decay, self.effective_arc_gamma_decay))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Advance the clock by one step, then clip every code to the ball of radius R(clock).

        ``clipped_fraction`` records the fraction of codes this step moved onto the sphere (the rows
        whose norm exceeds R(clock)), as a device tensor.
        """
        if self.schedule_horizon is not None:
            self._require_resolved()
            if self._origin is None:  # the horizon's run starts here (one host sync per training)
                self._origin = int(self.clock)
                self.schedule_origin.fill_(self._origin)
        self.clock += 1
        self._forwards_since_step = 0
        if self.use_bbnr:
            log_bound = self._log_radius()
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
            vq = self.vq_loss(z_q.to(dtype), z.to(dtype))  # on the RAW code (METHOD.md section 2)
            scheduled = self.training or self.schedule_horizon is None or self._horizon_steps is not None
            weight = self.arc_weight if scheduled else None  # an unresolved auto horizon has no schedule yet
            if use_arc:
                arc = arc_margin_loss_normalized(z_all, e_hat, scan, s=self.arc_s,
                                                 m=self.arc_m, chunk_size=self.arc_chunk_size)
                loss = vq + weight * arc
            else:
                arc = vq.new_zeros(())
                loss = vq
            perplexity, usage = self._count_codes(indices, record=active)
        if active:
            self.loss_breakdown = {"vq": vq.detach(), "arc": arc.detach(), "perplexity": perplexity, "usage": usage}
            if scheduled:
                self.loss_breakdown.update(arc_weight=weight, radius=self.radius)
            if scheduled and self.schedule_horizon is not None:
                self.loss_breakdown.update(bbnr_alpha=self.effective_rates[0],
                                           arc_gamma_decay=self.effective_rates[1])
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
        return code_perplexity(counts, indices.shape[0]), (counts > 0).float().mean()

    # ---- the horizon in the state_dict ------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Horizon buffers: a checkpoint without them (the paper's schedules, a converted codebook)
        keeps this quantizer's; a checkpoint's resolved horizon is adopted by an ``auto`` quantizer
        and its origin by any quantizer with a horizon; a quantizer without a horizon ignores them."""
        keys = {prefix + name for name in HORIZON_BUFFERS}
        if self.schedule_horizon is None:
            state_dict = {k: v for k, v in state_dict.items() if k not in keys}
        else:
            state_dict = {**{prefix + name: getattr(self, name) for name in HORIZON_BUFFERS}, **state_dict}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.schedule_horizon is None:
            unexpected_keys[:] = [k for k in unexpected_keys if k not in keys]
            return
        saved_steps, origin = int(self.schedule_horizon_steps), int(self.schedule_origin)
        if self.schedule_horizon == "auto" and saved_steps != UNSET:
            self.resolve_schedule_horizon(saved_steps)
        elif self._horizon_steps is not None:  # an explicit horizon is the config's
            self.resolve_schedule_horizon(self._horizon_steps)
        else:
            self.schedule_horizon_steps.fill_(UNSET)
        self._origin = None if origin == UNSET else origin

    def extra_repr(self) -> str:
        text = (f"n_e={self.n_e}, e_dim={self.e_dim}, beta={self.beta}, legacy={self.legacy}, "
                f"use_bbnr={self.use_bbnr}, bbnr_alpha={self.bbnr_alpha}, "
                f"use_arc_loss={self.use_arc_loss}, arc_s={self.arc_s}, arc_m={self.arc_m}, "
                f"arc_top_k={self.arc_top_k}, arc_gamma={self.arc_gamma}, "
                f"arc_gamma_decay={self.arc_gamma_decay}, arc_chunk_size={self.arc_chunk_size}, "
                f"gradient_estimator={self.gradient_estimator!r}")
        if self.schedule_horizon is None:
            return text
        text += (f", schedule_horizon={self.schedule_horizon!r}, schedule_reference_horizon="
                 f"{self.schedule_reference_horizon}, schedule_rescale={self.schedule_rescale!r}")
        if self._horizon_steps is None:
            return text + " (unresolved: no effective rates yet)"
        return (text + f", resolved horizon={self._horizon_steps}, effective bbnr_alpha="
                f"{self.effective_bbnr_alpha:.6g}, effective arc_gamma_decay={self.effective_arc_gamma_decay:.6g}")
