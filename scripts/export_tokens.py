"""A dataset through a trained VQ tokenizer to token grids (.npy + .json sidecar), and back to images.

Same as the ``arcvq-tokens`` command::

    python scripts/export_tokens.py export --config <run>/configs/<stamp>-project.yaml \
        --ckpt <run>/checkpoints/last.ckpt --split validation --out tokens/val.npy
    python scripts/export_tokens.py decode --config ... --ckpt ... --tokens tokens/val.npy --out decoded/

See ``--help`` and :mod:`arcvq_plugin.tokens`.
"""
import sys

from arcvq_plugin.tokens import main

if __name__ == "__main__":
    sys.exit(main())
