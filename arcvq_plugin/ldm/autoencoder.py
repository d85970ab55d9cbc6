"""latent-diffusion's VQ first stage with a configurable quantiser, trainable under Lightning 2.x.

``VQModel`` subclasses ``ldm.models.autoencoder.VQModel`` and ``VQModelInterface`` subclasses
``ldm.models.autoencoder.VQModelInterface`` (so ``LatentDiffusion``'s ``isinstance`` checks take
the ``force_not_quantize`` decode path). Both take ldm's arguments plus ``quantizer_config``::

    first_stage_config:
      target: arcvq_plugin.ldm.VQModelInterface
      params:
        embed_dim: 4
        n_embed: 1024
        quantizer_config:            # absent: ldm's VectorQuantizer2 (the baseline)
          target: arcvq_plugin.ArcQuantizer
          params: {bbnr_alpha: 1.0e-5, arc_gamma_decay: 1.0e-4}

``n_e``, ``e_dim``, ``remap`` and ``sane_index_shape`` are filled in from the model's own
arguments (a conflicting value is a ValueError), by the same ``build_quantizer`` as
:class:`arcvq_plugin.taming.VQModel`, whose training semantics this model shares. Parameter and
buffer names are ldm's (``quantize.embedding.weight``; ArcQuantizer adds ``quantize.clock``), so
upstream checkpoints load into either model.

What differs from ldm's training code, and why:
- the training loop is :class:`arcvq_plugin.gan_training.ManualGANTraining` (shared with the
  taming model; Lightning 2.x refuses two optimizers with ``optimizer_idx``), which keeps ldm's
  Lightning 1.x semantics: the discriminator trains on a fresh forward after the autoencoder step
  (``disc_reconstruction: reuse`` for one forward per batch), the loss's step counts autoencoder
  optimizer steps (the same for baseline and ArcVQ), ``accumulate_grad_batches`` accumulates over
  batches, ``scheduler_config`` LR schedulers step with the optimizers;
- the loss gets ``predicted_indices`` only when its ``forward`` accepts it (taming's
  ``VQLPIPSWithDiscriminator`` does not, ldm's own does);
- training refuses to start with an ArcQuantizer but no ``NormBoundCallback``;
- validation logs every key once, and runs the ``val_ema`` pass only with ``use_ema``;
- ``ckpt_path`` is loaded after the quantiser is in place, so ``quantize.clock`` is restored;
- ``LitEma`` (``use_ema=True``) is rebuilt after the quantiser is in place.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from arcvq_plugin.gan_training import ManualGANTraining, validate_disc_reconstruction
from arcvq_plugin.quantizer_config import build_quantizer
from arcvq_plugin.taming.vqgan import offline_lossconfig
from arcvq_plugin.validation import check_bool, check_int, check_real

from .compat import import_ldm

import_ldm()
from ldm.models.autoencoder import VQModel as _LdmVQModel  # noqa: E402
from ldm.models.autoencoder import VQModelInterface as _LdmVQModelInterface  # noqa: E402
from ldm.modules.ema import LitEma  # noqa: E402

__all__ = ["VQModel", "VQModelInterface"]


# A latent-diffusion clone patched by arcvq-patch already trains its VQModel with ManualGANTraining.
_BASES = ((_LdmVQModel,) if issubclass(_LdmVQModel, ManualGANTraining) else (ManualGANTraining, _LdmVQModel))


class VQModel(*_BASES):
    """ldm's VQModel (same arguments, same architecture) with ``quantizer_config``; see module doc.

    Batches: ``{image_key: (B, H, W, C) float in [-1, 1]}``; ``forward(x (B, C, H, W))`` returns
    ``(reconstruction (B, C, H, W), quantiser loss)``. ``learning_rate`` must be set before
    training (``arcvq-train`` sets it from ``model.base_learning_rate`` as ldm's main.py does).
    ``disc_reconstruction``: ``"fresh"`` (default, ldm's behaviour) or ``"reuse"`` (see
    :mod:`arcvq_plugin.gan_training`). ``check_finite`` (default True): refuse a training batch whose
    input or loss holds NaN or inf, before it updates anything (:mod:`arcvq_plugin.finite_training`).
    A lossconfig naming taming's ``VQLPIPSWithDiscriminator`` is built as
    :class:`arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator` (same loss, LPIPS weights read
    from disk, none built at ``perceptual_weight: 0``).
    """

    def __init__(
        self,
        ddconfig: Mapping[str, Any],
        lossconfig: Mapping[str, Any],
        n_embed: int,
        embed_dim: int,
        ckpt_path: Optional[str] = None,
        ignore_keys: Sequence[str] = (),
        image_key: str = "image",
        colorize_nlabels: Optional[int] = None,
        monitor: Optional[str] = None,
        batch_resize_range: Optional[Sequence[int]] = None,
        scheduler_config: Optional[Mapping[str, Any]] = None,
        lr_g_factor: float = 1.0,
        remap: Optional[str] = None,
        sane_index_shape: bool = False,
        use_ema: bool = False,
        quantizer_config: Optional[Mapping[str, Any]] = None,
        disc_reconstruction: str = "fresh",
        check_finite: bool = True,
    ) -> None:
        self.disc_reconstruction = validate_disc_reconstruction(disc_reconstruction)
        self.check_finite = check_bool("check_finite", check_finite)
        n_embed, embed_dim = check_int("n_embed", n_embed, minimum=1), check_int("embed_dim", embed_dim, minimum=1)
        check_real("lr_g_factor", lr_g_factor, minimum=0.0, exclusive=True)
        lossconfig = offline_lossconfig(lossconfig)
        super().__init__(
            ddconfig=ddconfig, lossconfig=lossconfig, n_embed=n_embed, embed_dim=embed_dim,
            ckpt_path=None, ignore_keys=list(ignore_keys), image_key=image_key,
            colorize_nlabels=colorize_nlabels, monitor=monitor, batch_resize_range=batch_resize_range,
            scheduler_config=scheduler_config, lr_g_factor=lr_g_factor, remap=remap,
            sane_index_shape=sane_index_shape, use_ema=use_ema,
        )
        if quantizer_config is not None:
            self.quantize = build_quantizer(quantizer_config, n_embed, embed_dim, remap, sane_index_shape)
            if self.use_ema:
                self.model_ema = LitEma(self)
        self.automatic_optimization = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=list(ignore_keys))

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict:
        """Validation losses; with ``use_ema`` also those of the EMA weights (``val_ema/*``)."""
        log_dict = self._validation_losses(batch, "val")
        if self.use_ema:
            with self.ema_scope():
                self._validation_losses(batch, "val_ema")
        return log_dict


class VQModelInterface(VQModel, _LdmVQModelInterface):
    """The first stage for ``LatentDiffusion``: ``encode(x)`` gives the pre-quantisation latent
    h (B, embed_dim, h, w); ``decode(h, force_not_quantize=False)`` quantises it unless told not
    to and decodes. LatentDiffusion's ``decode_first_stage(z, force_not_quantize=...)`` (and its
    ``predict_cids`` path) forwards the flag only to ``isinstance(.., ldm VQModelInterface)``
    first stages, which this is. Train the tokenizer as :class:`VQModel` and give its
    checkpoint to this class (same keys): ``encode`` here returns h, so it does not train."""

    def on_train_start(self) -> None:
        raise NotImplementedError("VQModelInterface is LatentDiffusion's frozen first stage (its encode "
                                  "returns the latent before quantisation): train VQModel and load its "
                                  "checkpoint into VQModelInterface")
