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
exec jupyter lab --ip 127.0.0.1 "$@"
