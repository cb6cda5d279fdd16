#!/usr/bin/env bash
# Bring the Chinese catalogues up to date with the English text: extract every page's messages (headings,
# prose, admonitions, dropdowns; no code, no outputs, nothing executed) and merge them into
# locale/zh_CN/LC_MESSAGES. A changed English paragraph becomes "fuzzy" there and shows in English until
# someone translates it again; tests/test_translations.py fails until then.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
conf=$(bash scripts/sphinx-conf.sh)
# Into _build/gettext/pot, not _build/gettext: MyST-NB writes each page's notebook to the output folder's
# parent (here, without outputs), and _build/jupyter_execute is the English build's, which the download
# menu offers to readers.
rm -rf _build/gettext
sphinx-build -q -b gettext -c "$conf" -d _build/gettext/.doctrees -D nb_execution_mode=off . _build/gettext/pot
sphinx-intl update -p _build/gettext/pot -l zh_CN -d locale -w 0 >/dev/null
echo "corolab: catalogues updated under locale/zh_CN/LC_MESSAGES ($(find _build/gettext/pot -name '*.pot' | wc -l) pages)"
