"""What conversion does to real images: tokens that change code, reconstruction PSNR before/after.

The original model (upstream ``VectorQuantizer2``: L2 nearest code) and the converted one
(``ArcQuantizer``: cosine nearest code, raw or unit-ball codebook) share encoder and decoder, so
both see the same latents ``h = quant_conv(encoder(x))``; only code selection and the code
vectors differ. PSNR is per image on [0, 1] images (data_range 1, reconstructions clamped), then
averaged, as the reference evaluation does with scikit-image.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..validation import check_int
from .checkpoint_io import ConversionError

__all__ = ["IMAGE_SUFFIXES", "load_image_folder", "compare_on_images", "reconstruct"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_image_folder(folder: str | os.PathLike, *, size: int, max_images: int) -> torch.Tensor:
    """Up to ``max_images`` images of ``folder`` (sorted by name), RGB, shorter side resized to
    ``size`` (bicubic), centre-cropped: a (N, 3, size, size) float32 tensor in [-1, 1]."""
    check_int("size", size, minimum=1)
    check_int("max_images", max_images, minimum=1)
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"--images {str(folder)!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:max_images]
    if not files:
        raise ConversionError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
    batch = []
    for path in files:
        batch.append(_load_image(path, size))
    return torch.stack(batch)


def _load_image(path: Path, size: int) -> torch.Tensor:
    """One image file as a (3, size, size) float32 tensor in [-1, 1]; ConversionError naming an unreadable file."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((width, height), Image.BICUBIC)
            left, top = (width - size) // 2, (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
            pixels = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise ConversionError(f"--images: cannot read the image file {str(path)!r} ({type(err).__name__}: {err}); "
                              "remove or replace it") from err
    return torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1)


@torch.no_grad()
def reconstruct(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(reconstructions (N, C, H, W), flat code indices (N*h*w,)) through ``model``'s own quantiser."""
    latents = model.quant_conv(model.encoder(images))
    quantized, _, (_, _, indices) = model.quantize(latents)
    return model.decoder(model.post_quant_conv(quantized)), indices.reshape(-1)


def _psnr(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    real01 = (real.clamp(-1, 1) + 1) / 2
    fake01 = (fake.clamp(-1, 1) + 1) / 2
    mse = ((real01 - fake01) ** 2).flatten(1).mean(dim=1).double().clamp_min(1e-20)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def compare_on_images(original: torch.nn.Module, converted: torch.nn.Module, images: torch.Tensor, *,
                      batch_size: int = 4) -> dict[str, Any]:
    """Token changes and PSNR of ``original`` vs ``converted`` on ``images`` (N, 3, H, W) in [-1, 1].

    Returns:
        dict: ``images``, ``tokens``, ``tokens_changed``, ``fraction_changed``, ``psnr_before``,
        ``psnr_after`` (mean dB), ``max_abs_reconstruction_difference`` and ``identical``
        (reconstructions bit-for-bit equal).
    """
    check_int("batch_size", batch_size, minimum=1)
    changed = total = 0
    psnr_before, psnr_after, max_diff, identical = [], [], 0.0, True
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        rec_before, codes_before = reconstruct(original, x)
        rec_after, codes_after = reconstruct(converted, x)
        changed += int((codes_before != codes_after).sum())
        total += codes_before.numel()
        psnr_before.append(_psnr(x, rec_before))
        psnr_after.append(_psnr(x, rec_after))
        max_diff = max(max_diff, float((rec_before - rec_after).abs().max()))
        identical = identical and torch.equal(rec_before, rec_after)
    return {
        "images": int(len(images)),
        "tokens": total,
        "tokens_changed": changed,
        "fraction_changed": changed / total,
        "psnr_before": float(torch.cat(psnr_before).mean()),
        "psnr_after": float(torch.cat(psnr_after).mean()),
        "max_abs_reconstruction_difference": max_diff,
        "identical": identical,
    }
