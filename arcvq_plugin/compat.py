"""Import shims that let taming and ldm, written for pytorch-lightning 1.x, import under 2.x.

taming's ``taming.models.vqgan`` imports ``taming.main``, which imports
``pytorch_lightning.utilities.distributed.rank_zero_only``: that module is gone in Lightning 2.x.
``install_lightning_shims()`` registers a stand-in module carrying ``rank_zero_only`` before
taming is imported. It changes nothing when the real module exists.
"""
from __future__ import annotations

import sys
import types

__all__ = ["install_lightning_shims"]


def install_lightning_shims() -> None:
    name = "pytorch_lightning.utilities.distributed"
    if name in sys.modules:
        return
    try:
        importlib_module = __import__(name, fromlist=["rank_zero_only"])
        sys.modules[name] = importlib_module
        return
    except ImportError:
        pass
    from pytorch_lightning.utilities import rank_zero_only

    shim = types.ModuleType(name)
    shim.rank_zero_only = rank_zero_only
    sys.modules[name] = shim
