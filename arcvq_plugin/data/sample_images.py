"""An offline colour-image dataset: square crops of the photos bundled with scikit-image.

Items use taming's example format: ``{"image": float32 array (size, size, 3) in [-1, 1]}``.
Crops are drawn once, at construction, from ``numpy.random.default_rng(seed)``: a crop of random
side in ``[min_crop, shorter photo side]`` at a random position (optionally mirrored), resized to
``size``. The same ``(photos, size, length, seed)`` therefore always gives the same items, which keeps
training resumable bit for bit and every DDP rank on the same dataset.

Default photos: training uses astronaut, chelsea, coffee, rocket, hubble_deep_field and
immunohistochemistry; validation uses two held-out photos, retina and motorcycle.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from arcvq_plugin.extras import require_extra
from arcvq_plugin.validation import check_int

__all__ = ["PHOTOS", "SampleImages", "SampleImagesTrain", "SampleImagesValidation"]


def _photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    require_extra("data", "skimage")
    import skimage.data as data

    return {
        "astronaut": data.astronaut,
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "rocket": data.rocket,
        "hubble_deep_field": data.hubble_deep_field,
        "immunohistochemistry": data.immunohistochemistry,
        "retina": data.retina,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
    }


PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "motorcycle",
)
TRAIN_PHOTOS: tuple[str, ...] = PHOTOS[:6]
VALIDATION_PHOTOS: tuple[str, ...] = PHOTOS[6:]


class SampleImages(Dataset):
    """``length`` square crops of scikit-image photos, resized to ``size`` x ``size``.

    Args:
        size: output side in pixels (>= 8).
        length: number of items (>= 1).
        photos: names from :data:`PHOTOS`.
        seed: seed of the crop positions, sides and flips.
        min_crop: smallest crop side before resizing (>= 1); None means ``size`` (no upsampling).
        flip: mirror each crop horizontally with probability 1/2.
    """

    def __init__(
        self,
        size: int,
        length: int,
        photos: Sequence[str],
        seed: int = 0,
        min_crop: Optional[int] = None,
        flip: bool = False,
    ):
        check_int("size", size, minimum=8)
        check_int("length", length, minimum=1)
        loaders = _photo_loaders()
        unknown = [name for name in photos if name not in loaders]
        if not photos or unknown:
            raise ValueError(f"photos must be a non-empty list from {list(PHOTOS)}, got {list(photos)}")
        self.size = int(size)
        self.min_crop = self.size if min_crop is None else check_int("min_crop", min_crop, minimum=1)
        self.photos = [np.ascontiguousarray(loaders[name]()[..., :3]) for name in photos]
        shortest = min(min(p.shape[:2]) for p in self.photos)
        if self.min_crop > shortest:
            raise ValueError(f"min_crop must be <= {shortest} (the shortest photo side), got {self.min_crop}")

        rng = np.random.default_rng(seed)
        n = int(length)
        self.photo_index = rng.integers(0, len(self.photos), size=n)
        self.crop_side = np.empty(n, dtype=np.int64)
        self.top = np.empty(n, dtype=np.int64)
        self.left = np.empty(n, dtype=np.int64)
        for i, p in enumerate(self.photo_index):
            height, width = self.photos[p].shape[:2]
            side = int(rng.integers(self.min_crop, min(height, width) + 1))
            self.crop_side[i] = side
            self.top[i] = rng.integers(0, height - side + 1)
            self.left[i] = rng.integers(0, width - side + 1)
        self.mirror = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)

    def __len__(self) -> int:
        return len(self.photo_index)

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        photo = self.photos[self.photo_index[idx]]
        top, left, side = self.top[idx], self.left[idx], self.crop_side[idx]
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        if side != self.size:
            crop = crop.resize((self.size, self.size), Image.BICUBIC)
        image = np.asarray(crop, dtype=np.float32)
        if self.mirror[idx]:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image / 127.5 - 1.0, dtype=np.float32)}


class SampleImagesTrain(SampleImages):
    """Training crops (random sides, positions, mirroring) of the six training photos."""

    def __init__(self, size: int = 32, length: int = 64, seed: int = 0, min_crop: Optional[int] = None,
                 flip: bool = True, photos: Sequence[str] = TRAIN_PHOTOS):
        super().__init__(size=size, length=length, photos=photos, seed=seed, min_crop=min_crop, flip=flip)


class SampleImagesValidation(SampleImages):
    """Validation crops of the two held-out photos (fixed by ``seed``, no mirroring)."""

    def __init__(self, size: int = 32, length: int = 16, seed: int = 1, min_crop: Optional[int] = None,
                 photos: Sequence[str] = VALIDATION_PHOTOS):
        super().__init__(size=size, length=length, photos=photos, seed=seed, min_crop=min_crop, flip=False)
