"""taming/LDM-style ``target``/``params`` configs: load, merge and instantiate.

A config node reads like taming's::

    target: arcvq_plugin.ArcQuantizer
    params:
      n_e: 1024
      e_dim: 16

``instantiate_from_config`` keeps taming's name and contract, and fails with a message that
names the offending key instead of a bare ``KeyError`` or ``AttributeError``.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

__all__ = ["get_obj_from_str", "instantiate_from_config", "load_configs"]


def get_obj_from_str(target: str) -> Any:
    """Import ``"package.module.Name"`` and return ``Name``; ValueError on anything else."""
    if not isinstance(target, str) or "." not in target:
        raise ValueError(f"target must be a dotted path 'package.module.Name', got {target!r}")
    module_name, _, attr = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"target {target!r}: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"target {target!r}: module {module_name!r} has no attribute {attr!r}") from None


def instantiate_from_config(config: Mapping | DictConfig, **extra: Any) -> Any:
    """Build ``target(**params, **extra)`` from a config node.

    Args:
        config: a mapping with ``target`` (dotted path) and optional ``params`` (mapping).
        extra: keyword arguments added to ``params`` (they win on a clash).
    """
    if not isinstance(config, (Mapping, DictConfig)) or "target" not in config:
        raise ValueError(f"expected a config with a 'target' key (a dotted class path), got {config!r}")
    params = config.get("params", None) or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    if not isinstance(params, Mapping):
        raise ValueError(f"'params' of target {config['target']!r} must be a mapping, got {params!r}")
    cls = get_obj_from_str(config["target"])
    try:
        return cls(**{**params, **extra})
    except TypeError as err:
        raise TypeError(f"could not build {config['target']} from params {sorted(params)}: {err}") from err


def load_configs(paths: Iterable[str], dotlist: Iterable[str] = ()) -> DictConfig:
    """Merge yaml files left to right, then ``key.sub=value`` overrides (taming's ``--base``)."""
    configs = [OmegaConf.load(p) for p in paths]
    configs.append(OmegaConf.from_dotlist(list(dotlist)))
    return OmegaConf.merge(*configs)
