"""latent-diffusion's ``LatentDiffusion``, trainable and loggable under Lightning 2.x on any device.

``LatentDiffusion`` takes ldm's arguments (``first_stage_config`` usually targets
``arcvq_plugin.ldm.VQModelInterface`` with the trained tokenizer's ``ckpt_path``) plus two for
classifier-free guidance, and changes only what breaks or is missing:

- ``on_train_batch_start(batch, batch_idx)``: Lightning >= 1.9 no longer passes
  ``dataloader_idx``; ldm's hook (``scale_by_std`` rescaling on the first batch) requires it.
  Under DDP the rescaling (rank 0 only in ldm) is broadcast to every rank.
- The frozen first stage's ArcQuantizer is left alone by ``NormBoundCallback`` (it skips
  codebooks with ``requires_grad=False``), so its clock and codebook never move.
- ``sample_log`` uses :class:`arcvq_plugin.ldm.ddim.DDIMSampler` (ldm's moves its schedule to
  ``cuda`` unconditionally).
- ``log_images`` on class-conditional models fills ``batch["human_label"]`` (which ldm reads for
  the conditioning panel) from the class ids when the dataset has no names.
- ``decode_first_stage(ids, predict_cids=True)`` decodes the looked-up codes themselves (ldm
  divides them by ``scale_factor``, which is only right for ``scale_factor: 1``).
- ``quantize_denoised`` (snap each step's x0 prediction to the codebook): ldm's samplers call
  ``first_stage_model.quantize`` on the *scaled* latent, and ldm's ``sample_log`` passes the flag
  to the DDIM sampler under a name it ignores. ``sample_log`` here hands it to DDIM as
  ``quantize_x0`` and, while sampling, the first stage's quantiser works in latent units
  (``scale * Q(x / scale)``, :meth:`LatentDiffusion.latent_quantizer`).
- Class-label dropout (``class_dropout_prob``, default 0 = upstream behaviour): during training
  each class label is replaced by ``unconditional_class`` with that probability, which trains the
  unconditional branch that classifier-free guidance needs (upstream's cin256-v2 model reserves
  class 1000 of ``n_classes: 1001`` for it; the paper samples with guidance scale 1.4).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Mapping, Optional

import torch
from torch import nn

from arcvq_plugin.validation import check_real

from .compat import import_ldm
from .ddim import DDIMSampler

_ddpm = import_ldm()

__all__ = ["LatentDiffusion", "ScaledQuantizer"]

CLASS_LABEL_KEY = "class_label"


class ScaledQuantizer(nn.Module):
    """``quantize`` for scaled latents x = scale * z: returns ``(scale * Q(x / scale), loss, info)``."""

    def __init__(self, quantize: nn.Module, scale: torch.Tensor | float) -> None:
        super().__init__()
        self.inner = quantize
        self.scale = scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any]:
        z_q, loss, info = self.inner(x / self.scale)
        return z_q * self.scale, loss, info


class LatentDiffusion(_ddpm.LatentDiffusion):
    """ldm's LatentDiffusion; see the module docstring.

    Args (beyond ldm's):
        unconditional_class: the class id meaning "no class" (e.g. 1000 with ``n_classes: 1001``),
            used by label dropout and by classifier-free guidance at sampling. None: none.
        class_dropout_prob: probability in [0, 1) of replacing a training label by
            ``unconditional_class`` (needs ``cond_stage_key: class_label`` and
            ``unconditional_class``). Default 0.
    """

    def __init__(self, *args: Any, unconditional_class: Optional[int] = None,
                 class_dropout_prob: float = 0.0, **kwargs: Any) -> None:
        check_real("class_dropout_prob", class_dropout_prob, minimum=0.0, below=1.0)
        super().__init__(*args, **kwargs)
        if class_dropout_prob > 0 and (self.cond_stage_key != CLASS_LABEL_KEY or unconditional_class is None):
            raise ValueError("class_dropout_prob > 0 needs cond_stage_key: class_label and an unconditional_class")
        if unconditional_class is not None:
            n_classes = self.num_classes
            if n_classes is None or not 0 <= int(unconditional_class) < n_classes:
                raise ValueError(f"unconditional_class must be a class id in [0, n_classes) of a class-conditional "
                                 f"model (n_classes={n_classes}), got {unconditional_class}")
        self.unconditional_class = None if unconditional_class is None else int(unconditional_class)
        self.class_dropout_prob = float(class_dropout_prob)

    @property
    def num_classes(self) -> Optional[int]:
        """Rows of the class embedding (ldm's ClassEmbedder) of a class-conditional model, else None."""
        if self.cond_stage_key != CLASS_LABEL_KEY:
            return None
        embedding = getattr(self.cond_stage_model, "embedding", None)
        return getattr(embedding, "num_embeddings", None)

    def on_train_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """ldm's first-batch ``scale_by_std`` rescaling, callable the way Lightning 2.x calls it.

        ldm computes ``scale_factor`` on rank 0 only; under torch.distributed it is then broadcast
        from rank 0, so every rank trains on the same latent scale.
        """
        rescales = (self.scale_by_std and self.current_epoch == 0 and self.global_step == 0
                    and batch_idx == 0 and not self.restarted_from_ckpt)
        super().on_train_batch_start(batch, batch_idx, dataloader_idx)
        if rescales and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.scale_factor, src=0)

    def get_input(self, batch: Mapping[str, Any], k: str, *args: Any, **kwargs: Any):
        if self.training and self.class_dropout_prob > 0:
            batch = self._drop_class_labels(batch)
        return super().get_input(batch, k, *args, **kwargs)

    def _drop_class_labels(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        labels = torch.as_tensor(batch[CLASS_LABEL_KEY])
        dropped = torch.rand(labels.shape, device=labels.device) < self.class_dropout_prob
        return {**batch, CLASS_LABEL_KEY: torch.where(dropped, torch.full_like(labels, self.unconditional_class), labels)}

    def unconditional_conditioning(self, batch_size: int) -> torch.Tensor:
        """The learned conditioning of ``unconditional_class`` for ``batch_size`` samples (for CFG)."""
        if self.unconditional_class is None:
            raise ValueError("this model has no unconditional_class; classifier-free guidance needs one")
        labels = torch.full((batch_size,), self.unconditional_class, dtype=torch.long, device=self.device)
        return self.get_learned_conditioning({self.cond_stage_key: labels})

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                           force_not_quantize: bool = False) -> torch.Tensor:
        """Images (B, C, H, W) of scaled latents z (B, channels, h, w), or, with ``predict_cids``,
        of code ids (B, h, w) or code logits (B, K, h, w) (ldm divides the looked-up codes by
        ``scale_factor``; here they are decoded as they are)."""
        if not predict_cids:
            return super().decode_first_stage(z, force_not_quantize=force_not_quantize)
        ids = z.argmax(dim=1) if z.dim() == 4 else z
        codes = self.first_stage_model.quantize.get_codebook_entry(ids.long(), shape=None)
        latent = self.scale_factor * codes.permute(0, 3, 1, 2).contiguous()
        return super().decode_first_stage(latent, force_not_quantize=True)

    @contextmanager
    def latent_quantizer(self) -> Iterator[None]:
        """Within the block, ``first_stage_model.quantize`` takes and returns scaled latents
        (a :class:`ScaledQuantizer`); the first stage's own quantiser is restored afterwards."""
        stage = self.first_stage_model
        original = stage.quantize
        stage.quantize = ScaledQuantizer(original, self.scale_factor)
        try:
            yield
        finally:
            stage.quantize = original

    @torch.no_grad()
    def sample_log(self, cond: Any, batch_size: int, ddim: bool, ddim_steps: Optional[int], **kwargs: Any):
        """``(latents (B, channels, h, w), intermediates)``: DDIM (on this model's device) with
        ``ddim``, else ancestral sampling; ``quantize_denoised=True`` snaps x0 predictions to the codebook."""
        if ddim and "quantize_denoised" in kwargs:
            kwargs["quantize_x0"] = kwargs.pop("quantize_denoised")
        snaps = bool(kwargs.get("quantize_x0") or kwargs.get("quantize_denoised"))
        with self.latent_quantizer() if snaps else nullcontext():
            if not ddim:
                return super().sample_log(cond, batch_size, ddim, ddim_steps, **kwargs)
            shape = (self.channels, self.image_size, self.image_size)
            return DDIMSampler(self).sample(ddim_steps, batch_size, shape, cond, verbose=False, **kwargs)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.cond_stage_key == CLASS_LABEL_KEY and "human_label" not in batch:
            batch = {**batch, "human_label": [f"class {int(c)}" for c in batch[CLASS_LABEL_KEY]]}
        return super().log_images(batch, *args, **kwargs)
