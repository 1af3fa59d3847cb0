#!/usr/bin/env bash
# Builds ziya-visual with CUDA (`--features cuda`) into target/cuda/release/ziya-visual, on a
# machine with or without an NVIDIA driver or CUDA toolkit:
#
# - With no CUDA toolkit (no nvcc), installs CUDA 13.0 from PyPI wheels into a virtual
#   environment (pinned: the H100/H200 machines run driver 580 = CUDA 13.0, candle loads its
#   kernels as PTX so nvcc must not be newer than the driver, and cudarc 0.19 rejects 13.5).
# - Links against unversioned stubs of the CUDA libraries (libcuda from the cu* functions cudarc
#   declares; the toolkit's from the functions they export).
# - Links with lazy binding (-C relro-level=partial) and then removes the CUDA libraries from
#   the binary's load-time dependencies (patchelf): the binary opens them itself when asked to
#   use CUDA (src/device.rs, cuda_libs), so without a driver it runs on the CPU and says why
#   instead of dying in the dynamic loader.
#
# Environment: CUDA_COMPUTE_CAP (default 90 = H100/H200; 80 A100, 89 RTX 40xx, 86 RTX 30xx),
# ZIYA_CUDA_ENV (where to put the toolkit; default ~/.cache/ziya-visual/cuda-13.0).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

if command -v nvcc >/dev/null && [ -z "${ZIYA_CUDA_ENV:-}" ]; then
  CU="$(dirname "$(dirname "$(command -v nvcc)")")"
  echo "using the CUDA toolkit at $CU"
else
  env_dir="${ZIYA_CUDA_ENV:-$HOME/.cache/ziya-visual/cuda-13.0}"
  if [ ! -x "$env_dir/bin/python" ]; then
    echo "installing the CUDA 13.0 toolkit from PyPI into $env_dir (about 700 MB)…"
    python3 -m venv "$env_dir"
  fi
  "$env_dir/bin/pip" install -q --disable-pip-version-check \
    "cuda-toolkit[nvcc,nvvm,crt,cudart,cccl,cublas,curand,nvrtc]==13.0.2"
  CU="$("$env_dir/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
  # Earlier versions of this script added unversioned links here; they would let the linker
  # bind to the real libraries (with symbol versions) instead of the stubs below.
  for lib in cublas cublasLt cudart curand nvrtc; do
    [ -L "$CU/lib/lib$lib.so" ] && rm -f "$CU/lib/lib$lib.so"
  done
fi
lib_dir="$CU/lib"; [ -d "$CU/lib64" ] && lib_dir="$CU/lib64"

# Link against unversioned stubs of every CUDA library, so the binary's references carry no
# symbol versions and the libraries can be dropped from its load-time dependencies (a removed
# library whose versions are still required makes the loader abort). At run time the real
# libraries are opened globally and satisfy the references through their default versions.
stub_dir="$repo/target/cuda-stub"
mkdir -p "$stub_dir"
make_stub() { # soname, file with one function name per line
  sed 's/.*/void &(void) {}/' "$2" > "$stub_dir/$1.c"
  cc -shared -fPIC -Wl,-soname,"$1" -o "$stub_dir/$1" "$stub_dir/$1.c"
  ln -sf "$1" "$stub_dir/$(echo "$1" | sed 's/\.so\..*/.so/')"
}
# The driver's libcuda (no wheel has it): the cu* functions cudarc declares.
cudarc_src=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* 2>/dev/null | sort | tail -n 1 || true)
if [ -z "$cudarc_src" ]; then
  cargo fetch --quiet
  cudarc_src=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.* | sort | tail -n 1)
fi
grep -o -E 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_src/src/driver/sys/mod.rs" | awk '{print $4}' | sort -u > "$stub_dir/cuda.names"
make_stub libcuda.so.1 "$stub_dir/cuda.names"
# The toolkit's libraries: every function they export.
for lib in cublas cublasLt cudart curand nvrtc; do
  real=$(ls "$lib_dir/lib$lib.so."* 2>/dev/null | sort | head -n 1 || true)
  [ -n "$real" ] || { echo "lib$lib is missing from $lib_dir" >&2; exit 1; }
  soname=$(readelf -d "$real" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
  nm -D --defined-only "$real" | awk '$2 ~ /^[TWi]$/ {print $3}' | sed 's/@.*//' | sort -u > "$stub_dir/$lib.names"
  make_stub "$soname" "$stub_dir/$lib.names"
done
link_dirs=("$stub_dir")
echo "linking against stubs of libcuda, cublas, cublasLt, cudart, curand, nvrtc"

command -v patchelf >/dev/null || {
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y -qq patchelf >/dev/null
}

export PATH="$CU/bin:$PATH" CUDA_HOME="$CU" CUDA_PATH="$CU"
export LIBRARY_PATH="$(IFS=:; echo "${link_dirs[*]}")${LIBRARY_PATH:+:$LIBRARY_PATH}"
flags="-C relro-level=partial"
for d in "${link_dirs[@]}"; do flags="$flags -L native=$d"; done
RUSTFLAGS="$flags ${RUSTFLAGS:-}" cargo build --release --features cuda --target-dir target/cuda

bin="$repo/target/cuda/release/ziya-visual"
for needed in $(patchelf --print-needed "$bin" | grep -E '^lib(cuda|cublas|cublasLt|curand|nvrtc|cudart)\.so'); do
  patchelf --remove-needed "$needed" "$bin"
done
if readelf -V "$bin" | grep -qE 'File: lib(cuda|cublas|cublasLt|curand|nvrtc|cudart)\.so'; then
  echo "the binary still requires versioned CUDA symbols (it was linked against the real libraries," >&2
  echo "not the stubs in $stub_dir): it would not start without them" >&2
  exit 1
fi
echo "built $bin"
echo "load-time dependencies: $(patchelf --print-needed "$bin" | tr '\n' ' ')"
echo "at run time it needs the NVIDIA driver and these libraries on the loader path when --device cuda is used:"
echo "  LD_LIBRARY_PATH=$lib_dir"
