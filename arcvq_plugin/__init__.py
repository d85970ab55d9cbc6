"""arcvq_plugin: ArcVQ-VAE codebooks for taming-transformers VQGANs and latent-diffusion.

Public names (imported lazily, so ``import arcvq_plugin`` stays light)::

    arcvq_plugin.ArcQuantizer            drop-in for taming's VectorQuantizer2
    arcvq_plugin.NormBoundCallback       Lightning callback: clock + norm bound after each step
    arcvq_plugin.CodebookMonitor         Lightning callback: usage, norms, figures per validation
    arcvq_plugin.register_norm_bound_hook  the same hook for plain PyTorch loops
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ArcQuantizer": "arcvq_plugin.quantizer",
    "NormBoundCallback": "arcvq_plugin.norm_bound_callback",
    "CodebookMonitor": "arcvq_plugin.codebook_monitor",
    "register_norm_bound_hook": "arcvq_plugin.norm_bound_callback",
    "arc_margin_loss": "arcvq_plugin.losses",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arcvq_plugin' has no attribute {name!r}")
