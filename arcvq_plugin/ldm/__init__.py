"""ArcVQ tokenizers inside latent-diffusion (``ldm``: PyPI ``ldm-fix`` or a clone on PYTHONPATH).

Public names (imported lazily; importing any of them imports ``ldm`` through
:func:`arcvq_plugin.ldm.compat.import_ldm`, which makes it work under Lightning 2.x)::

    arcvq_plugin.ldm.VQModel             ldm's VQModel + quantizer_config (first-stage training)
    arcvq_plugin.ldm.VQModelInterface    ldm's VQModelInterface + quantizer_config (LDM first stage)
    arcvq_plugin.ldm.LatentDiffusion     ldm's LatentDiffusion for Lightning 2.x, CPU/GPU DDIM, CFG
    arcvq_plugin.ldm.DDIMSampler         ldm's DDIMSampler on the model's device
    arcvq_plugin.ldm.LabelledSampleImages  tiny offline class-labelled dataset
    arcvq_plugin.ldm.ClassFolderImages   root/<class>/<image> datasets (ImageNet layout)
"""
from __future__ import annotations

import importlib

_LAZY = {
    "VQModel": "arcvq_plugin.ldm.autoencoder",
    "VQModelInterface": "arcvq_plugin.ldm.autoencoder",
    "LatentDiffusion": "arcvq_plugin.ldm.diffusion",
    "DDIMSampler": "arcvq_plugin.ldm.ddim",
    "LabelledSampleImages": "arcvq_plugin.ldm.datasets",
    "ClassFolderImages": "arcvq_plugin.ldm.datasets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'arcvq_plugin.ldm' has no attribute {name!r}")
