"""``arcvq-patch``: bring a user's clone of taming-transformers or latent-diffusion onto
torch 2.x / pytorch-lightning 2.x and let its VQModels take a ``quantizer_config``.

The patch series live in the repository's ``patches/<upstream>/`` folders (numbered ``.patch``
files, ``git apply``-able one after the other, plus ``upstream.json``: the pinned commit and the
sha256 of every file the series touches, before and after). This package recognises a clone by
those fingerprints, applies a whole series or nothing, and reverts it byte for byte from the
originals it keeps in ``<clone>/.arcvq-patch/``.

Modules: :mod:`.series` (a patch series and its fingerprints), :mod:`.clone` (what state a clone
is in), :mod:`.operations` (check / apply / revert), :mod:`.cli` (the ``arcvq-patch`` command).
"""
from .clone import CloneState, inspect_clone
from .operations import PatchRefused, apply_series, check_clone, revert_series
from .series import PatchSeries, default_patches_root, find_series, load_all_series

__all__ = [
    "CloneState", "PatchRefused", "PatchSeries", "apply_series", "check_clone", "default_patches_root",
    "find_series", "inspect_clone", "load_all_series", "revert_series",
]
