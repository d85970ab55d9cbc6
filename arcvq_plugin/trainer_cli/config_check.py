"""Checks of a merged training config, run before anything is built or trained.

Every error names the config path of the offending entry and, where it can, the closest valid
spelling:

- top-level keys other than ``model``, ``data``, ``lightning``; unknown keys of those sections;
- ``model``/``data``/callbacks/logger nodes without ``target``;
- any ``target`` (at any depth) that does not import;
- ``params`` keys that the target's ``__init__`` does not accept (unless it takes ``**kwargs``);
- ``params`` values of the wrong type where ``__init__`` annotates a plain type (``int``, ``float``,
  ``bool``, ``str``, optionally ``Optional``): ``n_embed: "1024"`` or ``arc_top_k: 2.5`` are
  errors here, before anything is built (the classes check the ranges themselves);
- ``params.ddconfig`` (the keyword arguments upstream passes to taming's / ldm's ``Encoder`` and
  ``Decoder``, which annotate nothing): a missing required key, or a value of the wrong type
  (``ch: "32"``, ``double_z: "False"``); types of keys with a default are those of the upstream
  defaults, the required ones are listed in ``DDCONFIG_REQUIRED``;
- ``lightning.trainer`` keys that pytorch-lightning 2.x's ``Trainer`` does not accept, with the
  replacement of the 1.x names taming/LDM configs used.
"""
from __future__ import annotations

import difflib
import inspect
import types
import typing
from typing import Any, Iterable, Mapping, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from arcvq_plugin.config import get_obj_from_str

__all__ = ["DDCONFIG_REQUIRED", "SECTION_KEYS", "ConfigError", "check_config", "check_ddconfig", "check_trainer_kwargs"]

SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("target", "params", "base_learning_rate"),
    "data": ("target", "params"),
    "lightning": ("trainer", "callbacks", "logger", "modelcheckpoint"),
}
REMOVED_TRAINER_KEYS: dict[str, str] = {
    "distributed_backend": "strategy (e.g. strategy: ddp)",
    "resume_from_checkpoint": "-r/--resume <logdir or checkpoint>",
    "checkpoint_callback": "enable_checkpointing",
    "weights_summary": "enable_model_summary",
    "progress_bar_refresh_rate": "enable_progress_bar, or a TQDMProgressBar(refresh_rate) callback",
    "terminate_on_nan": "detect_anomaly",
    "auto_select_gpus": "devices",
    "tpu_cores": "accelerator: tpu, devices: N",
    "ipus": "accelerator: ipu, devices: N",
    "num_processes": "accelerator: cpu, devices: N",
    "flush_logs_every_n_steps": "the logger's own flush settings",
    "replace_sampler_ddp": "use_distributed_sampler",
    "auto_lr_find": "pytorch_lightning.tuner.Tuner(trainer).lr_find(model)",
    "auto_scale_batch_size": "pytorch_lightning.tuner.Tuner(trainer).scale_batch_size(model)",
    "track_grad_norm": "a callback that logs pytorch_lightning.utilities.grad_norm",
    "amp_backend": "precision (e.g. 16-mixed)",
    "amp_level": "precision (e.g. 16-mixed)",
    "move_metrics_to_cpu": "nothing (removed)",
    "multiple_trainloader_mode": "a CombinedLoader",
    "prepare_data_per_node": "the datamodule attribute prepare_data_per_node",
}


# ddconfig keys upstream's Encoder / Decoder require (no default to take a type from): key -> type,
# ``list`` meaning a list of integers.
DDCONFIG_REQUIRED: dict[str, type] = {
    "ch": int, "out_ch": int, "num_res_blocks": int, "in_channels": int, "resolution": int, "z_channels": int,
    "ch_mult": list, "attn_resolutions": list,
}
UPSTREAM_AUTOENCODER_MODULES = ("taming.modules.diffusionmodules.model", "ldm.modules.diffusionmodules.model")


class ConfigError(ValueError):
    """A config entry that cannot work; the message names its path."""


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(path: str, node: Mapping, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in node:
        if key not in allowed:
            raise ConfigError(f"unknown config key {path + '.' if path else ''}{key}{_suggest(str(key), allowed)}; "
                              f"allowed here: {', '.join(allowed)}")


def _check_target(path: str, node: Any, required: bool) -> None:
    if not isinstance(node, (Mapping, DictConfig)):
        raise ConfigError(f"{path} must be a mapping with 'target' (a dotted class path) and 'params', got {node!r}")
    if "target" not in node:
        if required:
            raise ConfigError(f"{path} has no 'target' (a dotted class path such as "
                              f"'arcvq_plugin.taming.VQModel'); its keys are {sorted(node)}"
                              f"{_suggest('target', [str(k) for k in node])}")
        return
    target = node["target"]
    try:
        cls = get_obj_from_str(target)
    except ValueError as err:
        hint = ""
        if isinstance(target, str) and "." in target:
            module_name, _, attr = target.rpartition(".")
            try:
                module = __import__(module_name, fromlist=[attr])
                names = set(dir(module)) | set(getattr(module, "__all__", ()))
                hint = _suggest(attr, sorted(n for n in names if not n.startswith("_")))
            except ImportError:
                hint = ""
        raise ConfigError(f"{path}.target: {err}{hint}") from None
    params = node.get("params", None)
    if params is None:
        return
    if not isinstance(params, (Mapping, DictConfig)):
        raise ConfigError(f"{path}.params must be a mapping, got {params!r}")
    _check_params(f"{path}.params", target, cls, params)
    if "ddconfig" in params:
        check_ddconfig(f"{path}.params.ddconfig", params["ddconfig"])


def _check_params(path: str, target: str, cls: Any, params: Mapping) -> None:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in params:
        if key not in accepted:
            raise ConfigError(f"unknown config key {path}.{key}: {target} takes no parameter {key!r}"
                              f"{_suggest(str(key), accepted)}; it takes {', '.join(accepted)}")
    _check_param_types(path, target, cls, params)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _plain_types(hint: Any) -> Optional[tuple[type, ...]]:
    """The plain types a hint allows (``Optional[int]`` -> (int, NoneType)), or None when it is not
    made of int / float / bool / str / None only (then the value is not checked here)."""
    if hint in _TYPE_NAMES:
        return (hint,)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        allowed = tuple(typing.get_args(hint))
        return allowed if all(a in _TYPE_NAMES for a in allowed) else None
    return None


def _fits(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    return any(isinstance(value, t) for t in allowed)


def _check_param_types(path: str, target: str, cls: Any, params: Mapping) -> None:
    try:
        hints = typing.get_type_hints(cls.__init__ if inspect.isclass(cls) else cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: nothing to check against
        return
    values = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
    for key, value in values.items():
        allowed = _plain_types(hints.get(key))
        if allowed is not None and not _fits(value, allowed):
            wanted = " or ".join(_TYPE_NAMES[t] for t in allowed)
            raise ConfigError(f"{path}.{key}: {target} takes {wanted}, got {value!r} ({type(value).__name__})"
                              f"{'; remove the quotes' if isinstance(value, str) else ''}")


def _ddconfig_types() -> dict[str, type]:
    """key -> type of every ddconfig key: ``DDCONFIG_REQUIRED`` plus the type of each default of
    the upstream ``Encoder`` / ``Decoder`` that import (a tuple default: ``list``)."""
    types_ = dict(DDCONFIG_REQUIRED)
    for module_name in UPSTREAM_AUTOENCODER_MODULES:
        try:
            module = __import__(module_name, fromlist=["Encoder", "Decoder"])
        except ImportError:
            continue
        for cls in (module.Encoder, module.Decoder):
            for parameter in inspect.signature(cls).parameters.values():
                default = parameter.default
                if parameter.name not in types_ and default is not inspect.Parameter.empty:
                    types_[parameter.name] = list if isinstance(default, tuple) else type(default)
    return types_


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ddconfig(path: str, ddconfig: Any) -> None:
    """ConfigError naming ``path.<key>`` for a ddconfig that upstream's Encoder / Decoder would
    fail on deep inside torch: not a mapping, a required key missing, a value of the wrong type."""
    values = OmegaConf.to_container(ddconfig, resolve=True) if isinstance(ddconfig, (DictConfig, ListConfig)) \
        else ddconfig
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path} must be a mapping of the encoder / decoder settings, got {values!r}")
    missing = [key for key in DDCONFIG_REQUIRED if key not in values]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}: taming's / ldm's Encoder and Decoder require "
                          f"{', '.join(DDCONFIG_REQUIRED)}")
    for key, wanted in _ddconfig_types().items():
        if key not in values:
            continue
        value = values[key]
        if wanted is list:
            fits = isinstance(value, (list, tuple)) and all(_is_integer(v) for v in value)
            name = "a list of integers"
        elif wanted is float:
            fits = _is_integer(value) or isinstance(value, float)
            name = _TYPE_NAMES[float]
        elif wanted is int:
            fits = _is_integer(value)
            name = _TYPE_NAMES[int]
        else:
            fits = isinstance(value, wanted)
            name = _TYPE_NAMES.get(wanted, wanted.__name__)
        if not fits:
            raise ConfigError(f"{path}.{key} must be {name} (taming's / ldm's Encoder and Decoder take it so), "
                              f"got {value!r} ({type(value).__name__})"
                              f"{'; remove the quotes' if isinstance(value, str) else ''}")


def _walk_targets(path: str, node: Any) -> None:
    """Check every nested mapping that carries a ``target``."""
    if isinstance(node, (Mapping, DictConfig)):
        if "target" in node:
            _check_target(path, node, required=True)
        for key, value in node.items():
            _walk_targets(f"{path}.{key}", value)
    elif isinstance(node, (list, tuple, ListConfig)):
        for index, value in enumerate(node):
            _walk_targets(f"{path}[{index}]", value)


def check_trainer_kwargs(trainer_kwargs: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """Raise ConfigError for ``lightning.trainer`` keys pytorch-lightning 2.x does not take."""
    accepted = tuple(accepted)
    for key, value in trainer_kwargs.items():
        if key == "accelerator" and value in ("ddp", "ddp_spawn", "dp", "ddp2"):
            raise ConfigError(f"lightning.trainer.accelerator: {value!r} is a strategy in pytorch-lightning 2.x; "
                              f"use strategy: {value} (and accelerator: gpu or cpu)")
        if key in accepted:
            continue
        if key in REMOVED_TRAINER_KEYS:
            raise ConfigError(f"lightning.trainer.{key} was removed in pytorch-lightning 2.x; use "
                              f"{REMOVED_TRAINER_KEYS[key]}")
        raise ConfigError(f"unknown config key lightning.trainer.{key}{_suggest(key, accepted)}: "
                          "not an argument of pytorch_lightning.Trainer")


def check_config(config: DictConfig, *, default_callbacks: Iterable[str] = ()) -> None:
    """Validate a merged config (all sections, all targets) before anything is instantiated.

    Args:
        config: the merged config, ``lightning`` included.
        default_callbacks: names of the CLI's default callbacks, which ``lightning.callbacks`` may
            override without a ``target``.
    """
    default_callbacks = tuple(default_callbacks)
    _check_keys("", config, SECTION_KEYS)
    if "model" not in config:
        raise ConfigError("the config has no 'model' section (model: {target: ..., params: ...})")
    if "data" not in config:
        raise ConfigError("the config has no 'data' section (data: {target: ..., params: ...})")
    for section, allowed in SECTION_KEYS.items():
        node = config.get(section, None)
        if node is None:
            continue
        if not isinstance(node, DictConfig):
            raise ConfigError(f"section {section!r} must be a mapping, got {OmegaConf.to_yaml(node)!r}")
        _check_keys(section, node, allowed)
    _check_target("model", config.model, required=True)
    _check_target("data", config.data, required=True)
    lightning = config.get("lightning", None) or {}
    for name, node in (lightning.get("callbacks", None) or {}).items():
        _check_target(f"lightning.callbacks.{name}", node, required=name not in default_callbacks)
    for section in ("logger", "modelcheckpoint"):
        if lightning.get(section, None) is not None:
            _check_target(f"lightning.{section}", lightning[section], required=False)
    _walk_targets("model", config.model)
    _walk_targets("data", config.data)
