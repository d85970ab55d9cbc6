"""The yaml written beside a converted checkpoint, and building models from it.

Three shapes, all taming-style ``target``/``params``:

* standalone taming / ldm first stage: a full ``model:`` block (``arcvq_plugin.taming.VQModel``
  or ``arcvq_plugin.ldm.VQModel``) with ``ddconfig``, ``lossconfig``, ``n_embed``, ``embed_dim``,
  ``quantizer_config`` and ``ckpt_path`` (the converted checkpoint);
* full LatentDiffusion checkpoint converted in place: an override to merge after the user's own
  LDM config (``--base ldm.yaml converted.yaml``): ``model.params.first_stage_config`` becomes
  ``arcvq_plugin.ldm.VQModelInterface`` with the ArcQuantizer, ``model.params.ckpt_path`` the
  converted checkpoint. UNet, conditioning and schedule settings cannot be read from weights.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from ..inference import CheckpointMismatch, build_inference_model
from ..schedules import IMAGENET_REFERENCE_HORIZON
from .checkpoint_io import ConversionError
from .layout import VQLayout

__all__ = ["MODEL_TARGETS", "quantizer_config", "model_config", "vq_model_node", "build_vq_model"]

MODEL_TARGETS = {
    "taming": "arcvq_plugin.taming.VQModel",
    "ldm": "arcvq_plugin.ldm.VQModel",
    "ldm-first-stage": "arcvq_plugin.ldm.VQModelInterface",
}
BASE_LEARNING_RATE = 4.5e-6


def quantizer_config(layout: VQLayout, *, bbnr_alpha: float, arc_gamma: float, arc_gamma_decay: float,
                     schedule_reference_horizon: int = IMAGENET_REFERENCE_HORIZON) -> dict[str, Any]:
    """ArcQuantizer block for ``layout`` (other ArcQuantizer arguments keep their defaults; the
    reference horizon is the paper's ImageNet run, whose rates are the converter's defaults)."""
    return {
        "target": "arcvq_plugin.ArcQuantizer",
        "params": {
            "n_e": layout.n_embed, "e_dim": layout.embed_dim, "beta": 0.25,
            "use_bbnr": True, "use_arc_loss": True, "bbnr_alpha": bbnr_alpha,
            "arc_gamma": arc_gamma, "arc_gamma_decay": arc_gamma_decay,
            "schedule_reference_horizon": schedule_reference_horizon,
        },
    }


def model_config(layout: VQLayout, quantizer: Mapping[str, Any], *, ckpt_path: str, in_place_ldm: bool) -> dict[str, Any]:
    """The yaml content (a plain dict) for a converted checkpoint at ``ckpt_path``.

    Args:
        layout: the detected layout.
        quantizer: ``quantizer_config(...)``.
        ckpt_path: where the converted checkpoint will live (written as ``ckpt_path``).
        in_place_ldm: the output is the whole LatentDiffusion checkpoint (override yaml) rather than
            a standalone first stage.
    """
    params: dict[str, Any] = {
        "embed_dim": layout.embed_dim,
        "n_embed": layout.n_embed,
        "ddconfig": copy.deepcopy(layout.ddconfig),
        "lossconfig": {"target": "torch.nn.Identity"} if in_place_ldm else copy.deepcopy(layout.lossconfig),
        "quantizer_config": copy.deepcopy(dict(quantizer)),
    }
    if layout.colorize_nlabels is not None:
        params["colorize_nlabels"] = layout.colorize_nlabels
    if in_place_ldm:
        return {"model": {"params": {"ckpt_path": ckpt_path,
                                     "first_stage_config": {"target": MODEL_TARGETS["ldm-first-stage"], "params": params}}}}
    params["ckpt_path"] = ckpt_path
    return {"model": {"base_learning_rate": BASE_LEARNING_RATE, "target": MODEL_TARGETS[layout.family], "params": params}}


def vq_model_node(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``target``/``params`` node of the VQ model inside a ``model_config`` result."""
    model = config["model"]
    return copy.deepcopy(dict(model["params"]["first_stage_config"] if "first_stage_config" in model["params"] else model))


def build_vq_model(node: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *, arcvq: bool = True) -> torch.nn.Module:
    """Instantiate ``node`` without its loss (torch.nn.Identity) and ckpt_path, load ``state_dict``, eval mode
    (:func:`arcvq_plugin.inference.build_inference_model`, strict).

    Args:
        node: a ``vq_model_node`` result.
        state_dict: the VQ model's tensors (prefix stripped); ``loss.*`` entries are ignored.
        arcvq: False drops ``quantizer_config``: the upstream VectorQuantizer2 baseline (the
            ``quantize.clock`` entry is then ignored too).

    Raises:
        ConversionError: keys the model lacks or expects (other than the loss's), or shapes that differ.
    """
    node = copy.deepcopy(dict(node))
    node["params"] = dict(node["params"])
    if not arcvq:
        node["params"].pop("quantizer_config", None)
    wanted = {k: v for k, v in state_dict.items() if arcvq or k != "quantize.clock"}
    try:
        return build_inference_model(node, wanted, strict=True, source="the checkpoint's VQ model")
    except CheckpointMismatch as err:
        raise ConversionError(f"{err} (model built from the detected layout)") from err
