"""Baseline quantisers with taming's ``VectorQuantizer2`` contract, for comparisons with ArcVQ.

    arcvq_plugin.baselines.ClusteredQuantizer   CVQ-VAE's online clustered codebook (Zheng and Vedaldi 2023)
"""
from __future__ import annotations

from .clustered_quantizer import ClusteredQuantizer

__all__ = ["ClusteredQuantizer"]
