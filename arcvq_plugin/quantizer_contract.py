"""What every quantiser of this package shares with taming's ``VectorQuantizer2`` contract.

``QuantizerContract`` is a mixin for subclasses of ``VectorQuantizer2`` (``ArcQuantizer``,
``baselines.ClusteredQuantizer``):

- ``check_taming_arguments``: taming's constructor arguments, validated before anything is built;
- ``check_input``: the latents' shape, and the GumbelQuantize-only arguments left at their defaults;
- ``output_indices``: taming's ``remap`` and ``sane_index_shape`` applied to the selected codes;
- ``passive()``: a block whose forwards must not train the quantiser's own state (the GAN
  discriminator's second pass over a batch, :func:`arcvq_plugin.gan_training.passive_quantizers`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Union

import torch

from arcvq_plugin.validation import check_bool, check_int, check_real

__all__ = ["QuantizerContract"]


class QuantizerContract:
    """Mixin for ``VectorQuantizer2`` subclasses (uses ``e_dim``, ``remap``, ``remap_to_used``,
    ``sane_index_shape``). ``_passive`` is True inside :meth:`passive`."""

    _passive: bool = False

    @contextlib.contextmanager
    def passive(self) -> Iterator["QuantizerContract"]:
        """Forwards inside this block select codes and return the VQ loss only, leaving the
        quantiser's state (ArcQuantizer: code counts, ``loss_breakdown``, ArcLoss; ClusteredQuantizer:
        running usage and codebook re-initialisation) as it is.

        For a second pass over a batch that must not train the quantiser twice."""
        previous, self._passive = self._passive, True
        try:
            yield self
        finally:
            self._passive = previous

    @staticmethod
    def check_taming_arguments(n_e: int, e_dim: int, beta: float, unknown_index: Union[str, int],
                               sane_index_shape: bool, legacy: bool) -> tuple[int, int, float]:
        """ValueError naming the first of ``VectorQuantizer2``'s arguments outside its range (n_e, e_dim:
        integers >= 1; beta: finite, >= 0; unknown_index: 'random', 'extra' or an integer >= 0; the
        flags: bools); returns ``(n_e, e_dim, beta)`` as checked."""
        n_e, e_dim = check_int("n_e", n_e, minimum=1), check_int("e_dim", e_dim, minimum=1)
        beta = check_real("beta", beta, minimum=0.0)
        if not (unknown_index in ("random", "extra") or (type(unknown_index) is int and unknown_index >= 0)):
            raise ValueError(f"unknown_index must be 'random', 'extra' or an integer >= 0, got {unknown_index!r}")
        check_bool("sane_index_shape", sane_index_shape)
        check_bool("legacy", legacy)
        return n_e, e_dim, beta

    def check_input(self, z: torch.Tensor, temp, rescale_logits, return_logits) -> None:
        """ValueError unless z is (B, e_dim, H, W) and temp / rescale_logits / return_logits are
        at their defaults (they exist for GumbelQuantize's interface only)."""
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError("temp, rescale_logits and return_logits exist only for interface "
                             "compatibility with GumbelQuantize: leave them at their defaults")
        if z.ndim != 4 or z.shape[1] != self.e_dim:
            raise ValueError(f"{type(self).__name__} expects z of shape (B, e_dim={self.e_dim}, H, W), "
                             f"got {tuple(z.shape)}")

    def output_indices(self, indices: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """Apply taming's remap and index shape conventions to the selected codes (N,), given the
        output z_q (B, e_dim, H, W): (N,), (N, 1) with remap, or (B, H, W) with sane_index_shape."""
        if self.remap is not None:
            indices = self.remap_to_used(indices.reshape(z_q.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return indices
