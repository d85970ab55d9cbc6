"""PSNR and SSIM as the ArcVQ-VAE reference evaluation computes them (scikit-image).

The reference (goals4292/ArcVQ-VAE ``evaluation.py``) reads 8-bit PNGs as float images in [0, 1]
and calls ``peak_signal_noise_ratio(gt, test, data_range=1)`` and
``structural_similarity(gt, test, channel_axis=-1, data_range=1, win_size=11)`` once per image,
then averages over images. Grayscale images are read as RGB there; the channel mean of three equal
channels equals the single-channel value, so (N, 1, H, W) input is scored directly.
"""
from __future__ import annotations

import numpy as np
import torch

from arcvq_plugin.extras import require_extra

require_extra("eval", "skimage")
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["check_image_batch", "quantize_8bit", "per_image_psnr", "per_image_ssim"]

REFERENCE_SSIM_WIN_SIZE = 11


def check_image_batch(real: torch.Tensor, fake: torch.Tensor) -> None:
    """Validate a pair of image batches: same shape (N, C, H, W), C in {1, 3}, N >= 1, finite."""
    for name, images in (("real", real), ("fake", fake)):
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor (N, C, H, W), got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
            raise ValueError(f"{name} must have shape (N>=1, C in {{1, 3}}, H, W), got {tuple(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"{name} contains NaN or inf")
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}")


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round float images to the 256 levels a PNG round trip keeps: ``round(clamp(x,0,1)*255)/255``."""
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0


def _as_hwc_numpy(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor -> (N, H, W, C) float64 numpy array."""
    return images.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()


def per_image_psnr(real: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    """(N,) PSNR in dB of each image pair, ``data_range=1`` (identical images give inf)."""
    check_image_batch(real, fake)
    real_np, fake_np = _as_hwc_numpy(real), _as_hwc_numpy(fake)
    with np.errstate(divide="ignore"):
        return np.array([peak_signal_noise_ratio(r, f, data_range=1) for r, f in zip(real_np, fake_np)])


def per_image_ssim(real: torch.Tensor, fake: torch.Tensor, win_size: int = REFERENCE_SSIM_WIN_SIZE) -> np.ndarray:
    """(N,) SSIM of each image pair, ``data_range=1``, uniform window ``win_size`` (odd, 3..min(H, W)).

    Default 11 as the reference; images smaller than the window need a smaller ``win_size``.
    """
    check_image_batch(real, fake)
    height, width = real.shape[-2:]
    if win_size < 3 or win_size % 2 == 0 or win_size > min(height, width):
        raise ValueError(f"win_size must be odd and in [3, min(H, W)={min(height, width)}], got {win_size}")
    real_np, fake_np = _as_hwc_numpy(real), _as_hwc_numpy(fake)
    return np.array(
        [
            structural_similarity(r, f, channel_axis=-1, data_range=1, win_size=win_size)
            for r, f in zip(real_np, fake_np)
        ]
    )
