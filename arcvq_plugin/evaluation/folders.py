"""Image folders: read them as aligned batches, write batches as PNGs, evaluate two folders."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from arcvq_plugin.atomic_outputs import StagedFolder
from arcvq_plugin.evaluation.reconstruction import reconstruction_metrics

__all__ = ["IMAGE_SUFFIXES", "list_images", "load_image_folder", "save_image_folder", "evaluate_folders"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: os.PathLike) -> list[str]:
    """Sorted file names (not recursive) of the images in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist or is not a directory")
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(folder: os.PathLike, names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Images of ``folder`` (or just ``names``) as an (N, 3, H, W) float32 tensor in [0, 1].

    Every image is converted to RGB as the reference evaluation does; all must share one size.
    """
    folder = Path(folder)
    names = list_images(folder) if names is None else list(names)
    if not names:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    arrays = []
    for name in names:
        with Image.open(folder / name) as image:
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(f"{folder / name} is {arrays[-1].shape[:2]}, {folder / names[0]} is {arrays[0].shape[:2]}: sizes differ")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def save_image_folder(images: torch.Tensor, folder: os.PathLike, *, prefix: str = "", overwrite: bool = False) -> list[Path]:
    """Write (N, C, H, W) images in [0, 1] (C in {1, 3}) as 8-bit PNGs ``{prefix}{i:06d}.png``.

    Refuses (OutputError, a ValueError) to replace an existing file unless ``overwrite``; the files
    appear in ``folder`` only once all are written.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C in {{1, 3}}, H, W), got {tuple(images.shape)}")
    names = [f"{prefix}{index:06d}.png" for index in range(images.shape[0])]
    pixels = torch.round(images.detach().float().clamp(0.0, 1.0) * 255.0).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    with StagedFolder(folder, names, force=overwrite, what="image folder") as staged:
        for name, array in zip(names, pixels):
            Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(staged.path(name), format="PNG")
        return staged.publish()


def evaluate_folders(real_folder: os.PathLike, fake_folder: os.PathLike, **metric_kwargs) -> dict:
    """:func:`reconstruction_metrics` of two folders whose images pair up by file name.

    Both folders must hold the same file names (ValueError lists the first differences).
    ``metric_kwargs`` go to :func:`reconstruction_metrics` (lpips, fid, device, batch_size, ...).
    The result also holds ``"real_folder"`` and ``"fake_folder"``.
    """
    real_names, fake_names = list_images(real_folder), list_images(fake_folder)
    if real_names != fake_names:
        only_real = sorted(set(real_names) - set(fake_names))[:5]
        only_fake = sorted(set(fake_names) - set(real_names))[:5]
        raise ValueError(
            f"image names differ between {real_folder} and {fake_folder}: only in real {only_real}, only in fake {only_fake}"
        )
    real = load_image_folder(real_folder, real_names)
    fake = load_image_folder(fake_folder, fake_names)
    if real.shape != fake.shape:
        raise ValueError(f"image sizes differ: real {tuple(real.shape[2:])}, fake {tuple(fake.shape[2:])}")
    result = reconstruction_metrics(real, fake, **metric_kwargs)
    result["real_folder"], result["fake_folder"] = str(real_folder), str(fake_folder)
    return result
