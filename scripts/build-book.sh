#!/usr/bin/env bash
# Build the executed HTML book. Cells run at build time; results are cached in _build/.jupyter_cache so a
# rebuild only re-runs the chapters you changed. Pass --fresh to execute everything from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ "${1:-}" = "--fresh" ]; then rm -rf _build; fi
start=$(date +%s)
# -W: any Sphinx warning fails the build; -n: broken references are warnings too.
jupyter-book build . -W -n --keep-going
echo "corolab: book built in $(( $(date +%s) - start )) s. Open $(pwd)/_build/html/index.html"
