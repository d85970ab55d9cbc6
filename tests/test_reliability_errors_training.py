"""``arcvq-train``: training images of the wrong shape and untyped ddconfig values are clear errors
naming the file / key before the log folder exists (reliability rows 115-118)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from arcvq_plugin.data.image_folder import ImageFolder
from arcvq_plugin.main import main
from arcvq_plugin.trainer_cli.config_check import ConfigError

TINY_ARCVQ = Path(__file__).resolve().parents[1] / "configs" / "taming" / "tiny_arcvq.yaml"


def _run(tmp_path: Path, edit) -> Path:
    """arcvq-train on tiny_arcvq.yaml edited by ``edit``; returns the --logdir (expected to stay absent)."""
    config = OmegaConf.load(TINY_ARCVQ)
    edit(config)
    path = tmp_path / "edited.yaml"
    OmegaConf.save(config, path)
    logdir = tmp_path / "logs"
    main(["--base", str(path), "-t", "--logdir", str(logdir)])
    return logdir


@pytest.mark.parametrize("key, value, error", [
    ("ch", "32", r"model\.params\.ddconfig\.ch must be an integer .* got '32' \(str\); remove the quotes"),
    ("double_z", "False", r"model\.params\.ddconfig\.double_z must be true or false .* got 'False' \(str\)"),
    ("ch_mult", ["1", "1", "2"], r"model\.params\.ddconfig\.ch_mult must be a list of integers"),
    ("dropout", "0.0", r"model\.params\.ddconfig\.dropout must be a number"),
    ("ch", None, r"model\.params\.ddconfig lacks ch"),
])
def test_untyped_ddconfig_values_are_named_before_the_log_folder(tmp_path, key, value, error):
    def edit(config):
        if value is None:
            config.model.params.ddconfig.pop(key)
        else:
            config.model.params.ddconfig[key] = value

    with pytest.raises(ConfigError, match=error):
        _run(tmp_path, edit)
    assert not (tmp_path / "logs").exists()


def _folder(root: Path, sizes: list[tuple[int, int]], mode: str = "RGB") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for i, (width, height) in enumerate(sizes):
        shape = (height, width) if mode == "L" else (height, width, 3)
        Image.fromarray(generator.integers(0, 256, shape, dtype=np.uint8), mode).save(root / f"{i:03d}.png")
    return root


def _image_data(config, train: Path, validation: Path, size, channels: int = 3) -> None:
    for split, folder in (("train", train), ("validation", validation)):
        config.data.params[split] = {"target": "arcvq_plugin.data.image_folder.ImageFolder",
                                     "params": {"root": str(folder), "size": size, "channels": channels}}


def test_grey_images_where_the_model_takes_rgb_are_refused_before_the_log_folder(tmp_path):
    folder = _folder(tmp_path / "grey", [(32, 32)] * 4, mode="L")
    with pytest.raises(ValueError, match=r"data\.train images \(.*000\.png\) have 1 \(grayscale\) channels but the "
                                         r"model takes 3 \(RGB\)"):
        _run(tmp_path, lambda c: _image_data(c, folder, folder, 32, channels=1))
    assert not (tmp_path / "logs").exists()


def test_a_1x1_image_among_others_is_named_before_the_log_folder(tmp_path):
    folder = _folder(tmp_path / "mixed", [(32, 32), (32, 32), (1, 1), (32, 32)])
    with pytest.raises(ValueError, match=r"data\.train: image file '.*002\.png' is 1x1 pixels, .* multiples of 4"):
        _run(tmp_path, lambda c: _image_data(c, folder, folder, None))
    assert not (tmp_path / "logs").exists()


def test_images_the_encoder_cannot_downsample_are_refused_before_the_log_folder(tmp_path):
    folder = _folder(tmp_path / "odd", [(1, 1)] * 2)
    with pytest.raises(ValueError, match=r"data\.train images .* are 1x1 pixels, .* multiples of 4"):
        _run(tmp_path, lambda c: _image_data(c, folder, folder, None))
    assert not (tmp_path / "logs").exists()


def test_image_folder_names_an_unreadable_file(tmp_path):
    folder = _folder(tmp_path / "broken", [(8, 8)] * 2)
    (folder / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"cannot read the image file '.*001\.png'"):
        ImageFolder(folder, size=None)
    dataset = ImageFolder(folder, size=8)  # resized datasets read files lazily: the error names the file then
    with pytest.raises(ValueError, match=r"cannot read the image file '.*001\.png'"):
        dataset[1]
