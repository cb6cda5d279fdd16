#!/usr/bin/env bash
# Write _build/sphinx-conf/conf.py: the Sphinx configuration Jupyter Book builds from _config.yml, for the
# builds jupyter-book cannot run itself (the gettext catalogues and the Chinese edition). Paths in it are made
# absolute because sphinx-build reads it from that folder, not from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
conf=_build/sphinx-conf
mkdir -p "$conf"
rm -f conf.py
jupyter-book config sphinx . >/dev/null
mv conf.py "$conf/conf.py"
cat >> "$conf/conf.py" <<PY

# Added by scripts/sphinx-conf.sh
import os
import sys

_root = $(python -c 'import os, sys; print(repr(os.getcwd()))')
sys.path.insert(0, os.path.join(_root, "_ext"))
external_toc_path = os.path.join(_root, "_toc.yml")
html_static_path = [os.path.join(_root, "_static")]
html_css_files = ["wrap.css"]
# The English build's notebooks, executed once: the Chinese edition reads them from this cache.
nb_execution_cache_path = os.path.join(_root, "_build", ".jupyter_cache")
locale_dirs = [os.path.join(_root, "locale")]
gettext_compact = False       # one catalogue per page: locale/zh_CN/LC_MESSAGES/book/part1-generators/01-iteration.po
gettext_location = False      # no source line numbers in the catalogues, so an edit elsewhere changes nothing
gettext_uuid = False
PY
echo "$conf"
