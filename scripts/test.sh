#!/usr/bin/env bash
# The whole test suite: set-up, the book built with execution from scratch, then pytest (package tests,
# lab grading in both directions, the real-browser check of the built book).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/build-book.sh --fresh
python -m pytest "$@"
# The portable paths (README, "Portable paths"): the model tests that check replies, once more with no fused
# kernels and no torch._int_mm. Left out: the kernels' own test (it needs them), the quality measures of int8
# and int4 and bfloat16 (none path-dependent): about 6 minutes on the busy 2-core machine.
COROLAB_PORTABLE=1 python -m pytest -m model -q -p no:cacheprovider \
  -k "not uses_the_kernels and not costs_little_quality and not costs_bounded_quality and not bfloat16"
