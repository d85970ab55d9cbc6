"""Where the metric networks' weights live, and whether the file there is a labelled substitute.

File names come from the libraries that read them:

- LPIPS (``lpips.LPIPS(net="vgg")``, taming's ``LPIPS``) loads torchvision's VGG16 through
  ``torch.hub`` from ``<torch hub dir>/checkpoints/vgg16-397923af.pth``; its linear layers ship
  with the ``lpips`` package.
- rFID (torch-fidelity) loads ``<torch hub dir>/checkpoints/weights-inception-2015-12-05-6726825d.pth``;
  pytorch-fid reads ``pt_inception-2015-12-05-6726825d.pth`` from the same folder.
- taming's LPIPS also reads ``taming/modules/autoencoder/lpips/vgg.pth`` relative to the working
  directory.

The torch hub directory is ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``). Files written by
``arcvq-install-metric-weights`` are recorded, with their SHA-256, in the marker file
:data:`MARKER_NAME` next to them; a file is reported as a substitute only while its hash matches.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch

from arcvq_plugin.extras import require_extra

__all__ = [
    "MARKER_NAME",
    "INSTALL_COMMAND",
    "checkpoints_dir",
    "vgg16_weights_path",
    "inception_weights_path",
    "pytorch_fid_inception_path",
    "taming_lpips_path",
    "sha256_of",
    "read_marker",
    "substitute_entry",
    "describe_weights",
]

MARKER_NAME = "ARCVQ_SUBSTITUTE_WEIGHTS.json"
INSTALL_COMMAND = "arcvq-install-metric-weights"  # == python -m arcvq_plugin.evaluation.weights
PYTORCH_FID_INCEPTION_NAME = "pt_inception-2015-12-05-6726825d.pth"  # pytorch_fid.inception.FID_WEIGHTS_URL
TAMING_LPIPS_RELATIVE = Path("taming/modules/autoencoder/lpips/vgg.pth")  # taming.util CKPT_MAP + LPIPS root


def checkpoints_dir() -> Path:
    """``<torch hub dir>/checkpoints``, the folder ``torch.hub.load_state_dict_from_url`` caches into."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _basename(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def vgg16_weights_path() -> Path:
    """Cache path of torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (what ``vgg16(pretrained=True)`` loads)."""
    from torchvision.models import VGG16_Weights

    return checkpoints_dir() / _basename(VGG16_Weights.IMAGENET1K_V1.url)


def inception_weights_path() -> Path:
    """Cache path of torch-fidelity's FID Inception weights."""
    require_extra("eval", "torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return checkpoints_dir() / _basename(URL_INCEPTION_V3)


def pytorch_fid_inception_path() -> Path:
    """Cache path pytorch-fid reads its FID Inception weights from (same tensors, same key layout)."""
    return checkpoints_dir() / PYTORCH_FID_INCEPTION_NAME


def taming_lpips_path(root: Optional[os.PathLike] = None) -> Path:
    """``<root>/taming/modules/autoencoder/lpips/vgg.pth``; root defaults to the working directory."""
    return Path(root if root is not None else os.getcwd()) / TAMING_LPIPS_RELATIVE


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: os.PathLike) -> str:
    """Hex SHA-256 of a file (memoised on path, size and modification time)."""
    stat = os.stat(path)
    return _sha256_cached(str(path), stat.st_size, stat.st_mtime_ns)


def read_marker(directory: os.PathLike) -> dict:
    """The marker's ``{"files": {name: entry}}`` in ``directory``; empty when absent or unreadable."""
    marker = Path(directory) / MARKER_NAME
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {"files": {}}
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return {"files": {}}
    return data


def substitute_entry(path: os.PathLike) -> Optional[dict]:
    """The marker entry of ``path`` if that file is a substitute written by the installer, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    entry = read_marker(path.parent)["files"].get(path.name)
    if not isinstance(entry, dict) or entry.get("sha256") != sha256_of(path):
        return None
    return entry


def describe_weights(path: os.PathLike) -> str:
    """One line saying where the weights at ``path`` come from (for result JSON and tables)."""
    entry = substitute_entry(path)
    if entry is None:
        return f"original weights file {path}"
    return f"substitute weights ({entry.get('source', 'unknown source')}) at {path}"
