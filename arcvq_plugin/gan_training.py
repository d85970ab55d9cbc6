"""Manual-optimisation training of a VQ autoencoder with a discriminator (taming and ldm VQModels).

Lightning 2.x refuses upstream's ``training_step(batch, batch_idx, optimizer_idx)`` with two
optimizers, so :class:`ManualGANTraining` (mixed in before taming's or ldm's ``VQModel``) runs
each batch as: one forward, the autoencoder loss and its optimizer step, the discriminator loss
on detached outputs and its step, then any learning-rate schedulers. The loss and its adaptive
weight are upstream's, called as upstream calls them, except for the step it is given:

``batches_trained`` is the number of training batches, which the loss compares with
``disc_start``: the quantiser's ``clock`` when it has one (ArcQuantizer: autoencoder optimizer
steps, saved in the state_dict), else ``global_step // 2`` (Lightning >= 1.6 counts both
optimizers' steps in ``global_step``, which would start the discriminator twice as early).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch
from pytorch_lightning.utilities import rank_zero_info

from arcvq_plugin.checkpoint_loading import load_state_dict
from arcvq_plugin.norm_bound_callback import require_norm_bound_callback

__all__ = ["ManualGANTraining"]

OPTIMIZERS_PER_BATCH = 2  # autoencoder + discriminator


def _accepts_keyword(function: Any, name: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class ManualGANTraining:
    """Mixin for a LightningModule with upstream VQModel's ``encode``, ``decode``, ``get_input``,
    ``loss``, ``get_last_layer``, ``image_key`` and two optimizers (autoencoder, discriminator).
    Set ``self.automatic_optimization = False`` in ``__init__``."""

    # ---- checkpoints -----------------------------------------------------------------------
    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = ()) -> None:
        """Load ``path`` (a Lightning checkpoint or a state dict) non-strictly like upstream,
        quantiser and clock included; keys starting with an entry of ``ignore_keys`` are dropped.
        A tensor whose shape does not fit is a ValueError; unmatched keys are reported."""
        state_dict = load_state_dict(path)
        state_dict = {k: v for k, v in state_dict.items()
                      if not any(k.startswith(prefix) for prefix in ignore_keys)}
        try:
            missing, unexpected = self.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit this model's architecture: {err}") from err
        loss_keys = [k for k in unexpected if k.startswith("loss.")]
        rank_zero_info(f"{type(self).__name__}: restored {path} ({len(state_dict)} tensors); missing "
                       f"{sorted(missing)}, unexpected {sorted(set(unexpected) - set(loss_keys))}, "
                       f"{len(loss_keys)} loss.* keys this model's loss does not use")

    # ---- the clock -------------------------------------------------------------------------
    @property
    def batches_trained(self) -> int:
        """Training batches so far (see the module docstring)."""
        clock = getattr(self.quantize, "clock", None)
        if isinstance(clock, torch.Tensor):
            return int(clock)
        return self.global_step // OPTIMIZERS_PER_BATCH

    def on_train_start(self) -> None:
        require_norm_bound_callback(self.trainer, self)

    # ---- one batch -------------------------------------------------------------------------
    def _reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> (reconstruction (B, C, H, W), quantiser loss, code indices)."""
        quant, qloss, (_, _, indices) = self.encode(x)
        return self.decode(quant), qloss, indices

    def _gan_loss(self, qloss: torch.Tensor, x: torch.Tensor, xrec: torch.Tensor,
                  optimizer_idx: int, split: str, indices: torch.Tensor):
        """Upstream's loss for ``optimizer_idx`` (0: autoencoder, 1: discriminator) at
        ``batches_trained``; ``predicted_indices`` only for losses that accept it (ldm's do,
        taming's ``VQLPIPSWithDiscriminator`` does not)."""
        extra = ({"predicted_indices": indices}
                 if _accepts_keyword(self.loss.forward, "predicted_indices") else {})
        return self.loss(qloss, x, xrec, optimizer_idx, self.batches_trained,
                         last_layer=self.get_last_layer(), split=split, **extra)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        opt_ae, opt_disc = self.optimizers()
        x = self.get_input(batch, self.image_key)
        xrec, qloss, indices = self._reconstruct(x)
        quantizer_logs = self._quantizer_logs("train")

        aeloss, log_ae = self._gan_loss(qloss, x, xrec, 0, "train", indices)
        opt_ae.zero_grad(set_to_none=True)
        self.manual_backward(aeloss)
        opt_ae.step()

        discloss, log_disc = self._gan_loss(qloss.detach(), x, xrec.detach(), 1, "train", indices)
        opt_disc.zero_grad(set_to_none=True)
        self.manual_backward(discloss)
        opt_disc.step()

        schedulers = self.lr_schedulers() or []
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

        self.log("train/aeloss", aeloss.detach(), prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/discloss", discloss.detach(), prog_bar=True, on_step=True, on_epoch=True)
        self._log_metrics({**log_ae, **log_disc, **quantizer_logs}, on_step=True, on_epoch=True)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict:
        return self._validation_losses(batch, "val")

    def _validation_losses(self, batch: Mapping[str, torch.Tensor], split: str) -> dict:
        """Log the validation losses under ``split/``, each key once (upstream logs
        ``val/rec_loss`` twice, which Lightning rejects); returns them."""
        x = self.get_input(batch, self.image_key)
        xrec, qloss, indices = self._reconstruct(x)
        quantizer_logs = self._quantizer_logs(split)
        aeloss, log_ae = self._gan_loss(qloss, x, xrec, 0, split, indices)
        _, log_disc = self._gan_loss(qloss, x, xrec, 1, split, indices)
        rec_loss = log_ae.pop(f"{split}/rec_loss")
        self.log(f"{split}/rec_loss", rec_loss, prog_bar=True, sync_dist=True)
        self.log(f"{split}/aeloss", aeloss, prog_bar=True, sync_dist=True)
        self._log_metrics({**log_ae, **log_disc, **quantizer_logs}, sync_dist=True)
        return {f"{split}/rec_loss": rec_loss, f"{split}/aeloss": aeloss, **log_ae}

    # ---- logging ---------------------------------------------------------------------------
    def _quantizer_logs(self, split: str) -> dict[str, torch.Tensor]:
        """The quantiser's ``loss_breakdown`` of its last forward (empty for taming's quantisers)."""
        breakdown = getattr(self.quantize, "loss_breakdown", None) or {}
        return {f"{split}/quantizer/{key}": value for key, value in breakdown.items()}

    def _log_metrics(self, metrics: Mapping[str, Any], **kwargs: Any) -> None:
        """``log_dict`` with every value on this module's device (upstream builds some on the CPU)."""
        values = {k: torch.as_tensor(v).detach().float().mean().to(self.device) for k, v in metrics.items()}
        self.log_dict(values, prog_bar=False, **kwargs)
