#!/usr/bin/env bash
# Open JupyterLab with every chapter (MyST Markdown) opening as a notebook, thanks to jupytext.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
settings=.venv/share/jupyter/lab/settings
mkdir -p "$settings"
cat > "$settings/overrides.json" <<'JSON'
{
  "@jupyterlab/docmanager-extension:plugin": {
    "defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}
  }
}
JSON
# Jupyter refuses to start as root ("Running as root is not recommended"); containers and many lab machines
# run everything as root, so pass --allow-root there and only there.
root_flag=()
if [ "$(id -u)" = 0 ]; then root_flag=(--allow-root); fi
exec jupyter lab --ip 127.0.0.1 "${root_flag[@]}" "$@"
