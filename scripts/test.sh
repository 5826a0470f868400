#!/usr/bin/env bash
# Installs everything (scripts/setup.sh, and the headless browser of the browser tests: scripts/setup_browser.sh),
# lints (ruff check + format), and runs the whole test suite: unit tests, the real local-Ray ones and the browser
# ones. Extra arguments go to pytest (e.g. -m "not cluster" for the fast tier).
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser comes from apt and the rest from PyPI (and a compiler): installed side by side.
bash scripts/setup_browser.sh &
browser_setup=$!
bash scripts/setup.sh
wait "$browser_setup"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -v --timeout=900 "$@"
