#!/usr/bin/env bash
# Set up everything on a fresh machine (virtualenv, NLTK data), then lint and run the tests.
# Extra arguments go to pytest, e.g. `scripts/run_tests.sh -m "not slow" -x`.
set -euo pipefail
source "$(dirname "$0")/env.sh"
catlip setup-nltk
echo "[catlip] ruff check"
ruff check .
ruff format --check .
echo "[catlip] pytest"
python -m pytest -q "$@"
