"""Build a trained model for inference: its config, its checkpoint's weights, no training loss.

The one builder behind ``arcvq-sample-ldm`` / ``arcvq-tokens`` (``ldm.checkpoints.load_for_inference``),
``arcvq-eval model`` (``evaluation.model_eval.load_model``) and ``arcvq-convert``
(``convert.model_config.build_vq_model``). Before the model is built, its config node is changed
so that nothing but the given weights is read:

- ``params.ckpt_path`` and ``params.first_stage_config.params.ckpt_path`` are cleared (the weights
  are given; a LatentDiffusion's checkpoint holds its first stage);
- ``params.lossconfig`` becomes ``torch.nn.Identity`` unless ``keep_loss`` (inference needs no
  LPIPS or discriminator, whose weights may be absent).

``loss.*`` entries never count as a mismatch: they are training state. Every other entry must fit
(``strict=True``), or at least every entry present on both sides must have the model's shape
(``strict=False``); otherwise :class:`CheckpointMismatch` names the source and the keys.

:func:`check_images` refuses images a built model cannot take (channels, size, NaN/inf pixels)
with a message that says what the model takes, before they reach it;
:func:`check_dataset_images` does so for the first example of each split of a training run's data.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional

import numpy as np
import torch
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch import nn

from arcvq_plugin.config import instantiate_from_config
from arcvq_plugin.quantizer import is_schedule_state_key

__all__ = ["IDENTITY_LOSS", "LOSS_PREFIX", "CheckpointMismatch", "build_inference_model", "check_dataset_images",
           "check_images", "encoder_input", "inference_config"]

IDENTITY_LOSS = {"target": "torch.nn.Identity"}
LOSS_PREFIX = "loss."
MAX_LISTED = 8


class CheckpointMismatch(ValueError):
    """A checkpoint's tensors do not fit the model its config builds (another architecture?)."""


def inference_config(model_node: Mapping | DictConfig, *, keep_loss: bool = False) -> dict[str, Any]:
    """A plain-dict copy of ``model_node`` ({target, params}) with ``ckpt_path`` entries cleared
    and, unless ``keep_loss``, ``params.lossconfig`` replaced by ``torch.nn.Identity``."""
    node = OmegaConf.to_container(model_node, resolve=True) if isinstance(model_node, DictConfig) \
        else copy.deepcopy(dict(model_node))
    if not isinstance(node, dict) or "target" not in node:
        raise ValueError(f"the model config must be a mapping with 'target' (and 'params'), got {model_node!r}")
    params = dict(node.get("params") or {})
    if "ckpt_path" in params:
        params["ckpt_path"] = None
    first_stage = params.get("first_stage_config")
    if isinstance(first_stage, dict) and isinstance(first_stage.get("params"), dict) \
            and "ckpt_path" in first_stage["params"]:
        first_stage["params"]["ckpt_path"] = None
    if "lossconfig" in params and not keep_loss:
        params["lossconfig"] = dict(IDENTITY_LOSS)
    node["params"] = params
    return node


def _listing(title: str, items: list[str]) -> str:
    more = f"; ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): {'; '.join(items[:MAX_LISTED])}{more}"


def build_inference_model(model_node: Mapping | DictConfig, state_dict: Mapping[str, torch.Tensor], *,
                          strict: bool = True, keep_loss: bool = False, source: str = "the checkpoint") -> nn.Module:
    """The model of ``model_node`` with ``state_dict``'s weights, in eval mode.

    Args:
        model_node: ``{target, params}`` of the model (see :func:`inference_config`).
        state_dict: name -> tensor (``loss.*`` entries are skipped unless ``keep_loss``).
        strict: True (default): every non-``loss.*`` key of the model must be in ``state_dict``
            and vice versa (except an ArcQuantizer's schedule-horizon buffers, training state). False: keys on one side only are left as they are (built weights,
            ignored entries). Shapes must fit either way.
        keep_loss: build ``params.lossconfig`` as configured and load its weights where present.
        source: how error messages name ``state_dict`` (e.g. its file).

    Raises:
        CheckpointMismatch: a shape that does not fit, or (strict) keys missing or unexpected.
    """
    model = instantiate_from_config(inference_config(model_node, keep_loss=keep_loss))
    state = {k: v for k, v in state_dict.items() if keep_loss or not k.startswith(LOSS_PREFIX)}
    expected = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in state and not k.startswith(LOSS_PREFIX)
               and not is_schedule_state_key(k)]
    unexpected = [k for k in state if k not in expected and not k.startswith(LOSS_PREFIX)
                  and not is_schedule_state_key(k)]
    if mismatched or (strict and (missing or unexpected)):
        message = f"{source} does not fit the model {model_node.get('target')} (another architecture?):"
        if mismatched:
            message += _listing("shape mismatch", mismatched)
        if strict and missing:
            message += _listing("missing in checkpoint", missing)
        if strict and unexpected:
            message += _listing("unexpected in checkpoint", unexpected)
        raise CheckpointMismatch(message)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return model.eval()


def encoder_input(model: nn.Module) -> Optional[tuple[int, int]]:
    """``(channels, multiple)``: the image channels the encoder of ``model`` (``model.encoder``, or
    the model itself) takes, and the number its image sides must be a multiple of (the product of
    its convolutions' strides: 2 ** (len(ch_mult) - 1) for taming / ldm, 4 for the VQ-VAE); None
    for a model without convolutions."""
    encoder = getattr(model, "encoder", model)
    convolutions = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        return None
    multiple = 1
    for convolution in convolutions:
        multiple *= convolution.stride[0]
    return convolutions[0].in_channels, multiple


def _channels_name(channels: int) -> str:
    return {1: "1 (grayscale)", 3: "3 (RGB)"}.get(channels, str(channels))


def check_images(model: nn.Module, images: torch.Tensor, what: str = "images") -> None:
    """ValueError naming ``what`` unless ``images`` (B, C, H, W) have the channels of ``model``'s
    encoder, sides that are a multiple of its downsampling (see :func:`encoder_input`), and only
    finite pixels."""
    if images.ndim != 4:
        raise ValueError(f"{what} must be a batch (B, C, H, W), got shape {tuple(images.shape)}")
    channels, multiple = encoder_input(model) or (images.shape[1], 1)
    if images.shape[1] != channels:
        raise ValueError(f"{what} have {_channels_name(images.shape[1])} channels but the model takes "
                         f"{_channels_name(channels)}: convert the images (e.g. the dataset's channels "
                         "option) or use a model trained on such images")
    height, width = images.shape[2:]
    if height % multiple or width % multiple:
        raise ValueError(f"{what} are {height}x{width} pixels, but the model takes sides that are "
                         f"multiples of {multiple} (its downsampling factor): resize or crop them")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{what} hold NaN or inf pixels: the model takes finite values (in [-1, 1])")


def check_dataset_images(model: nn.Module, datasets: Mapping[str, Any]) -> None:
    """ValueError naming the split (and file, where the example says) unless the first example of
    every split of ``datasets`` fits ``model``'s encoder (see :func:`check_images`).

    The image is the example's ``model.image_key`` (taming) or ``first_stage_key`` (LDM) entry,
    default ``"image"``, (H, W, C) as taming's datasets return it. An LDM's first stage
    (``model.first_stage_model``) is the encoder checked. A dataset with ``file_sizes``
    ({path: (width, height)}, as :class:`arcvq_plugin.data.image_folder.ImageFolder` without
    ``size`` has) gets every file's size checked. Splits whose examples are not such mappings, and
    models without an ``encoder``, are not checked.
    """
    autoencoder = getattr(model, "first_stage_model", model)
    if not isinstance(getattr(autoencoder, "encoder", None), nn.Module):
        return
    key = getattr(model, "image_key", None) or getattr(model, "first_stage_key", None) or "image"
    for split, dataset in datasets.items():
        if len(dataset) == 0:
            continue
        example = dataset[0]
        if not isinstance(example, Mapping) or not isinstance(example.get(key), (torch.Tensor, np.ndarray)):
            continue
        image = torch.as_tensor(np.asarray(example[key]), dtype=torch.float32)
        if image.ndim != 3:
            raise ValueError(f"data.{split}: example 0's {key!r} must be an (H, W, C) image, got shape "
                             f"{tuple(image.shape)}")
        source = f" ({example['file_path_']})" if "file_path_" in example else ""
        check_images(autoencoder, rearrange(image, "h w c -> 1 c h w"), what=f"data.{split} images{source}")
        _check_file_sizes(autoencoder, split, getattr(dataset, "file_sizes", None))


def _check_file_sizes(model: nn.Module, split: str, file_sizes: Optional[Mapping[Any, tuple[int, int]]]) -> None:
    """ValueError naming the first file whose (width, height) is not a multiple of the downsampling."""
    if not file_sizes:
        return
    _, multiple = encoder_input(model) or (None, 1)
    for path, (width, height) in file_sizes.items():
        if width % multiple or height % multiple:
            raise ValueError(f"data.{split}: image file {str(path)!r} is {width}x{height} pixels, but the model "
                             f"takes sides that are multiples of {multiple} (its downsampling factor): resize or "
                             "crop it, or set the dataset's size option")
