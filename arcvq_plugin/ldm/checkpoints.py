"""Build a trained model for inference from its training config(s) and a checkpoint.

Works for every model ``arcvq-train`` trains here: ``arcvq_plugin.ldm.LatentDiffusion`` (and
ldm's), ``arcvq_plugin.ldm.VQModel``/``VQModelInterface`` and ``arcvq_plugin.taming.VQModel``.
The config's ``ckpt_path`` entries are cleared and its ``lossconfig`` becomes ``torch.nn.Identity``
(:func:`arcvq_plugin.inference.build_inference_model`); every key of the checkpoint but the loss's
must match the model (strict), so a config that does not fit the checkpoint is an error, not a
half-loaded model.
"""
from __future__ import annotations

from typing import Sequence

import torch

from arcvq_plugin.checkpoint_loading import load_state_dict
from arcvq_plugin.config import load_configs
from arcvq_plugin.inference import build_inference_model

__all__ = ["load_for_inference"]


def load_for_inference(config_paths: Sequence[str], ckpt_path: str, dotlist: Sequence[str] = (),
                       device: str | torch.device = "cpu", trust_checkpoint: bool = False) -> torch.nn.Module:
    """The model of ``config_paths`` (merged, then ``dotlist``) with ``ckpt_path``'s weights, in eval mode.

    ``trust_checkpoint`` (default False): see :func:`arcvq_plugin.checkpoint_loading.load_checkpoint`.

    Raises ValueError (``CheckpointReadError``, ``CheckpointMismatch``) when the checkpoint cannot
    be read or its keys or shapes do not fit the model.
    """
    if not config_paths:
        raise ValueError("config_paths must name at least one config file (the run's project config)")
    config = load_configs(config_paths, dotlist)
    if "model" not in config:
        raise ValueError(f"{list(config_paths)} have no 'model' node (target/params)")
    state = load_state_dict(ckpt_path, trust_checkpoint)
    model = build_inference_model(config.model, state, strict=True,
                                  source=f"checkpoint {ckpt_path} (config {list(config_paths)})")
    return model.to(device)
