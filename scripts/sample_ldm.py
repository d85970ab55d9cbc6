"""DDIM samples of a trained LatentDiffusion to a grid and a PNG folder (for FID).

Same as the ``arcvq-sample-ldm`` command; see ``python scripts/sample_ldm.py --help`` and
:mod:`arcvq_plugin.ldm.sample`.
"""
import sys

from arcvq_plugin.ldm.sample import main

if __name__ == "__main__":
    sys.exit(main())
