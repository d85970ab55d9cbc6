"""Build a model's quantiser from its ``quantizer_config`` (taming's ``target``/``params``).

Shared by every model with a ``quantizer_config`` (``arcvq_plugin.taming.VQModel``,
``arcvq_plugin.ldm.VQModel``, ``arcvq_plugin.vqvae.VQVAE``): the codebook size and dimension (and
taming's ``remap`` / ``sane_index_shape``) come from the model's own arguments, so a config block
only states what differs from the model.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from omegaconf import DictConfig, OmegaConf
from torch import nn

from arcvq_plugin.config import instantiate_from_config

__all__ = ["build_quantizer", "plain_config"]

_FILLED_FROM_MODEL = {"n_e": "n_embed", "e_dim": "embed_dim", "remap": "remap",
                      "sane_index_shape": "sane_index_shape"}


def plain_config(node: Any, name: str) -> dict:
    """``node`` ({target, params}) as a plain dict with a ``params`` dict; ValueError naming ``name``."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping) or "target" not in node:
        raise ValueError(f"{name} must be a mapping with 'target' (and optional 'params'), got {node!r}")
    params = node.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{name}.params must be a mapping, got {params!r}")
    return {"target": node["target"], "params": dict(params)}


def build_quantizer(quantizer_config: Mapping | DictConfig, n_embed: int, embed_dim: int,
                    remap: Optional[str] = None, sane_index_shape: bool = False) -> nn.Module:
    """Instantiate ``quantizer_config`` with ``n_e``, ``e_dim``, ``remap``, ``sane_index_shape``
    filled from the model's arguments; a value given in both places that differs is a ValueError."""
    config = plain_config(quantizer_config, "quantizer_config")
    model_values = {"n_embed": n_embed, "embed_dim": embed_dim, "remap": remap,
                    "sane_index_shape": sane_index_shape}
    for param, model_arg in _FILLED_FROM_MODEL.items():
        value = model_values[model_arg]
        if param in config["params"] and config["params"][param] != value:
            raise ValueError(
                f"quantizer_config.params.{param}={config['params'][param]!r} disagrees with the "
                f"model's {model_arg}={value!r}: drop it from quantizer_config (it is filled from "
                "the model) or make both equal")
        config["params"][param] = value
    return instantiate_from_config(config)
