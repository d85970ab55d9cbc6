#!/usr/bin/env bash
# The README's main job: set up the environment if needed, then run the four-row VQ-VAE ablation
# (vanilla VQ, cosine only, + BBNR, ArcVQ) on the embedded MNIST and print the paper's table.
# Extra arguments go to `python -m arcvq_plugin.vqvae.reproduce` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_env.sh
exec "${ARCVQ_VENV:-.venv}/bin/python" -m arcvq_plugin.vqvae.reproduce "$@"
