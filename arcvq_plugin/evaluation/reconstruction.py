"""The paper's reconstruction metrics for two aligned image batches: PSNR, SSIM, LPIPS, rFID."""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

from arcvq_plugin.evaluation.image_metrics import (
    REFERENCE_SSIM_WIN_SIZE,
    check_image_batch,
    per_image_psnr,
    per_image_ssim,
    quantize_8bit,
)
from arcvq_plugin.devices import resolve_device
from arcvq_plugin.evaluation.perceptual import MetricUnavailable, lpips_distances, rfid
from arcvq_plugin.evaluation.weight_cache import describe_weights, inception_weights_path, substitute_entry, vgg16_weights_path
from arcvq_plugin.validation import check_int

__all__ = ["reconstruction_metrics", "default_device"]


def default_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``device`` as a torch.device; None picks CUDA when available, else CPU
    (:func:`arcvq_plugin.devices.resolve_device`)."""
    return resolve_device(device, what="device")


def reconstruction_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    lpips: bool = True,
    fid: bool = True,
    device: Union[str, torch.device, None] = None,
    batch_size: int = 50,
    quantize: bool = True,
    ssim_win_size: int = REFERENCE_SSIM_WIN_SIZE,
    allow_download: bool = False,
) -> dict:
    """PSNR, SSIM, LPIPS and rFID of reconstructions ``fake`` against originals ``real``.

    PSNR and SSIM are scikit-image's with ``data_range=1`` per image pair, averaged over images (the
    reference evaluation); LPIPS is ``lpips.LPIPS(net='vgg')`` averaged over images; rFID is
    torch-fidelity's FID between the two sets. Grayscale is repeated to RGB for LPIPS and rFID.

    Args:
        real, fake: (N, C, H, W) float tensors in [0, 1] (values outside are clamped), C in {1, 3}.
        lpips, fid: compute those metrics (a metric not computed is None, with a reason).
        device: where LPIPS and rFID networks run (default: CUDA if available, else CPU).
        batch_size: images per network forward (>= 1), default 50 as the reference's FID.
        quantize: round both sets to 8 bits first, as the reference's PNG round trip does
            (default True).
        ssim_win_size: SSIM window, odd, <= min(H, W) (default 11 as the reference).
        allow_download: let lpips / torch-fidelity download missing original weights.

    Returns:
        ``{"n_images", "image_shape", "psnr", "ssim", "lpips", "rfid", "unavailable": {metric: reason},
        "weights": {metric: provenance}, "substitute_weights": bool}`` plus ``"note"`` when a
        metric was computed with substitute weights. Metric values are floats or None.
    """
    check_image_batch(real, fake)
    check_int("batch_size", batch_size, minimum=1)
    real = real.detach().float().clamp(0.0, 1.0)
    fake = fake.detach().float().clamp(0.0, 1.0)
    if quantize:
        real, fake = quantize_8bit(real), quantize_8bit(fake)
    device = default_device(device)
    result: dict = {
        "n_images": int(real.shape[0]),
        "image_shape": list(real.shape[1:]),
        "psnr": float(np.mean(per_image_psnr(real, fake))),
        "ssim": float(np.mean(per_image_ssim(real, fake, win_size=ssim_win_size))),
        "lpips": None,
        "rfid": None,
        "unavailable": {},
        "weights": {},
        "substitute_weights": False,
    }
    perceptual = (
        ("lpips", lpips, vgg16_weights_path, lambda: float(np.mean(lpips_distances(real, fake, device=device, batch_size=batch_size, allow_download=allow_download)))),
        ("rfid", fid, inception_weights_path, lambda: rfid(real, fake, device=device, batch_size=batch_size, allow_download=allow_download)),
    )
    for name, wanted, weights_path, compute in perceptual:
        if not wanted:
            result["unavailable"][name] = "not requested"
            continue
        try:
            result[name] = compute()
        except MetricUnavailable as err:
            result["unavailable"][name] = str(err)
            continue
        path = weights_path()
        if path.is_file():
            result["weights"][name] = describe_weights(path)
            result["substitute_weights"] |= substitute_entry(path) is not None
    if result["substitute_weights"]:
        result["note"] = (
            "substitute weights: LPIPS/rFID were computed with networks rebuilt offline by "
            "arcvq-install-metric-weights; compare them only with numbers made the same way"
        )
    return result
