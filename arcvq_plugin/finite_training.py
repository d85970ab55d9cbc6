"""The training loops' non-finite policy: a NaN or inf batch or loss stops training before it updates anything.

Every model this package trains checks each training batch (``check_finite``, default True):
:class:`arcvq_plugin.gan_training.ManualGANTraining` (the taming and ldm VQModels whatever their
quantiser, taming's ``VectorQuantizer2`` included, and the patched upstream models) and
:class:`arcvq_plugin.vqvae.VQVAE`. Checked are

- the input x, before the forward (a quantiser's training forward may update its own state, as
  ``ClusteredQuantizer``'s running usage and codebook re-initialisation do);
- each loss, before its backward (so accumulated gradients stay finite too).

A failing check raises :class:`NonFiniteTrainingError` naming the batch index, the epoch and the
optimizer step. The weights, optimizer states, accumulated gradients and quantiser state are then
those after the previous batch (``ManualGANTraining``'s discriminator loss is the exception: it is
computed after the autoencoder's step, so its refusal keeps that batch's autoencoder update), and
the exception reaches ``arcvq-train``, which writes its crash checkpoint of that state. Gradients
are not checked: a finite loss with an infinite gradient is not caught.

Cost: each check is one device-to-host synchronisation (``ManualGANTraining``: three per batch,
``VQVAE``: one, two for float pixels). ``check_finite: false`` in the model's params turns the checks off (an
``ArcQuantizer`` still refuses non-finite latents unless its own ``check_finite`` is false too).
"""
from __future__ import annotations

import torch

__all__ = ["NonFiniteTrainingError", "refuse_non_finite"]


class NonFiniteTrainingError(ValueError):
    """A training batch whose input or loss holds NaN or inf; raised before any update."""


def refuse_non_finite(value: torch.Tensor, what: str, *, batch_idx: int, epoch: int, step: int) -> None:
    """Nothing if every element of ``value`` (any shape) is finite, else :class:`NonFiniteTrainingError`
    naming ``what`` (e.g. ``"the input batch 'image'"``), the batch, the epoch and the optimizer step.
    One device-to-host synchronisation for a floating-point ``value``, none for an integer one."""
    if not value.is_floating_point() or bool(torch.isfinite(value).all()):
        return
    nan = int(torch.isnan(value).sum())
    inf = int(torch.isinf(value).sum())
    raise NonFiniteTrainingError(
        f"training batch {batch_idx} of epoch {epoch} (optimizer step {step}): {what} holds NaN or inf "
        f"({nan} NaN, {inf} inf of {value.numel()} values); stopped before the update, so the model is "
        f"as the previous batch left it. Remove the bad samples (or find what diverged), or set "
        f"model.params.check_finite: false to train on them regardless")
