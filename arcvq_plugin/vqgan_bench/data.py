"""Image folders for the VQGAN comparison: discovery, a file-disjoint split, centre crops, up-front checks.

``--data DIR`` is searched recursively for ``.jpg .jpeg .png .webp`` files. With ``DIR/train`` and
``DIR/validation`` both present those are the splits; otherwise the sorted files are split
deterministically: every file whose SHA-256 of its relative path falls in the last
``validation_fraction`` of the hash range is validation, so the split depends on names only and no
file is in both parts. Every file is opened and decoded before training (:func:`check_split`), so an
empty folder, an unreadable file or too few images is an error before any work.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from arcvq_plugin.data.image_folder import uint8_to_signed_unit
from arcvq_plugin.validation import check_choice, check_int

__all__ = ["EXTENSIONS", "FolderImages", "check_split", "find_images", "split_paths"]

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
VALIDATION_FRACTION = 0.1


def find_images(root: Path) -> list[Path]:
    """Every image file under ``root`` (recursive, sorted); a ValueError when ``root`` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--data must be an existing folder of images, got {str(root)!r}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def split_paths(root: Path, validation_fraction: float = VALIDATION_FRACTION) -> dict[str, list[Path]]:
    """``{"train": [...], "validation": [...]}``: ``root/train`` and ``root/validation`` when both exist,
    else the hash split of the module docstring (at least one validation file)."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "validation").is_dir():
        return {"train": find_images(root / "train"), "validation": find_images(root / "validation")}
    paths = find_images(root)

    def position(path: Path) -> float:
        digest = hashlib.sha256(path.relative_to(root).as_posix().encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64

    validation = [p for p in paths if position(p) >= 1.0 - validation_fraction]
    if not validation and len(paths) > 1:
        validation = [max(paths, key=position)]
    return {"train": [p for p in paths if p not in validation], "validation": validation}


def load_image(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: ``path`` as RGB, centre-cropped to a square and resized (bicubic)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"--data: {path} is not a readable image ({err})") from err


def check_split(root: Path, batch_size: int, size: int) -> dict[str, list[Path]]:
    """The split of ``root``, every file decoded once; a ValueError naming ``--data`` when a part is
    empty, a file is unreadable or the training part has fewer images than one batch."""
    split = split_paths(root)
    for part, paths in split.items():
        if not paths:
            raise ValueError(f"--data {root}: no {part} images ({', '.join(EXTENSIONS)}) found"
                             + ("" if part == "train" else "; it needs at least 2 images"))
        for path in paths:
            load_image(path, size)
    if len(split["train"]) < batch_size:
        raise ValueError(f"--data {root} must hold at least one batch ({batch_size}) of training images, "
                         f"got {len(split['train'])}")
    return split


class FolderImages(Dataset):
    """Images of one split of a folder, decoded once at construction, in taming's example format.

    Args:
        root: the ``--data`` folder.
        split: ``"train"`` or ``"validation"`` (:func:`split_paths`).
        size: output side in pixels (>= 8).
    Items: ``{"image": (size, size, 3) float32 in [-1, 1]}``; ``pixels`` is (N, size, size, 3) uint8.
    """

    def __init__(self, root: str | Path, split: str, size: int = 32):
        check_choice("split", split, ("train", "validation"))
        check_int("size", size, minimum=8)
        self.paths: Sequence[Path] = split_paths(Path(root))[split]
        if not self.paths:
            raise ValueError(f"--data {root}: no {split} images found")
        self.pixels = np.stack([load_image(p, size) for p in self.paths])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"image": uint8_to_signed_unit(self.pixels[index]).numpy()}
