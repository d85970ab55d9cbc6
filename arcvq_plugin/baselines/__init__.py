"""Baseline quantisers with taming's ``VectorQuantizer2`` contract, for comparisons with ArcVQ.

    ClusteredQuantizer         CVQ-VAE's online clustered codebook (Zheng and Vedaldi 2023)
    SimVQ                      a frozen random codebook through a learned linear map (Zhu et al. 2024)
    IndexPropagationQuantizer  IBQ: the selection's one-hot made differentiable (Shi et al. 2024)
    FSQ                        finite scalar quantisation, an implicit codebook (Mentzer et al. 2024)
"""
from __future__ import annotations

from .clustered_quantizer import ClusteredQuantizer
from .fsq import FSQ
from .index_propagation import IndexPropagationQuantizer
from .simvq import SimVQ

__all__ = ["FSQ", "ClusteredQuantizer", "IndexPropagationQuantizer", "SimVQ"]
