"""Datasets of arcvq_plugin.data: embedded MNIST, CIFAR-10 (torchvision layout), image folders."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from arcvq_plugin.data.cifar10 import CIFAR10
from arcvq_plugin.data.image_folder import ImageFolder, UInt8ImageArray, uint8_to_signed_unit
from arcvq_plugin.data.mnist import MNIST

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vqvae"


def test_uint8_maps_to_signed_unit_range():
    x = uint8_to_signed_unit(np.array([0, 127, 255], dtype=np.uint8))
    assert x.dtype == torch.float32
    assert torch.allclose(x, torch.tensor([-1.0, 127 / 127.5 - 1, 1.0]))


def test_mnist_splits_items_and_variance_in_config():
    test = MNIST("test")
    assert len(test) == 10_000
    train = MNIST("train")
    assert len(train) == 60_000
    item = train[0]
    assert item["image"].shape == (28, 28, 1) and item["image"].dtype == torch.float32
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert isinstance(item["class_label"], int) and 0 <= item["class_label"] <= 9
    # the configs divide the MSE by the training-set variance in the model's [-1, 1] scale
    configured = OmegaConf.load(CONFIGS / "mnist_arcvq.yaml").model.params.data_variance
    assert train.pixel_variance() == pytest.approx(configured, abs=1e-4)
    assert len(MNIST("train", limit=5)) == 5


@pytest.mark.parametrize("kwargs", [{"split": "valid"}, {"split": "train", "limit": 0}])
def test_mnist_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        MNIST(**kwargs)


def test_uint8_array_validates_input():
    with pytest.raises(ValueError, match="uint8"):
        UInt8ImageArray(np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="labels"):
        UInt8ImageArray(np.zeros((2, 4, 4), dtype=np.uint8), labels=np.zeros(3))


def _write_fake_cifar(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_reads_torchvision_layout(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    _write_fake_cifar(tmp_path)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # fake files: no md5
    train = CIFAR10(tmp_path, split="train", download=False)
    assert len(train) == 20
    item = CIFAR10(tmp_path, split="test", download=False, limit=2)[1]
    assert item["image"].shape == (32, 32, 3) and item["class_label"] == 1
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0


def test_cifar10_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(RuntimeError, match="cifar-10-batches-py"):
        CIFAR10(tmp_path / "nothing_here", split="test", download=False)
    with pytest.raises(ValueError, match="split"):
        CIFAR10(tmp_path, split="val", download=False)


def test_image_folder_recursive_resized_and_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((20, 30, 3), 255, dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((40, 24), dtype=np.uint8)).save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, size=16)
    assert [Path(p).name for p in (ds[0]["file_path_"], ds[1]["file_path_"])] == ["b.png", "a.jpg"]
    white, black = ds[0]["image"], ds[1]["image"]
    assert white.shape == black.shape == (16, 16, 3)
    assert torch.allclose(white, torch.ones_like(white)) and torch.allclose(black, -torch.ones_like(black))
    assert ImageFolder(tmp_path, channels=1)[0]["image"].shape == (20, 30, 1)


def test_image_folder_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="root"):
        ImageFolder(tmp_path / "missing")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="size"):
        ImageFolder(tmp_path, size=0)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(tmp_path, channels=2)
