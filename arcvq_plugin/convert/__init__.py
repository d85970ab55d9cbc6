"""Convert pretrained taming VQGAN / latent-diffusion VQ checkpoints to ArcVQ (``arcvq-convert``).

- :func:`convert_checkpoint`: checkpoint + yaml + JSON report, written atomically after verification;
  returns the report as a :class:`ConversionReport`.
- :func:`detect_layout`: recognise the architecture from keys and shapes.
- :func:`codebook_statistics`, :func:`clock_start`: the codebook under ArcVQ's geometry.
- :class:`ConversionError`: why a checkpoint cannot be converted (a ``ValueError``).
"""
from .checkpoint_io import ConversionError
from .codebook import clock_start, codebook_statistics
from .converter import ConversionReport, convert_checkpoint
from .layout import KNOWN_LAYOUTS, VQLayout, detect_layout

__all__ = ["ConversionError", "ConversionReport", "KNOWN_LAYOUTS", "VQLayout", "clock_start", "codebook_statistics",
           "convert_checkpoint", "detect_layout"]
