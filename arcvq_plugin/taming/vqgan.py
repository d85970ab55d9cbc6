"""taming's VQGAN (``taming.models.vqgan.VQModel``) with a configurable quantiser, on Lightning 2.x.

A taming yaml becomes ArcVQ by changing the model target and adding one block::

    model:
      target: arcvq_plugin.taming.VQModel
      params:
        n_embed: 1024
        embed_dim: 16
        quantizer_config:                 # absent: taming's VectorQuantizer2 (the baseline)
          target: arcvq_plugin.ArcQuantizer
          params: {bbnr_alpha: 1.0e-5, arc_gamma_decay: 1.0e-4}
        ddconfig: {...}
        lossconfig: {...}

Encoder, decoder, discriminator and every parameter name are upstream's, so upstream checkpoints
load (``quantize.embedding.weight``; ArcVQ adds the buffer ``quantize.clock``).

What differs from upstream: the training loop is
:class:`arcvq_plugin.gan_training.ManualGANTraining` (Lightning 2.x refuses two optimizers
otherwise), which reproduces upstream's Lightning 1.0 semantics: the discriminator trains on a
fresh forward after the autoencoder step (``disc_reconstruction: reuse`` for one forward per
batch), ``disc_start`` counts autoencoder optimizer steps (Lightning 1.0's ``global_step``, the
same for baseline and ArcVQ), ``accumulate_grad_batches`` accumulates over batches. Also:

- Validation logs every key once (upstream logs ``val/rec_loss`` twice, which Lightning rejects),
  ``decode_code`` works (upstream calls a method no quantiser has), and the quantiser's
  ``loss_breakdown`` is logged as ``{train,val}/quantizer/{vq,arc,arc_weight,radius,perplexity,usage}``.
- The perceptual loss never downloads: a lossconfig naming taming's ``VQLPIPSWithDiscriminator``
  is built as :class:`arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator` (the same loss, its
  LPIPS weights read from disk with a clear error when missing, no LPIPS at perceptual_weight 0).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig

from arcvq_plugin.compat import install_lightning_shims
from arcvq_plugin.gan_training import ManualGANTraining, validate_disc_reconstruction
from arcvq_plugin.quantizer_config import build_quantizer, plain_config
from arcvq_plugin.validation import check_bool, check_int

install_lightning_shims()
from taming.models import vqgan as taming_vqgan  # noqa: E402  (needs the shims above)

__all__ = ["OFFLINE_LOSS_TARGET", "UPSTREAM_LOSS_TARGET", "VQModel", "offline_lossconfig"]

UPSTREAM_LOSS_TARGET = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
OFFLINE_LOSS_TARGET = "arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator"

def offline_lossconfig(lossconfig: Mapping | DictConfig) -> dict:
    """``lossconfig`` as a plain dict, taming's VQGAN loss target swapped for the offline one
    (:class:`arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator`: same loss, no downloads)."""
    config = plain_config(lossconfig, "lossconfig")
    if config["target"] == UPSTREAM_LOSS_TARGET:
        config["target"] = OFFLINE_LOSS_TARGET
    return config


# A taming clone patched by arcvq-patch already trains its VQModel with ManualGANTraining.
_BASES = ((taming_vqgan.VQModel,) if issubclass(taming_vqgan.VQModel, ManualGANTraining)
          else (ManualGANTraining, taming_vqgan.VQModel))


class VQModel(*_BASES):
    """taming's VQGAN with ``quantizer_config``; trains under pytorch-lightning 2.x (manual optimisation).

    Args: upstream's (``ddconfig``, ``lossconfig``, ``n_embed`` K, ``embed_dim`` D, ``ckpt_path``,
    ``ignore_keys``, ``image_key``, ``colorize_nlabels``, ``monitor``, ``remap``,
    ``sane_index_shape``), plus
        quantizer_config: ``{target, params}`` of the quantiser (default None: taming's
            ``VectorQuantizer2(n_embed, embed_dim, beta=0.25)``). ``n_e``, ``e_dim``, ``remap``
            and ``sane_index_shape`` are filled from the model's arguments.
        disc_reconstruction: ``"fresh"`` (default: the discriminator sees a second forward made
            after the autoencoder's step, as upstream) or ``"reuse"`` (one forward per batch).
        check_finite: refuse a training batch whose input or loss holds NaN or inf, before it
            updates anything (default True; :mod:`arcvq_plugin.finite_training`).
    The quantiser is in place before ``ckpt_path`` is loaded, so ``init_from_ckpt`` restores it
    too (codebook and clock). Batches: ``{image_key: (B, H, W, C) float in [-1, 1]}``.
    ``learning_rate`` must be set before training (``arcvq-train`` sets it from
    ``model.base_learning_rate`` as taming's main.py does).
    """

    def __init__(self, ddconfig: Mapping, lossconfig: Mapping, n_embed: int, embed_dim: int,
                 ckpt_path: Optional[str] = None, ignore_keys: Sequence[str] = (),
                 image_key: str = "image", colorize_nlabels: Optional[int] = None,
                 monitor: Optional[str] = None, remap: Optional[str] = None,
                 sane_index_shape: bool = False,
                 quantizer_config: Optional[Mapping] = None,
                 disc_reconstruction: str = "fresh", check_finite: bool = True) -> None:
        self.disc_reconstruction = validate_disc_reconstruction(disc_reconstruction)
        self.check_finite = check_bool("check_finite", check_finite)
        n_embed, embed_dim = check_int("n_embed", n_embed, minimum=1), check_int("embed_dim", embed_dim, minimum=1)
        super().__init__(ddconfig, offline_lossconfig(lossconfig), n_embed, embed_dim, ckpt_path=None,
                         image_key=image_key, colorize_nlabels=colorize_nlabels, monitor=monitor,
                         remap=remap, sane_index_shape=sane_index_shape)
        if quantizer_config is not None:
            self.quantize = build_quantizer(quantizer_config, n_embed, embed_dim, remap, sane_index_shape)
        self.automatic_optimization = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=list(ignore_keys))

    # ---- inference -------------------------------------------------------------------------
    def decode_code(self, code_b: torch.Tensor, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Decode code indices (B, H, W), or flat (B*H*W,) with ``shape=(B, H, W)``, to images (B, C, h, w)."""
        if shape is None:
            if code_b.ndim != 3:
                raise ValueError("code_b must be (B, H, W) indices, or pass shape=(B, H, W); "
                                 f"got {tuple(code_b.shape)}")
            shape = tuple(code_b.shape)
        if len(shape) != 3:
            raise ValueError(f"shape must be (B, H, W), got {shape!r}")
        quant = self.quantize.get_codebook_entry(code_b.reshape(-1), (*shape, self.quantize.e_dim))
        return self.decode(quant)

    # ---- training ------------------------------------------------------------------------
    def configure_optimizers(self):
        if not hasattr(self, "learning_rate"):
            raise AttributeError("set model.learning_rate before training (arcvq-train sets it to "
                                 "accumulate_grad_batches * n_gpus * batch_size * base_learning_rate "
                                 "with --scale_lr, else base_learning_rate, as taming's main.py)")
        return super().configure_optimizers()
