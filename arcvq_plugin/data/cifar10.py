"""CIFAR-10 through torchvision's downloader, in taming's example format.

Items: ``{"image": (32, 32, 3) float32 in [-1, 1], "class_label": int}``. torchvision keeps the
archive under ``root`` (``root/cifar-10-batches-py``). Where the files are missing and no network
is reachable, construction fails with a RuntimeError that says how to provide them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from arcvq_plugin.data.image_folder import UInt8ImageArray
from arcvq_plugin.validation import check_choice

__all__ = ["CIFAR10"]

SPLITS = ("train", "test")


class CIFAR10(UInt8ImageArray):
    """CIFAR-10 ``split`` ('train' 50k or 'test' 10k).

    Args:
        root: folder holding (or receiving) ``cifar-10-batches-py``. Default ``data/cifar10``.
        split: 'train' or 'test'.
        download: let torchvision download the archive (163 MB) when it is not under ``root``.
        limit: keep the first ``limit`` images (>= 1); None keeps all.
    """

    def __init__(self, root: str | Path = "data/cifar10", split: str = "train", download: bool = True,
                 limit: int | None = None):
        check_choice("split", split, SPLITS)
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        try:
            source = TorchvisionCIFAR10(str(root), train=split == "train", download=download)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; a missing archive a RuntimeError
            raise RuntimeError(
                f"CIFAR-10 is not available under {str(root)!r} ({type(err).__name__}: {err}). "
                "It is not installable from a package registry: on a machine with network access "
                f"construct CIFAR10(root={str(root)!r}, download=True) once, or copy the folder "
                f"'cifar-10-batches-py' (from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) "
                f"into {str(root)!r}.") from err
        super().__init__(np.asarray(source.data, dtype=np.uint8), np.asarray(source.targets), limit=limit)
        self.split = split
