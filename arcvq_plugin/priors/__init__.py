"""Priors over VQ token grids (the paper's Appendix D.5): does a tokenizer's code make generation easier?

- ``GatedPixelCNN`` (gated_pixelcnn.py): a small gated PixelCNN over (h, w) grids of code indices.
- ``train_prior`` / ``nll_bits_per_token`` (training.py): Adam on exported token grids; NLL in bits per token.
- ``sample_grids`` (sampling.py): ancestral sampling in raster order.
- ``generation_fid`` (sample_fid.py): FID of decoded samples against a dataset split.
- ``arcvq-prior train | sample | table`` (cli.py; ``python -m arcvq_plugin.priors``).
"""
from arcvq_plugin.priors.gated_pixelcnn import GatedLayer, GatedPixelCNN
from arcvq_plugin.priors.sampling import sample_grids
from arcvq_plugin.priors.training import nll_bits_per_token, train_prior

__all__ = ["GatedLayer", "GatedPixelCNN", "nll_bits_per_token", "sample_grids", "train_prior"]
