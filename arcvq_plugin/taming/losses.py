"""taming's VQGAN loss with an offline perceptual term that is built only when it is used.

``arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator`` is taming's
``VQLPIPSWithDiscriminator`` (same arguments, forward, adaptive weight, state_dict keys) with two
differences in construction only:

- ``perceptual_weight > 0``: the LPIPS module is :class:`~arcvq_plugin.taming.perceptual.OfflineLPIPS`,
  which raises :class:`~arcvq_plugin.taming.perceptual.LPIPSWeightsMissingError` with the fix
  when the VGG16 weights are missing, instead of downloading them;
- ``perceptual_weight == 0``: no LPIPS is built (upstream builds and downloads it anyway), so such
  configs train on a machine without any weights. ``perceptual_loss`` is then a
  :class:`DisabledPerceptualLoss` without parameters (no ``loss.perceptual_loss.*`` keys).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from taming.modules.losses import vqperceptual
from torch import nn

from arcvq_plugin.validation import check_choice, check_int, check_real

from .perceptual import OfflineLPIPS

__all__ = ["DisabledPerceptualLoss", "VQLPIPSWithDiscriminator"]


class DisabledPerceptualLoss(nn.Module):
    """Stands in for LPIPS when ``perceptual_weight == 0``; calling it is an error."""

    def forward(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the perceptual loss was not built because perceptual_weight == 0; "
                           "build the loss with perceptual_weight > 0 to use it")


@contextlib.contextmanager
def _lpips_factory(factory: Callable[[], nn.Module]) -> Iterator[None]:
    """Make upstream's ``VQLPIPSWithDiscriminator.__init__`` build ``factory()`` instead of ``LPIPS()``."""
    original = vqperceptual.LPIPS
    vqperceptual.LPIPS = factory
    try:
        yield
    finally:
        vqperceptual.LPIPS = original


class VQLPIPSWithDiscriminator(vqperceptual.VQLPIPSWithDiscriminator):
    """taming's VQGAN loss (L1 + perceptual + hinge/vanilla GAN with adaptive weight + codebook loss).

    Args: as upstream. ``disc_start``: the discriminator (and the generator's GAN term) is off
    while the step passed to ``forward`` is below it; :class:`arcvq_plugin.taming.VQModel` passes
    the number of training batches (see its docs), not Lightning's ``global_step``.
    ``perceptual_weight >= 0``: 0 builds no LPIPS at all.
    """

    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 disc_num_layers: int = 3, disc_in_channels: int = 3, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, perceptual_weight: float = 1.0, use_actnorm: bool = False,
                 disc_conditional: bool = False, disc_ndf: int = 64, disc_loss: str = "hinge") -> None:
        check_int("disc_start", disc_start, minimum=0)
        check_real("perceptual_weight", perceptual_weight, minimum=0.0)
        check_choice("disc_loss", disc_loss, ("hinge", "vanilla"))
        check_int("disc_num_layers", disc_num_layers, minimum=1)
        check_int("disc_ndf", disc_ndf, minimum=1)
        factory = OfflineLPIPS if perceptual_weight > 0 else DisabledPerceptualLoss
        with _lpips_factory(factory):
            super().__init__(disc_start, codebook_weight=codebook_weight,
                             pixelloss_weight=pixelloss_weight, disc_num_layers=disc_num_layers,
                             disc_in_channels=disc_in_channels, disc_factor=disc_factor,
                             disc_weight=disc_weight, perceptual_weight=perceptual_weight,
                             use_actnorm=use_actnorm, disc_conditional=disc_conditional,
                             disc_ndf=disc_ndf, disc_loss=disc_loss)
