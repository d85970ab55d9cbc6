"""The training loops' non-finite policy: a NaN or inf batch or loss stops training before it updates anything.

Every model this package trains checks each training batch (``check_finite``, default True):
:class:`arcvq_plugin.gan_training.ManualGANTraining` (the taming and ldm VQModels whatever their
quantiser, taming's ``VectorQuantizer2`` included, and the patched upstream models) and
:class:`arcvq_plugin.vqvae.VQVAE`. Checked are

- the input x, before the forward (a quantiser's training forward may update its own state, as
  ``ClusteredQuantizer``'s running usage and codebook re-initialisation do);
- each loss, before its backward (so accumulated gradients stay finite too).

A failing check raises :class:`NonFiniteTrainingError` naming the batch index, the epoch and the
optimizer step. The weights, optimizer states and accumulated gradients are then those after the
previous batch, and so is all other state for a bad input. Two limits: a loss is checked after its
forward, so what a forward updates on its own (BatchNorm statistics, a quantiser's usage counts)
already holds that batch; ``ManualGANTraining``'s discriminator loss is computed after the
autoencoder's step, so its refusal keeps that batch's autoencoder update. Gradients are not
checked: a finite loss with an infinite gradient is not caught. ``arcvq-train`` writes its crash
checkpoint on the exception.

Under torch.distributed every rank stops at the same check (a flag is reduced over the ranks).
Cost: each check is one device-to-host synchronisation, and one small ``all_reduce`` under
torch.distributed (``ManualGANTraining``: three checks per batch; ``VQVAE``: one, two for float
pixels). ``check_finite: false`` in the model's params turns the checks off (an ``ArcQuantizer``
still refuses non-finite latents unless its own ``check_finite`` is false too).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from arcvq_plugin.all_gather import distributed_world_size

__all__ = ["NonFiniteTrainingError", "refuse_non_finite"]


class NonFiniteTrainingError(ValueError):
    """A training batch whose input or loss holds NaN or inf; raised before any update."""


def refuse_non_finite(value: torch.Tensor, what: str, *, batch_idx: int, epoch: int, step: int) -> None:
    """Nothing if every element of ``value`` (any shape) is finite on every process, else
    :class:`NonFiniteTrainingError` naming ``what`` (e.g. ``"the input batch 'image'"``), the batch, the
    epoch and the optimizer step.

    Under torch.distributed every rank raises together (one ``all_reduce`` of a flag), so a bad batch
    on one rank cannot leave the others waiting in the next collective. Cost: one device-to-host
    synchronisation for a floating-point ``value``; none, and no ``all_reduce``, for an integer one
    (its dtype is the same on every rank).
    """
    if not value.is_floating_point():
        return
    finite = torch.isfinite(value).all()
    everywhere = finite
    if distributed_world_size() > 1:
        everywhere = finite.to(torch.int32)
        dist.all_reduce(everywhere, op=dist.ReduceOp.MIN)
    if bool(everywhere):
        return
    where = f"training batch {batch_idx} of epoch {epoch} (optimizer step {step})"
    if bool(finite):
        problem = f"{what} holds NaN or inf on another process (rank {dist.get_rank()}'s is finite)"
    else:
        nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
        problem = f"{what} holds NaN or inf ({nan} NaN, {inf} inf of {value.numel()} values)"
    raise NonFiniteTrainingError(
        f"{where}: {problem}; stopped before the update, so the model is as the previous batch left it. "
        f"Remove the bad samples (or find what diverged), or set model.params.check_finite: false to "
        f"train on them regardless")
