#!/usr/bin/env python
"""Convert a pretrained VQGAN / LDM checkpoint to ArcVQ: same as ``arcvq-convert`` (see --help)."""
import sys

from arcvq_plugin.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
