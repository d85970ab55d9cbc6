"""Reconstruct a dataset split with a trained tokenizer and score it (the ``arcvq-eval model`` path).

The model comes from a taming-style config (``model: {target, params}``) and a checkpoint (a
Lightning checkpoint or any dict with ``"state_dict"``, or a bare state dict); the data from the
same config's ``data:`` node (a LightningDataModule such as
``arcvq_plugin.data.module.DataModuleFromConfig``) and a split name. The model needs either
``encode(x) -> (z_q, loss, info)`` with ``decode(z_q) -> x_rec`` (taming ``VQModel``,
``arcvq_plugin.vqvae.VQVAE``) or ``forward(x) -> (x_rec, loss, info)``; ``info[2]`` holds the code
indices. Batches are taming examples (``{"image": (B, H, W, C)}``, read with the model's
``get_input`` when it has one) with pixels in ``value_range`` (default [-1, 1]); each batch is
checked against the model first (channels, a size it can take, finite pixels).
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.inference import build_inference_model, check_images
from arcvq_plugin.validation import check_choice, check_optional_int

__all__ = ["SPLIT_LOADERS", "build_config", "data_folders", "find_codebook_size", "load_model", "reconstruct",
           "split_loader"]

SPLIT_LOADERS = {"train": "train_dataloader", "validation": "val_dataloader", "test": "test_dataloader"}


def build_config(config_paths: Sequence[str], checkpoint: Mapping, dotlist: Iterable[str] = ()) -> DictConfig:
    """Merge ``config_paths`` (or the checkpoint's embedded ``"config"`` when none) and ``dotlist``."""
    if config_paths:
        config = load_configs(config_paths, dotlist)
    elif isinstance(checkpoint.get("config"), Mapping):
        config = OmegaConf.merge(OmegaConf.create(dict(checkpoint["config"])), OmegaConf.from_dotlist(list(dotlist)))
    else:
        raise ValueError("no config: pass --base CONFIG.yaml (the checkpoint carries no 'config' entry)")
    if "model" not in config:
        raise ValueError("the config has no 'model' node (target/params)")
    return config


def load_model(config: DictConfig, checkpoint: Mapping, *, keep_loss: bool = False,
               source: str = "the checkpoint") -> nn.Module:
    """``config.model`` with the checkpoint's weights (its ``"state_dict"``, or the dict itself),
    eval mode; the loss is ``nn.Identity`` unless ``keep_loss`` (see
    :func:`arcvq_plugin.inference.build_inference_model`: ``loss.*`` keys may differ, no other)."""
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{source} holds no state dict of tensors")
    return build_inference_model(config.model, state_dict, strict=True, keep_loss=keep_loss, source=source)


def data_folders(config: DictConfig) -> list[str]:
    """Every existing folder named by a string anywhere under ``config.data`` (the data it reads)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)
        elif isinstance(node, str) and node and os.path.isdir(node):
            found.append(node)

    if "data" in config:
        walk(OmegaConf.to_container(config.data, resolve=True))
    return found


def split_loader(config: DictConfig, split: str) -> Iterable:
    """The dataloader of ``split`` ('train', 'validation' or 'test') of ``config.data``."""
    check_choice("split", split, sorted(SPLIT_LOADERS))
    if "data" not in config:
        raise ValueError("the config has no 'data' node: cannot build the dataset split")
    data = instantiate_from_config(config.data)
    data.prepare_data()
    data.setup("fit" if split == "train" else split if split == "test" else "validate")
    datasets = getattr(data, "datasets", None)
    if isinstance(datasets, Mapping) and split not in datasets:
        raise ValueError(f"the data config has no {split!r} split (has {sorted(datasets)})")
    return getattr(data, SPLIT_LOADERS[split])()


def _model_input(model: nn.Module, batch: Any) -> torch.Tensor:
    get_input = getattr(model, "get_input", None)
    if callable(get_input):
        positional = [p for p in inspect.signature(get_input).parameters.values() if p.default is inspect.Parameter.empty]
        if len(positional) >= 2:  # taming: get_input(batch, k)
            return get_input(batch, getattr(model, "image_key", "image"))
        return get_input(batch)
    if isinstance(batch, Mapping):
        images = batch["image"]
        images = images[..., None] if images.dim() == 3 else images
        return images.permute(0, 3, 1, 2).float()
    if isinstance(batch, (list, tuple)):
        return batch[0].float()
    return batch.float()


def _reconstruct_batch(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None)):
        encoded = model.encode(x)
        if isinstance(encoded, tuple) and len(encoded) == 3:
            z_q, _, info = encoded
            x_rec = model.decode(z_q)
        else:
            x_rec, info = model(x)[0], None
    else:
        output = model(x)
        x_rec, info = (output[0], output[2] if len(output) > 2 else None) if isinstance(output, tuple) else (output, None)
    indices = info[2] if isinstance(info, tuple) and len(info) > 2 and isinstance(info[2], torch.Tensor) else None
    return x_rec, indices


def reconstruct(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    max_images: Optional[int] = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Run ``model`` over ``loader``; returns ``(real, fake, indices)``.

    real, fake: (N, C, H, W) float32 CPU in [0, 1] (mapped from ``value_range``, clamped);
    indices: flat int64 code indices, or None when the model does not return them.
    ``max_images`` (>= 1) stops after that many images.
    """
    low, high = map(float, value_range)
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    check_optional_int("max_images", max_images, minimum=1)
    model = model.to(device).eval()
    real, fake, codes = [], [], []
    count = 0
    with torch.no_grad():
        for index, batch in enumerate(loader):
            x = _model_input(model, batch).to(device)
            check_images(model, x, f"images of batch {index}")
            if max_images is not None:
                x = x[: max_images - count]
            x_rec, indices = _reconstruct_batch(model, x)
            real.append(((x - low) / (high - low)).clamp(0.0, 1.0).float().cpu())
            fake.append(((x_rec - low) / (high - low)).clamp(0.0, 1.0).float().cpu())
            codes.append(None if indices is None else indices.reshape(-1).long().cpu())
            count += x.shape[0]
            if max_images is not None and count >= max_images:
                break
    if not real:
        raise ValueError("the split yielded no images")
    indices = None if any(c is None for c in codes) else torch.cat(codes)
    return torch.cat(real), torch.cat(fake), indices


def find_codebook_size(model: nn.Module) -> Optional[int]:
    """``n_e`` of the model's quantiser (``model.quantize`` first, else the first module with ``n_e``)."""
    quantize = getattr(model, "quantize", None)
    if quantize is not None and isinstance(getattr(quantize, "n_e", None), int):
        return quantize.n_e
    for module in model.modules():
        if isinstance(getattr(module, "n_e", None), int):
            return module.n_e
    return None
