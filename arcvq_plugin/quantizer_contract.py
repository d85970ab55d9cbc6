"""What every quantiser of this package shares with taming's ``VectorQuantizer2`` contract.

``QuantizerContract`` is a mixin for subclasses of ``VectorQuantizer2`` (``ArcQuantizer``,
``baselines.ClusteredQuantizer``):

- ``check_taming_arguments``: taming's constructor arguments, validated before anything is built;
- ``check_input``: the latents' shape, and the GumbelQuantize-only arguments left at their defaults;
- ``output_indices``: taming's ``remap`` and ``sane_index_shape`` applied to the selected codes;
- ``vq_loss``: taming's VQ loss (commitment and codebook terms, ``beta`` placed by ``legacy``);
- :func:`code_perplexity` of a forward's code counts, and ``selection_perplexity`` of its indices;
- ``passive()``: a block whose forwards must not train the quantiser's own state (the GAN
  discriminator's second pass over a batch, :func:`arcvq_plugin.gan_training.passive_quantizers`);
- state validated on load: ``load_state_dict`` (and so Lightning's resume, ``ckpt_path`` and every
  inference loader) refuses, before the quantiser's state is touched, a floating-point parameter
  or buffer holding NaN or inf (the codebook ``embedding.weight``, ``running_usage``) and a step
  counter (:data:`STEP_COUNTERS`: ArcQuantizer's ``clock``) that is not an integer >= 0. A float
  counter with a fractional part is refused, not truncated. The error is a
  :class:`QuantizerStateError` naming the key and the allowed range.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Union

import torch

from arcvq_plugin.validation import check_bool, check_int, check_real

__all__ = ["QuantizerContract", "QuantizerStateError", "STEP_COUNTERS", "check_finite_state", "check_step_counter",
           "code_perplexity"]

STEP_COUNTERS = ("clock",)
"""Buffer names that count optimizer steps: a quantiser's buffer of such a name must load as an integer >= 0."""


class QuantizerStateError(ValueError):
    """Quantiser state outside its allowed range, raised before it is loaded."""


def check_finite_state(state_dict: Mapping[str, Any], prefix: str = "") -> None:
    """QuantizerStateError naming the first floating-point tensor of ``state_dict`` whose key starts with
    ``prefix`` and that holds NaN or inf; other entries are not looked at."""
    for key, value in state_dict.items():
        if not (key.startswith(prefix) and isinstance(value, torch.Tensor) and value.is_floating_point()
                and not value.is_meta):
            continue
        if not bool(torch.isfinite(value).all()):
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            raise QuantizerStateError(f"{key} must be finite, got {nan} NaN and {inf} inf among its "
                                      f"{value.numel()} values")


def check_step_counter(key: str, value: Any) -> None:
    """QuantizerStateError naming ``key`` unless ``value`` (a one-element tensor) holds an integer >= 0;
    a float with a fractional part, NaN, inf and a bool are refused. Other shapes are left to
    ``load_state_dict``'s shape check."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_meta:
        return
    number = value.item()
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        shown = repr(number)
    elif isinstance(number, float) and not number.is_integer():
        shown = f"{number!r} (a {value.dtype} tensor, not truncated)"
    elif number >= 0:
        return
    else:
        shown = repr(int(number))
    raise QuantizerStateError(f"{key} must be an integer >= 0 (optimizer steps), got {shown}")


def code_perplexity(counts: torch.Tensor, total: int) -> torch.Tensor:
    """exp(H) of one forward's selection frequencies p = ``counts`` (K,) / ``total`` (the number of
    latents), H = -sum_k p_k log p_k with 0 log 0 = 0: 1 when every latent selected the same code, K
    when all K codes were selected equally often. A 0-dim tensor in the dtype of ``counts``."""
    p = counts / total
    return torch.exp(-torch.special.xlogy(p, p).sum())


class QuantizerContract:
    """Mixin for ``VectorQuantizer2`` subclasses (uses ``n_e``, ``e_dim``, ``remap``, ``remap_to_used``,
    ``sane_index_shape``; :meth:`vq_loss` also ``beta`` and ``legacy``). ``_passive`` is True inside
    :meth:`passive`."""

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

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """Validate this quantiser's entries of ``state_dict`` (see the module docstring), then load as
        ``nn.Module`` does. Runs before the submodules' (``embedding``) entries are loaded."""
        own = {prefix + name for name in self.state_dict(keep_vars=True)}
        check_finite_state({key: value for key, value in state_dict.items() if key in own})
        buffers = dict(self.named_buffers(recurse=False))
        for name in STEP_COUNTERS:
            if name in buffers and prefix + name in state_dict:
                check_step_counter(prefix + name, state_dict[prefix + name])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def check_input(self, z: torch.Tensor, temp, rescale_logits, return_logits) -> None:
        """ValueError unless z is (B, e_dim, H, W) and temp / rescale_logits / return_logits are
        at their defaults (they exist for GumbelQuantize's interface only)."""
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError("temp, rescale_logits and return_logits exist only for interface "
                             "compatibility with GumbelQuantize: leave them at their defaults")
        if z.ndim != 4 or z.shape[1] != self.e_dim:
            raise ValueError(f"{type(self).__name__} expects z of shape (B, e_dim={self.e_dim}, H, W), "
                             f"got {tuple(z.shape)}")

    def vq_loss(self, z_q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """taming's ``VectorQuantizer2`` loss of the latents ``z`` and their codes ``z_q`` (same shape and
        dtype; a caller that computes in another dtype casts both first): the commitment term
        ``mean((sg[z_q] - z)^2)``, which trains the encoder, and the codebook term ``mean((z_q - sg[z])^2)``,
        which trains the codes; ``legacy=True`` (taming's default) puts ``beta`` on the codebook term,
        ``legacy=False`` on the commitment term (docs/METHOD.md section 2). Uses ``beta`` and ``legacy``."""
        commitment = torch.mean((z_q.detach() - z) ** 2)
        codebook = torch.mean((z_q - z.detach()) ** 2)
        return commitment + self.beta * codebook if self.legacy else self.beta * commitment + codebook

    def selection_perplexity(self, indices: torch.Tensor) -> torch.Tensor:
        """:func:`code_perplexity` of the selected codes ``indices`` (N,) among the ``n_e`` codes, counted
        exactly (``bincount``) and taken in float32."""
        return code_perplexity(torch.bincount(indices, minlength=self.n_e).to(torch.float32), indices.shape[0])

    def output_indices(self, indices: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """Apply taming's remap and index shape conventions to the selected codes (N,), given the
        output z_q (B, e_dim, H, W): (N,), (N, 1) with remap, or (B, H, W) with sane_index_shape."""
        if self.remap is not None:
            indices = self.remap_to_used(indices.reshape(z_q.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            indices = indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return indices
