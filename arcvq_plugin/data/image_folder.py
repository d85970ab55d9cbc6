"""Image datasets in taming's example format, from a uint8 array in memory or a folder of files.

Every dataset here returns examples like taming's own datasets::

    {"image": (H, W, C) float32 tensor in [-1, 1], ...}

``[-1, 1]`` is what the VQ-VAE of the ArcVQ reference code trains on (``ToTensor`` then
``Normalize(0.5, 0.5)``) and what taming's ``VQModel.get_input`` expects; evaluation maps
reconstructions back to ``[0, 1]`` with ``(x + 1) / 2``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from arcvq_plugin.validation import check_choice, check_optional_int

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "UInt8ImageArray", "uint8_to_signed_unit"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def uint8_to_signed_unit(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels {0..255} to float32 in [-1, 1] (``x / 127.5 - 1`` in float32), shape unchanged.

    A tensor stays on its device (the VQ-VAE converts whole uint8 batches on the GPU this way).
    """
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))  # writable copy
    return tensor.to(torch.float32) / 127.5 - 1.0


class UInt8ImageArray(Dataset):
    """Images held in memory as one uint8 tensor ``pixels`` (N, H, W, C).

    Args:
        images: uint8 array (N, H, W) (grey, a channel axis of 1 is added) or (N, H, W, C).
        labels: optional int array (N,), returned as ``"class_label"``.
        limit: keep only the first ``limit`` images (>= 1); None keeps all.

    Items: ``{"image": (H, W, C) float32 in [-1, 1], "class_label": int}`` (label only when given),
    converted one at a time. ``pixels`` is what ``arcvq_plugin.data.device_batches`` puts on the
    device whole and serves in batches.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, limit: int | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be a uint8 array (N,H,W) or (N,H,W,C), got {images.dtype} {images.shape}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"labels must have one entry per image ({len(images)}), got {len(labels)}")
        limit = check_optional_int("limit", limit, minimum=1)
        if limit is not None:
            images = images[:limit]
            labels = None if labels is None else labels[:limit]
        if images.ndim == 3:
            images = images[..., None]
        self.pixels = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: int) -> dict:
        example = {"image": uint8_to_signed_unit(self.pixels[index])}
        if self.labels is not None:
            example["class_label"] = int(self.labels[index])
        return example

    def pixel_variance(self) -> float:
        """Variance of all pixels in [-1, 1]: the reference code's ``4 * var(x / 255)``.

        The VQ-VAE's reconstruction loss is the MSE divided by this number (METHOD.md).
        """
        return float(uint8_to_signed_unit(self.pixels).to(torch.float64).var(unbiased=False))


class ImageFolder(Dataset):
    """Every image file under ``root`` (recursively, sorted by path), in taming's example format.

    Args:
        root: folder to scan.
        size: if given (>= 1), resize the shorter side to ``size`` and centre-crop to size x size;
            None keeps each file's size (then batches need equal sizes): every file's header is
            read up front into ``file_sizes`` ({path: (width, height)}), and a file that cannot be
            read is a ValueError naming it.
        channels: 3 (RGB) or 1 (greyscale); every file is converted.
        extensions: file suffixes to accept (case-insensitive).

    Items: ``{"image": (H, W, C) float32 in [-1, 1], "file_path_": str}``.
    """

    def __init__(self, root: str | Path, size: int | None = None, channels: int = 3,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"root must be an existing folder, got {str(root)!r}")
        check_optional_int("size", size, minimum=1)
        check_choice("channels", channels, (1, 3))
        suffixes = {e.lower() for e in extensions}
        self.paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not self.paths:
            raise ValueError(f"no image files ({', '.join(sorted(suffixes))}) under {str(root)!r}")
        self.size = size
        self.channels = channels
        self.file_sizes: dict[Path, tuple[int, int]] | None = self._read_sizes() if size is None else None

    def _read_sizes(self) -> dict[Path, tuple[int, int]]:
        """(width, height) of every file from its header; ValueError naming a file that cannot be read."""
        sizes = {}
        for path in self.paths:
            try:
                with Image.open(path) as img:
                    sizes[path] = img.size
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise ValueError(f"cannot read the image file {str(path)!r} ({type(err).__name__}: {err})") from err
        return sizes

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: Path) -> np.ndarray:
        try:
            return self._read(path)
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
            raise ValueError(f"cannot read the image file {str(path)!r} ({type(err).__name__}: {err})") from err

    def _read(self, path: Path) -> np.ndarray:
        with Image.open(path) as img:
            img = img.convert("RGB" if self.channels == 3 else "L")
            if self.size is not None:
                scale = self.size / min(img.size)
                w, h = max(self.size, round(img.size[0] * scale)), max(self.size, round(img.size[1] * scale))
                img = img.resize((w, h), Image.BICUBIC)
                left, top = (w - self.size) // 2, (h - self.size) // 2
                img = img.crop((left, top, left + self.size, top + self.size))
            array = np.asarray(img, dtype=np.uint8)
        return array[..., None] if array.ndim == 2 else array

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        return {"image": uint8_to_signed_unit(self._load(path)), "file_path_": str(path)}
