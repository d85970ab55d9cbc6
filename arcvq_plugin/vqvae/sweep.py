"""``--sweep key=v1,v2,...``: one table row per value of a model or quantiser parameter.

``key`` is either a ``VQVAE`` argument (``embed_dim``, ``n_embed``, ...; set as
``model.params.<key>``) or an argument of the row's quantiser (``arc_top_k``, ``arc_m``,
``arc_s``, ``bbnr_alpha``, ...; set as ``model.params.quantizer_config.params.<key>``). Values
are parsed as YAML scalars (``3`` int, ``0.5`` float, ``true`` bool). The sweep's rows are named
``<row>.<key>=<value>`` (e.g. ``arcvq.arc_top_k=8``).
"""
from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from arcvq_plugin.config import get_obj_from_str
from arcvq_plugin.vqvae.model import VQVAE

__all__ = ["Sweep", "configured_value", "parse_sweep", "sweep_override", "variant_name"]

MODEL_KEYS_NOT_SWEEPABLE = ("quantizer_config", "image_key", "monitor")


@dataclass(frozen=True)
class Sweep:
    """A parameter and the values it takes, one table row each."""

    key: str
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return f"sweep_{self.key}"


def _model_keys() -> list[str]:
    return [k for k in inspect.signature(VQVAE).parameters if k not in MODEL_KEYS_NOT_SWEEPABLE]


def parse_sweep(text: str) -> Sweep:
    """``"key=v1,v2"`` -> Sweep (argparse ``type``); the key is checked against each row in :func:`sweep_override`."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise argparse.ArgumentTypeError(f"--sweep must look like key=v1,v2,... (e.g. arc_top_k=1,3,8), got {text!r}")
    parsed = []
    for item in values.split(","):
        item = item.strip()
        if not item:
            raise argparse.ArgumentTypeError(f"--sweep {text!r} has an empty value")
        value = yaml.safe_load(item)
        if not isinstance(value, (bool, int, float, str)):
            raise argparse.ArgumentTypeError(f"--sweep {key}: {item!r} is not a scalar")
        parsed.append(value)
    if len(set(map(repr, parsed))) != len(parsed):
        raise argparse.ArgumentTypeError(f"--sweep {key}: values repeat ({values})")
    return Sweep(key, tuple(parsed))


def _locate(sweep_key: str, model_config: Mapping) -> tuple[str, Mapping, Any]:
    """(dotted path under ``model``, the config node holding the key, the class whose argument it is)."""
    params = model_config.get("params") or {}
    if sweep_key in _model_keys():
        return "params", params, VQVAE
    quantizer = params.get("quantizer_config")
    target = quantizer.get("target") if quantizer is not None else "taming.modules.vqvae.quantize.VectorQuantizer2"
    cls = get_obj_from_str(target)
    quantizer_keys = [k for k in inspect.signature(cls).parameters if k not in ("n_e", "e_dim")]
    if sweep_key in quantizer_keys:
        return "params.quantizer_config.params", (quantizer or {}).get("params") or {}, cls
    raise ValueError(f"--sweep {sweep_key}: not a parameter of this row's model (VQVAE: {', '.join(_model_keys())}) "
                     f"or of its quantiser {target} ({', '.join(quantizer_keys)})")


def sweep_override(sweep_key: str, value: Any, model_config: Mapping) -> str:
    """The dotlist entry that sets ``sweep_key`` to ``value`` in a row's ``model`` config.

    Raises ValueError naming the key and what it may be when it is neither a VQVAE argument nor
    an argument of the row's quantiser.
    """
    path, _, _ = _locate(sweep_key, model_config)
    return f"model.{path}.{sweep_key}={value}"


def configured_value(sweep_key: str, model_config: Mapping) -> Any:
    """The value ``sweep_key`` has in a row's ``model`` config (its class default when the config omits it)."""
    _, node, cls = _locate(sweep_key, model_config)
    if sweep_key in node:
        return node[sweep_key]
    return inspect.signature(cls).parameters[sweep_key].default


def variant_name(row: str, sweep_key: str, value: Any) -> str:
    """``arcvq.arc_top_k=8``."""
    return f"{row}.{sweep_key}={value}"
