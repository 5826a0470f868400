#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), lints (ruff check + format), and runs the whole test suite: unit tests and
# the real local-Ray ones. Extra arguments go to pytest (e.g. -m "not cluster" for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -v --timeout=900 "$@"
