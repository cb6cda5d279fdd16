#!/usr/bin/env bash
# Build the Chinese edition (中文版) into _build/html/zh/, after scripts/build-book.sh has built the English one.
# The prose comes from the catalogues in locale/zh_CN/LC_MESSAGES; code and outputs are the English build's,
# read from its cache (_build/.jupyter_cache). Nothing is executed: this script fails if a notebook was.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
start=$(date +%s)
conf=_build/sphinx-conf-zh
mkdir -p "$conf"
cp "$(bash scripts/sphinx-conf.sh)/conf.py" "$conf/conf.py"
cat >> "$conf/conf.py" <<'PY'

# The Chinese edition (scripts/build-zh.sh). The theme's own strings come from its zh_CN catalogue; the search
# box's placeholder is a theme option (Jupyter Book's "Search this book..."), so it is set here.
language = "zh_CN"
html_theme_options = {**html_theme_options, "search_bar_text": "搜索本书……"}
PY
log=_build/zh-build.log
# Built beside the English tree, then copied into it: MyST-NB writes each page's executed notebook next to
# the output folder (_build/zh/jupyter_execute), which must not land inside the published English tree.
# -W: a translation that breaks a reference or a role is a warning, and any warning fails the build.
# -E: every page is read afresh (a minute), so the log shows where each notebook's outputs came from.
if ! sphinx-build -b html -c "$conf" -d _build/.doctrees-zh -E -W -n --keep-going \
    . _build/zh/html > "$log" 2>&1; then
  tail -40 "$log"
  echo "corolab: the Chinese edition failed to build; the whole log is in $log"
  exit 1
fi
executed=$(grep -c "Executing notebook" "$log" || true)
cached=$(grep -c "Using cached notebook" "$log" || true)
if [ "$executed" != 0 ]; then
  grep -B2 "Executing notebook" "$log" | head -20
  echo "corolab: the Chinese edition executed $executed notebook(s); it must read them all from the English build's cache"
  exit 1
fi
rm -rf _build/html/zh
cp -a _build/zh/html _build/html/zh
# The English root's index.html sends a reader to the first page; the Chinese edition gets the same.
cp _build/html/index.html _build/html/zh/index.html
echo "corolab: Chinese edition built in $(( $(date +%s) - start )) s ($cached notebooks from the cache, none executed)." \
  "Open $(pwd)/_build/html/zh/index.html"
