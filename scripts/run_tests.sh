#!/usr/bin/env bash
# The test command of the README: set up the environment if needed, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_env.sh
exec "${ARCVQ_VENV:-.venv}/bin/python" -m pytest -q tests "$@"
