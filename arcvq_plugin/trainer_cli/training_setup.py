"""What every training entry point adds to its Trainer: ``arcvq-train`` and the patched upstream ``main.py``.

- :func:`hand_accumulation_to_model`: Lightning refuses ``accumulate_grad_batches > 1`` under
  manual optimisation, so for a model trained by
  :class:`arcvq_plugin.gan_training.ManualGANTraining` the value moves from the Trainer's
  arguments to the model, which accumulates itself (both optimizers, one ArcVQ clock tick per
  optimizer step). Automatically optimised models (LatentDiffusion, VQSegmentationModel, the
  VQ-VAE) keep Lightning's own accumulation.
- :func:`added_callbacks`: ``NormBoundCallback`` when the model trains an ArcQuantizer and none is
  configured (exactly one: two would advance the clock twice per step), ``CheckpointOnSignal``
  (``kill -USR1``: the checkpoint at the end of the current batch, on every rank together) and
  ``RandomStateCheckpoint`` (RNG states in every checkpoint), so that a run resumed from any
  batch boundary continues the straight run.
"""
from __future__ import annotations

from typing import Any, MutableMapping, Sequence

import pytorch_lightning as pl

from arcvq_plugin.gan_training import ManualGANTraining, validate_accumulation
from arcvq_plugin.norm_bound_callback import NormBoundCallback, quantizers_in
from arcvq_plugin.random_state import RandomStateCheckpoint
from arcvq_plugin.trainer_cli.callbacks import CheckpointOnSignal

__all__ = ["added_callbacks", "hand_accumulation_to_model"]


def hand_accumulation_to_model(model: pl.LightningModule, trainer_kwargs: MutableMapping[str, Any]) -> int:
    """Move ``accumulate_grad_batches`` from ``trainer_kwargs`` (in place) to a manually optimised
    GAN ``model``; returns the number of batches per optimizer step either way (default 1)."""
    accumulate = trainer_kwargs.get("accumulate_grad_batches", None)
    accumulate = 1 if accumulate is None else validate_accumulation(accumulate)
    if isinstance(model, ManualGANTraining):
        trainer_kwargs.pop("accumulate_grad_batches", None)
        model.accumulate_grad_batches = accumulate
    return accumulate


def added_callbacks(model: pl.LightningModule, callbacks: Sequence[pl.Callback],
                    signal_checkpoint: str) -> list[pl.Callback]:
    """The callbacks to append to ``callbacks`` for ``model`` (see the module docstring).

    Args:
        model: the LightningModule about to train.
        callbacks: the callbacks already configured.
        signal_checkpoint: where ``kill -USR1`` writes its checkpoint (upstream: ``<logdir>/checkpoints/last.ckpt``).
    """
    added: list[pl.Callback] = []
    if quantizers_in(model, trainable_only=True) and not any(isinstance(c, NormBoundCallback) for c in callbacks):
        print("The model contains an ArcQuantizer and lightning.callbacks has no NormBoundCallback: "
              "adding arcvq_plugin.NormBoundCallback() (the codebook norm bound needs it).")
        added.append(NormBoundCallback())
    if not any(isinstance(c, CheckpointOnSignal) for c in callbacks):
        added.append(CheckpointOnSignal(signal_checkpoint))
    if not any(isinstance(c, RandomStateCheckpoint) for c in callbacks):
        added.append(RandomStateCheckpoint())
    return added
