"""Manual-optimisation training of an autoencoder with a discriminator, with upstream's semantics.

taming's and ldm's GAN autoencoders (VQModel, GumbelVQ, AutoencoderKL) were written for
pytorch-lightning 1.0, which called ``training_step(batch, batch_idx, optimizer_idx)`` once per
optimizer; Lightning 2.x refuses two optimizers outside manual optimisation.
:class:`ManualGANTraining` reproduces what Lightning 1.0 did with such a model, batch by batch:

1. autoencoder pass: forward with gradients, upstream's loss with ``optimizer_idx=0``, backward
   (the discriminator's parameters frozen meanwhile, as Lightning's ``toggle_optimizer`` did);
2. discriminator pass (``disc_reconstruction``):

   - ``"fresh"`` (default, upstream's behaviour): a second forward without gradients, after the
     autoencoder's step, so the discriminator sees reconstructions of the updated autoencoder.
     Quantisers are ``passive()`` in it (no ArcLoss, no code counting, no CVQ usage update);
   - ``"reuse"``: the first forward's reconstructions, detached: one forward per batch instead of
     two (a speed option; the discriminator then sees the autoencoder before its step);

   then the loss with ``optimizer_idx=1`` and backward;
3. gradient accumulation (``accumulate_grad_batches``, which Lightning refuses under manual
   optimisation): losses are divided by it, and both optimizers step (then zero their gradients)
   every ``accumulate_grad_batches`` batches and at the last batch of an epoch, as Lightning 1.0's
   accumulation did; learning-rate schedulers step with them;
4. the step given to the loss (compared with ``disc_start``, used by GumbelVQ's temperature) is
   :attr:`optimizer_steps`, the autoencoder optimizer steps completed in this training: the
   ``global_step`` upstream's loss saw under Lightning 1.0 (Lightning >= 1.6 counts both
   optimizers' steps in ``global_step``). It is the same for a baseline and an ArcVQ model, is
   restored on resume, and starts at 0 when fine-tuning from weights (``ckpt_path``); an ArcVQ
   quantiser's ``clock`` is its own.

Gradients accumulated when a checkpoint is written between optimizer steps are saved in it and
restored at train start, so resuming from any batch boundary continues the straight run.

Non-finite policy (:mod:`arcvq_plugin.finite_training`, ``check_finite``, default True): the input
batch is checked before the forward and each loss before its backward; NaN or inf raises
``NonFiniteTrainingError`` naming the batch, epoch and step before that update. Loaded state
(``-r`` and ``ckpt_path``) is checked too: every floating tensor under ``quantize.`` must be finite,
whatever the quantiser (``QuantizerStateError`` naming the key).

The mixin is used by ``arcvq_plugin.taming.VQModel``, ``arcvq_plugin.ldm.VQModel`` and, through
``arcvq-patch``, by the patched upstream models.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from pytorch_lightning.utilities import rank_zero_info

from arcvq_plugin.checkpoint_loading import load_state_dict
from arcvq_plugin.finite_training import refuse_non_finite
from arcvq_plugin.norm_bound_callback import require_norm_bound_callback
from arcvq_plugin.quantizer_contract import check_finite_state
from arcvq_plugin.validation import check_bool, check_int

__all__ = ["DISC_RECONSTRUCTIONS", "ManualGANTraining", "validate_accumulation", "validate_disc_reconstruction"]

OPTIMIZERS_PER_STEP = 2  # autoencoder + discriminator: Lightning's global_step counts both
DISC_RECONSTRUCTIONS = ("fresh", "reuse")
ACCUMULATED_GRADIENTS_KEY = "arcvq_accumulated_gradients"
QUANTIZER_PREFIX = "quantize."  # the quantiser's attribute in taming's and ldm's VQ models


def validate_disc_reconstruction(value: Any) -> str:
    """``value`` if it is one of :data:`DISC_RECONSTRUCTIONS`, else a ValueError naming the option."""
    if value not in DISC_RECONSTRUCTIONS:
        raise ValueError(f"disc_reconstruction must be 'fresh' (a second forward after the autoencoder "
                         f"step, upstream's behaviour) or 'reuse' (one forward per batch), got {value!r}")
    return value


def validate_accumulation(value: Any) -> int:
    """``value`` if it is an integer >= 1, else a ValueError naming ``accumulate_grad_batches``."""
    return check_int("accumulate_grad_batches", value, minimum=1)


def _accepts_keyword(function: Any, name: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


@contextlib.contextmanager
def _frozen(parameters: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """``requires_grad=False`` for ``parameters`` inside the block (Lightning's ``toggle_optimizer``)."""
    toggled = [p for p in parameters if p.requires_grad]
    for p in toggled:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in toggled:
            p.requires_grad_(True)


def _only_in(optimizer: torch.optim.Optimizer, other: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    """Parameters ``optimizer`` updates and ``other`` does not."""
    others = {id(p) for group in other.param_groups for p in group["params"]}
    return [p for group in optimizer.param_groups for p in group["params"] if id(p) not in others]


@contextlib.contextmanager
def passive_quantizers(module: torch.nn.Module) -> Iterator[None]:
    """Every submodule with a ``passive()`` context (ArcQuantizer, ClusteredQuantizer) is passive inside the block."""
    with contextlib.ExitStack() as stack:
        for submodule in module.modules():
            passive = getattr(submodule, "passive", None)
            if callable(passive):
                stack.enter_context(passive())
        yield


class ManualGANTraining:
    """Mixin for a LightningModule with upstream VQModel's ``encode``, ``decode``, ``get_input``,
    ``loss``, ``get_last_layer``, ``image_key`` and two optimizers (autoencoder, discriminator).
    Set ``self.automatic_optimization = False`` in ``__init__``.

    Attributes (class defaults, set per instance by the models and the trainer CLIs):
        disc_reconstruction: ``"fresh"`` or ``"reuse"`` (see the module docstring).
        accumulate_grad_batches: batches per optimizer step (>= 1).
        check_finite: refuse a training batch whose input or loss is not finite (default True;
            :mod:`arcvq_plugin.finite_training`: three device-to-host syncs per batch).
    A model whose loss takes other inputs (AutoencoderKL) overrides :meth:`_autoencode` and
    :meth:`_gan_loss`.
    """

    disc_reconstruction: str = "fresh"
    accumulate_grad_batches: int = 1
    check_finite: bool = True

    # ---- checkpoints -----------------------------------------------------------------------
    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = ()) -> None:
        """Load ``path`` (a Lightning checkpoint or a state dict) non-strictly like upstream,
        quantiser and clock included; keys starting with an entry of ``ignore_keys`` are dropped.
        A tensor whose shape does not fit is a ValueError; unmatched keys are reported."""
        state_dict = load_state_dict(path)
        state_dict = {k: v for k, v in state_dict.items()
                      if not any(k.startswith(prefix) for prefix in ignore_keys)}
        check_finite_state(state_dict, QUANTIZER_PREFIX)
        try:
            missing, unexpected = self.load_state_dict(state_dict, strict=False)
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit this model's architecture: {err}") from err
        loss_keys = [k for k in unexpected if k.startswith("loss.")]
        rank_zero_info(f"{type(self).__name__}: restored {path} ({len(state_dict)} tensors); missing "
                       f"{sorted(missing)}, unexpected {sorted(set(unexpected) - set(loss_keys))}, "
                       f"{len(loss_keys)} loss.* keys this model's loss does not use")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save gradients accumulated since the last optimizer step (none at a step boundary)."""
        if self.automatic_optimization:  # a subclass trained by Lightning (VQSegmentationModel)
            return
        gradients = {name: p.grad.detach().cpu().clone() for name, p in self.named_parameters()
                     if p.grad is not None}
        if gradients:
            checkpoint[ACCUMULATED_GRADIENTS_KEY] = gradients

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose quantiser state is not finite (before Lightning loads it), and keep
        its accumulated gradients for train start."""
        check_finite_state(checkpoint.get("state_dict", {}), QUANTIZER_PREFIX)
        self._gradients_to_restore = checkpoint.get(ACCUMULATED_GRADIENTS_KEY, {})

    # ---- the loss's step -------------------------------------------------------------------
    @property
    def optimizer_steps(self) -> int:
        """Autoencoder optimizer steps completed in this training (see the module docstring)."""
        return self.global_step // OPTIMIZERS_PER_STEP

    def on_train_start(self) -> None:
        require_norm_bound_callback(self.trainer, self)
        validate_disc_reconstruction(self.disc_reconstruction)
        validate_accumulation(self.accumulate_grad_batches)
        check_bool("check_finite", self.check_finite)
        gradients = getattr(self, "_gradients_to_restore", None) or {}
        parameters = dict(self.named_parameters())
        for name, gradient in gradients.items():
            parameters[name].grad = gradient.to(parameters[name].device, parameters[name].dtype)
        self._gradients_to_restore = {}

    # ---- one batch -------------------------------------------------------------------------
    def _autoencode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """x (B, C, H, W) -> (reconstruction (B, C, H, W), (quantiser loss, code indices)): the
        loss's inputs besides x and the reconstruction."""
        quant, qloss, (_, _, indices) = self.encode(x)
        return self.decode(quant), (qloss, indices)

    def _gan_loss(self, x: torch.Tensor, xrec: torch.Tensor, extras: tuple, optimizer_idx: int,
                  step: int, split: str):
        """Upstream's loss for ``optimizer_idx`` (0: autoencoder, 1: discriminator) at ``step``;
        ``predicted_indices`` only for losses that accept it (ldm's do, taming's
        ``VQLPIPSWithDiscriminator`` does not)."""
        qloss, indices = extras
        extra = ({"predicted_indices": indices}
                 if _accepts_keyword(self.loss.forward, "predicted_indices") else {})
        return self.loss(qloss, x, xrec, optimizer_idx, step,
                         last_layer=self.get_last_layer(), split=split, **extra)

    def _discriminator_inputs(self, x: torch.Tensor, xrec: torch.Tensor, extras: tuple):
        if self.disc_reconstruction == "reuse":
            return xrec.detach(), tuple(e.detach() if isinstance(e, torch.Tensor) else e for e in extras)
        with torch.no_grad(), passive_quantizers(self):
            return self._autoencode(x)

    def _ends_accumulation(self, batch_idx: int) -> bool:
        return (batch_idx + 1) % self.accumulate_grad_batches == 0 or bool(self.trainer.is_last_batch)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        opt_ae, opt_disc = self.optimizers()
        step = self.optimizer_steps
        scale = 1.0 / self.accumulate_grad_batches
        steps_now = self._ends_accumulation(batch_idx)
        disc_only = _only_in(opt_disc.optimizer, opt_ae.optimizer)
        x = self.get_input(batch, self.image_key)
        self._refuse_non_finite(x, f"the input batch {self.image_key!r}", batch_idx, step)

        with _frozen(disc_only):
            xrec, extras = self._autoencode(x)
            quantizer_logs = self._quantizer_logs("train")
            aeloss, log_ae = self._gan_loss(x, xrec, extras, 0, step, "train")
            self._refuse_non_finite(aeloss, "the autoencoder loss", batch_idx, step)
            self.manual_backward(aeloss * scale)
        if steps_now:
            opt_ae.step()
            opt_ae.zero_grad(set_to_none=True)

        xrec_d, extras_d = self._discriminator_inputs(x, xrec, extras)
        discloss, log_disc = self._gan_loss(x, xrec_d, extras_d, 1, step, "train")
        self._refuse_non_finite(discloss, "the discriminator loss", batch_idx, step)
        self.manual_backward(discloss * scale)
        if steps_now:
            opt_disc.step()
            opt_disc.zero_grad(set_to_none=True)
            schedulers = self.lr_schedulers() or []
            for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
                scheduler.step()

        self.log("train/aeloss", aeloss.detach(), prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/discloss", discloss.detach(), prog_bar=True, on_step=True, on_epoch=True)
        self._log_metrics({**log_ae, **log_disc, **quantizer_logs}, on_step=True, on_epoch=True)

    def _refuse_non_finite(self, value: torch.Tensor, what: str, batch_idx: int, step: int) -> None:
        if self.check_finite:
            refuse_non_finite(value, what, batch_idx=batch_idx, epoch=self.current_epoch, step=step)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict:
        return self._validation_losses(batch, "val")

    def _validation_losses(self, batch: Mapping[str, torch.Tensor], split: str) -> dict:
        """Log the validation losses under ``split/``, each key once (upstream logs
        ``val/rec_loss`` twice, which Lightning rejects); returns them."""
        x = self.get_input(batch, self.image_key)
        xrec, extras = self._autoencode(x)
        quantizer_logs = self._quantizer_logs(split)
        step = self.optimizer_steps
        aeloss, log_ae = self._gan_loss(x, xrec, extras, 0, step, split)
        _, log_disc = self._gan_loss(x, xrec, extras, 1, step, split)
        rec_loss = log_ae.pop(f"{split}/rec_loss")
        self.log(f"{split}/rec_loss", rec_loss, prog_bar=True, sync_dist=True)
        self.log(f"{split}/aeloss", aeloss, prog_bar=True, sync_dist=True)
        self._log_metrics({**log_ae, **log_disc, **quantizer_logs}, sync_dist=True)
        return {f"{split}/rec_loss": rec_loss, f"{split}/aeloss": aeloss, **log_ae}

    # ---- logging ---------------------------------------------------------------------------
    def _quantizer_logs(self, split: str) -> dict[str, torch.Tensor]:
        """The quantiser's ``loss_breakdown`` of its last forward (empty for taming's quantisers)."""
        breakdown = getattr(getattr(self, "quantize", None), "loss_breakdown", None) or {}
        return {f"{split}/quantizer/{key}": value for key, value in breakdown.items()}

    def _log_metrics(self, metrics: Mapping[str, Any], **kwargs: Any) -> None:
        """``log_dict`` with every value on this module's device (upstream builds some on the CPU)."""
        values = {k: torch.as_tensor(v).detach().float().mean().to(self.device) for k, v in metrics.items()}
        self.log_dict(values, prog_bar=False, **kwargs)
