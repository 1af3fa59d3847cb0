# Shared setup for scripts/bench-vs-*.sh (sourced, not run). Every step is cached and skipped when
# its result exists, so re-running a benchmark only measures.
#
# Environment (all optional):
#   BENCH_DIR         cache root (default ~/.cache/ziya-visual/bench): models, results
#   LLAMACPP_DIR      llama.cpp source + build (default $BENCH_DIR/llamacpp)
#   VENV              Python venv for the converter and HF (default $BENCH_DIR/venv)
#   LLAMA_CPP_PYTHON  llama-cpp-python sdist version carrying llama.cpp (default 0.3.36)
#   CARGO_TARGET_DIR  where our release binary is built (default: the repo's target/)
#   THREADS           compute threads on both sides (default 2)
#   ROUNDS            interleaved rounds (default 3)

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BENCH_DIR="${BENCH_DIR:-$HOME/.cache/ziya-visual/bench}"
mkdir -p "$BENCH_DIR"
BENCH_DIR="$(realpath "$BENCH_DIR")"
LLAMACPP_DIR="$(realpath -m "${LLAMACPP_DIR:-$BENCH_DIR/llamacpp}")"
VENV="$(realpath -m "${VENV:-$BENCH_DIR/venv}")"
LLAMA_CPP_PYTHON="${LLAMA_CPP_PYTHON:-0.3.36}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
OURS="${CARGO_TARGET_DIR:-$REPO/target}/release/ziya-visual"
PY="$VENV/bin/python"

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# llama.cpp from the llama-cpp-python sdist on PyPI (it vendors llama.cpp), built with Debian's cmake.
ensure_llamacpp() {
  if [ -x "$LLAMACPP_DIR/build/bin/llama-bench" ] && [ -x "$LLAMACPP_DIR/build/bin/llama-quantize" ]; then
    return
  fi
  command -v cmake >/dev/null || {
    log "installing cmake (Debian)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake
  }
  ensure_venv
  mkdir -p "$LLAMACPP_DIR/sdist"
  local tarball="$LLAMACPP_DIR/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
  if [ ! -f "$tarball" ]; then
    log "downloading llama-cpp-python $LLAMA_CPP_PYTHON sdist"
    "$VENV/bin/pip" download -q --no-binary :all: --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$LLAMACPP_DIR/sdist"
  fi
  if [ ! -f "$LLAMACPP_DIR/src/CMakeLists.txt" ]; then
    tar xzf "$tarball" -C "$LLAMACPP_DIR"
    ln -sfn "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp" "$LLAMACPP_DIR/src"
  fi
  log "building llama.cpp (llama-bench, llama-quantize): ~15 min on 2 cores"
  # This machine's x86 features one by one rather than GGML_NATIVE=ON: -march=native also turns on
  # ggml's AMX kernels, which die with SIGILL in prompt processing on our VMs (cpuinfo lists AMX).
  # AVX512-BF16 is left off: sgemm.cpp does not compile with it under gcc 12 (and bf16 is unused).
  local x86=""
  if [ "$(uname -m)" = x86_64 ]; then
    has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
    x86="-DGGML_NATIVE=OFF -DGGML_SSE42=$(has sse4_2) -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) \
      -DGGML_BMI2=$(has bmi2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c) -DGGML_AVX_VNNI=$(has avx_vnni) \
      -DGGML_AVX512=$(has avx512bw) -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni) \
      -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  fi
  # shellcheck disable=SC2086
  cmake -S "$LLAMACPP_DIR/src" -B "$LLAMACPP_DIR/build" -DCMAKE_BUILD_TYPE=Release ${x86:--DGGML_NATIVE=ON} \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null
  cmake --build "$LLAMACPP_DIR/build" -j"$(nproc)" --target llama-bench llama-quantize >/dev/null
}

# The pinned fixture requirements (torch, transformers, safetensors, sentencepiece) plus llama.cpp's
# gguf-py for its converter.
ensure_venv() {
  [ -f "$VENV/.bench-ready" ] && return
  log "creating the Python venv $VENV"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$REPO/tests/fixtures/requirements.txt"
  touch "$VENV/.bench-ready"
}

ensure_gguf_py() {
  ensure_venv
  "$PY" -c "import gguf" 2>/dev/null || "$VENV/bin/pip" install -q "$LLAMACPP_DIR/src/gguf-py"
}

build_ours() {
  log "building ziya-visual (release)"
  (cd "$REPO" && cargo build --release --quiet --bin ziya-visual)
}

# Median of the numbers on stdin.
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
