"""Make latent-diffusion's ``ldm`` (PyPI ``ldm-fix`` or a user's clone) import and run here.

``import_ldm()`` is the one entry point every module of ``arcvq_plugin.ldm`` uses before touching
``ldm``. It repairs three things without editing the installed package:

1. Lightning 2.x: ``ldm.models.diffusion.ddpm`` imports
   ``pytorch_lightning.utilities.distributed.rank_zero_only`` (gone in 2.x):
   ``arcvq_plugin.compat.install_lightning_shims()`` registers a stand-in first.
2. Names ``ldm.models.autoencoder`` uses without importing them: ``LitEma`` (``use_ema=True``),
   ``np`` (``batch_resize_range``), ``version`` (validation under Lightning >= 1.4) and
   ``LambdaLR`` (``scheduler_config``). They are added to that module's namespace, each only
   when the module lacks it (a clone that imports them keeps its own).
3. ``ldm.util.log_txt_as_img`` (used by ``LatentDiffusion.log_images`` for captions and class
   labels) loads the font ``data/DejaVuSans.ttf`` relative to the working directory, which only
   exists inside a clone. ``ldm.models.diffusion.ddpm`` gets a version that uses that font when
   the file exists and Pillow's built-in font otherwise.
"""
from __future__ import annotations

import os
import types
from typing import Sequence

import numpy as np
import torch

from arcvq_plugin.compat import install_lightning_shims
from arcvq_plugin.extras import require_extra

__all__ = ["LDM_FONT_PATH", "import_ldm", "log_txt_as_img"]

LDM_FONT_PATH = os.path.join("data", "DejaVuSans.ttf")


def log_txt_as_img(wh: tuple[int, int], xc: Sequence[str], size: int = 10) -> torch.Tensor:
    """Render each string of ``xc`` black on white into an image of size ``wh`` (width, height).

    Returns (len(xc), 3, height, width) float in [-1, 1], like ``ldm.util.log_txt_as_img``, whose
    font it uses when ``data/DejaVuSans.ttf`` exists (Pillow's built-in font otherwise).
    """
    from PIL import Image, ImageDraw, ImageFont

    if os.path.exists(LDM_FONT_PATH):
        font = ImageFont.truetype(LDM_FONT_PATH, size=size)
    else:
        font = ImageFont.load_default(size=size)
    chars_per_line = max(1, int(40 * (wh[0] / 256)))
    images = []
    for text in xc:
        canvas = Image.new("RGB", wh, color="white")
        lines = "\n".join(text[i:i + chars_per_line] for i in range(0, len(text), chars_per_line))
        ImageDraw.Draw(canvas).text((0, 0), lines, fill="black", font=font)
        images.append(np.asarray(canvas).transpose(2, 0, 1) / 127.5 - 1.0)
    return torch.tensor(np.stack(images))


def _inject_missing(module: types.ModuleType, names: dict[str, object]) -> None:
    for name, value in names.items():
        if not hasattr(module, name):
            setattr(module, name, value)


def import_ldm() -> types.ModuleType:
    """Import ``ldm.models.diffusion.ddpm`` (and with it ``ldm.models.autoencoder``), repaired.

    Idempotent. Returns the ``ddpm`` module. Raises
    :class:`~arcvq_plugin.extras.MissingExtraError` naming the extra ``[ldm]`` when no ``ldm``
    package is importable, ImportError with install advice when one is there but does not import.
    """
    install_lightning_shims()
    require_extra("ldm", "ldm")
    try:
        import ldm.models.autoencoder as autoencoder
        import ldm.models.diffusion.ddpm as ddpm
    except ImportError as err:
        raise ImportError(
            "latent-diffusion's 'ldm' package is not importable: pip install 'arcvq-plugin[ldm]' (ldm-fix 1.0.1), "
            f"or put a clone of CompVis/latent-diffusion on PYTHONPATH ({err})"
        ) from err
    from packaging import version
    from torch.optim.lr_scheduler import LambdaLR

    from ldm.modules.ema import LitEma

    _inject_missing(autoencoder, {"LitEma": LitEma, "np": np, "version": version, "LambdaLR": LambdaLR})
    ddpm.log_txt_as_img = log_txt_as_img
    return ddpm
