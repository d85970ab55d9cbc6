"""FID of a prior's decoded samples against a dataset split (the paper's Table 13 metric).

Features are torch-fidelity's FID Inception pool features (``arcvq_plugin.evaluation``); offline
that network is the substitute ``arcvq-install-metric-weights`` builds, and the result then says
"substitute weights": compare such numbers only with numbers made the same way (and on the same
number of images: with fewer than 2048 images per set the covariances are rank-deficient and FID
is biased upwards).
"""
from __future__ import annotations

import torch

from arcvq_plugin.evaluation.frechet import frechet_distance
from arcvq_plugin.evaluation.perceptual import inception_features
from arcvq_plugin.evaluation.weight_cache import describe_weights, inception_weights_path, substitute_entry

__all__ = ["generation_fid"]


def generation_fid(reference: torch.Tensor, samples: torch.Tensor, *, device: torch.device | str = "cpu",
                   batch_size: int = 50) -> dict:
    """FID between ``reference`` and ``samples``, (N, C, H, W) float in [0, 1] each (sizes may differ).

    Returns ``{"fid", "n_reference", "n_samples", "weights", "substitute_weights"}``; raises
    ``arcvq_plugin.evaluation.MetricUnavailable`` (with the install command) without the weights.
    """
    for name, images in (("reference", reference), ("samples", samples)):
        if images.ndim != 4 or images.shape[0] < 2:
            raise ValueError(f"{name} must be (N, C, H, W) with N >= 2, got shape {tuple(images.shape)}")
    real, fake = inception_features(reference, samples, device=torch.device(device), batch_size=batch_size)
    path = inception_weights_path()
    return {"fid": frechet_distance(real, fake), "n_reference": int(reference.shape[0]),
            "n_samples": int(samples.shape[0]), "weights": describe_weights(path),
            "substitute_weights": substitute_entry(path) is not None}
