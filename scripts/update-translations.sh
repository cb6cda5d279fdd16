#!/usr/bin/env bash
# Bring the Chinese catalogues up to date with the English text: extract every page's messages (headings,
# prose, admonitions, dropdowns; no code, no outputs, nothing executed) and merge them into
# locale/zh_CN/LC_MESSAGES. A changed English paragraph becomes "fuzzy" there and shows in English until
# someone translates it again; tests/test_translations.py fails until then.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
conf=$(bash scripts/sphinx-conf.sh)
rm -rf _build/gettext
sphinx-build -q -b gettext -c "$conf" -d _build/.doctrees-gettext -D nb_execution_mode=off . _build/gettext
sphinx-intl update -p _build/gettext -l zh_CN -d locale -w 0 >/dev/null
echo "corolab: catalogues updated under locale/zh_CN/LC_MESSAGES ($(find _build/gettext -name '*.pot' | wc -l) pages)"
