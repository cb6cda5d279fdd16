#!/usr/bin/env bash
# Build the executed HTML book. Cells run at build time; results are cached in _build/.jupyter_cache so a
# rebuild only re-runs the chapters you changed. Pass --fresh to execute everything from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ "${1:-}" = "--fresh" ]; then rm -rf _build; fi
start=$(date +%s)
# Clean pages (tests/test_book_clean_pages.py): convert the embedded model and build the fused kernels here,
# once, so no chapter shows their progress bars or build message; and no Hugging Face progress bars or
# transformers warnings in the chapters' kernels, which inherit this environment.
corolab model convert >/dev/null
python -c "from corolab.serving.backends.cpu.kernels import ops; ops()"
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error
# -W: any Sphinx warning fails the build; -n: broken references are warnings too.
jupyter-book build . -W -n --keep-going
echo "corolab: book built in $(( $(date +%s) - start )) s. Open $(pwd)/_build/html/index.html"
# The Chinese edition: the same pages with the prose from locale/zh_CN, outputs from this build's cache.
bash scripts/build-zh.sh
