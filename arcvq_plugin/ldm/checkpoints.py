"""Build a trained model for inference from its training config(s) and a checkpoint.

Works for every model ``arcvq-train`` trains here: ``arcvq_plugin.ldm.LatentDiffusion`` (and
ldm's), ``arcvq_plugin.ldm.VQModel``/``VQModelInterface`` and ``arcvq_plugin.taming.VQModel``.
Before building, the config is changed so nothing but the checkpoint is read:

- ``model.params.ckpt_path`` and ``model.params.first_stage_config.params.ckpt_path`` (where
  present) are cleared (the checkpoint holds those weights already);
- a tokenizer's ``lossconfig`` becomes ``torch.nn.Identity`` (inference needs no LPIPS or
  discriminator, whose weights may be absent), and its ``loss.*`` weights are skipped.

Every other key of the checkpoint must match the model (strict), so a config that does not fit
the checkpoint is an error, not a half-loaded model.
"""
from __future__ import annotations

from typing import Sequence

import torch
from omegaconf import OmegaConf

from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.checkpoint_loading import load_state_dict

__all__ = ["load_for_inference"]

IDENTITY_LOSS = {"target": "torch.nn.Identity"}


def load_for_inference(config_paths: Sequence[str], ckpt_path: str, dotlist: Sequence[str] = (),
                       device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of ``config_paths`` (merged, then ``dotlist``) with ``ckpt_path``'s weights, in eval mode.

    Raises ValueError when the checkpoint's keys or shapes do not fit the model.
    """
    if not config_paths:
        raise ValueError("config_paths must name at least one config file (the run's project config)")
    config = load_configs(config_paths, dotlist)
    params = config.model.get("params", None)
    if params is None:
        params = config.model.params = OmegaConf.create({})
    if "ckpt_path" in params:
        params.ckpt_path = None
    if "first_stage_config" in params and params.first_stage_config.get("params", None) is not None:
        params.first_stage_config.params.ckpt_path = None
    skipped_prefixes: tuple[str, ...] = ()
    if "lossconfig" in params:
        params.lossconfig = IDENTITY_LOSS
        skipped_prefixes = ("loss.",)
    model = instantiate_from_config(config.model)
    state = load_state_dict(ckpt_path)
    state = {k: v for k, v in state.items() if not k.startswith(skipped_prefixes)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{ckpt_path} does not fit the model of {list(config_paths)}: {err}") from err
    return model.to(device).eval()
