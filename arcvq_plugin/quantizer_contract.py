"""What every quantiser of this package shares with taming's ``VectorQuantizer2`` contract.

``QuantizerContract`` is a mixin for subclasses of ``VectorQuantizer2`` (``ArcQuantizer``,
``baselines.ClusteredQuantizer``):

- ``check_input``: the latents' shape, and the GumbelQuantize-only arguments left at their defaults;
- ``output_indices``: taming's ``remap`` and ``sane_index_shape`` applied to the selected codes;
- ``passive()``: a block whose forwards must not train the quantiser's own state (the GAN
  discriminator's second pass over a batch, :func:`arcvq_plugin.gan_training.passive_quantizers`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

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
