"""The paper's small VQ-VAE for MNIST / CIFAR-10 and its four-row quantiser ablation.

- ``VQVAE`` (model.py): the van den Oord network as a LightningModule with a ``quantizer_config``.
- ``Encoder`` / ``Decoder`` (networks.py): the network halves.
- ``reproduce`` (reproduce.py): ``arcvq-reproduce`` / ``python -m arcvq_plugin.vqvae.reproduce``,
  trains the ablation rows of configs/vqvae/ on embedded MNIST and writes the table and figures.
"""
from arcvq_plugin.vqvae.model import VQVAE
from arcvq_plugin.vqvae.networks import Decoder, Encoder, ResidualBlock, ResidualStack

__all__ = ["VQVAE", "Decoder", "Encoder", "ResidualBlock", "ResidualStack"]
