"""ArcVQ for taming-transformers: the VQGAN model and its offline VQGAN loss.

- :class:`VQModel` (``arcvq_plugin.taming.VQModel``): taming's VQGAN + ``quantizer_config``,
  trained under pytorch-lightning 2.x with manual optimisation.
- :class:`VQLPIPSWithDiscriminator`: taming's loss whose LPIPS weights are read from disk
  (never downloaded) and which builds no LPIPS at ``perceptual_weight: 0``.
- :class:`LPIPSWeightsMissingError`: raised, with the fix, when the LPIPS weights are missing.
"""
from .losses import VQLPIPSWithDiscriminator
from .perceptual import LPIPSWeightsMissingError
from .vqgan import VQModel

__all__ = ["LPIPSWeightsMissingError", "VQLPIPSWithDiscriminator", "VQModel"]
