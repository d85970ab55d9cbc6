"""Class-labelled image datasets for ldm's class-conditional ``LatentDiffusion``.

Items carry the keys it reads::

    {"image": float32 (size, size, 3) in [-1, 1], "class_label": int, "human_label": str}

- :class:`LabelledSampleImages`: tiny and offline, crops of scikit-image photos labelled by photo.
- :class:`ClassFolderImages`: ``root/<class name>/**/<image>`` (ImageNet's train/val layout after
  the usual per-class sorting), class id = rank of the class folder name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from arcvq_plugin.data.image_folder import IMAGE_EXTENSIONS, ImageFolder
from arcvq_plugin.data.sample_images import TRAIN_PHOTOS, SampleImages

__all__ = ["ClassFolderImages", "LabelledSampleImages"]


class LabelledSampleImages(SampleImages):
    """Crops of ``photos`` (default: the six training photos); class id = position in ``photos``.

    Args: as :class:`SampleImages` (size >= 8, length >= 1, seed, min_crop, flip).
    """

    def __init__(self, size: int = 32, length: int = 64, seed: int = 0, min_crop: Optional[int] = None,
                 flip: bool = True, photos: Sequence[str] = TRAIN_PHOTOS):
        super().__init__(size=size, length=length, photos=photos, seed=seed, min_crop=min_crop, flip=flip)
        self.class_names = list(photos)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item = super().__getitem__(idx)
        label = int(self.photo_index[idx])
        return {**item, "class_label": label, "human_label": self.class_names[label]}


class ClassFolderImages(ImageFolder):
    """Every image under ``root/<class name>/``; class ids follow the sorted class folder names.

    Args: as :class:`arcvq_plugin.data.image_folder.ImageFolder` (``size`` >= 1 resizes the shorter
    side and centre-crops). Images directly inside ``root`` (outside any class folder) are a
    ValueError.
    """

    def __init__(self, root: str | Path, size: Optional[int] = 256, channels: int = 3,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        super().__init__(root, size=size, channels=channels, extensions=extensions)
        root = Path(root)
        folders = [path.relative_to(root).parts[0] for path in self.paths]
        stray = [str(path) for path, folder in zip(self.paths, folders) if (root / folder) == path]
        if stray:
            raise ValueError(f"images must sit in class folders under root, found {stray[:3]}")
        self.class_names = sorted(set(folders))
        index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = [index[folder] for folder in folders]

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = self.labels[index]
        return {**super().__getitem__(index), "class_label": label, "human_label": self.class_names[label]}
