#!/usr/bin/env bash
# The whole test suite: set-up, the book built with execution from scratch, then pytest (package tests,
# lab grading in both directions, the real-browser check of the built book).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/build-book.sh --fresh
python -m pytest "$@"
