#!/usr/bin/env bash
# The GPU check, in one run on a machine with an NVIDIA GPU (an H200: sm_90) and no package registry:
#   1. installs the carried wheels and this project into a scratch folder (offline),
#   2. builds llama.cpp's shared libraries with CUDA for the GPU's own architecture only,
#   3. loads llama-cpp-python's pure-Python package against them (LLAMA_CPP_LIB_PATH) and checks the
#      GPU is used (offload supported, backend CUDA, `nudge-local doctor`),
#   4. runs the model tests with full offload (the default where the build can offload),
#   5. runs the benchmark on generated pairs and prints the ratios to base only.
# Every step has a time budget and prints its elapsed time; the whole stays under 8 minutes.
#
# Needs .device/, made here by `bash scripts/prepare_device.sh` and carried along (ignored by git).
# Usage, from the repository root on the GPU machine:
#   bash scripts/device_check.sh            # $OUT, when set, receives the logs and bench.json
# Settings: NUDGE_DEVICE_DIR (.device), NUDGE_DEVICE_WORK (/tmp/nudge-device), CUDA_ARCH (90),
#   PYTHON (python3), NUDGE_DEVICE_BUDGET (total seconds, 460), NUDGE_DEVICE_CMAKE_ARGS (more CMake options).
set -u -o pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dev=${NUDGE_DEVICE_DIR:-$root/.device}
work=${NUDGE_DEVICE_WORK:-/tmp/nudge-device}
arch=${CUDA_ARCH:-90}
py=${PYTHON:-python3}
total=${NUDGE_DEVICE_BUDGET:-460}
jobs=$(nproc 2>/dev/null || echo 8)
start=$SECONDS

refuse() { # one sentence, exit code 2
  echo "device_check.sh: $1" >&2
  exit 2
}

# --- what must be there before anything runs ----------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1 || ! gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader 2>/dev/null) || [ -z "$gpu" ]; then
  refuse "no NVIDIA GPU is present here (nvidia-smi is missing or fails), so there is nothing to check; run it on the GPU machine."
fi
if [ ! -f "$dev/llama.cpp/CMakeLists.txt" ] || [ ! -d "$dev/python/llama_cpp" ] || ! ls "$dev"/wheels/*.whl >/dev/null 2>&1; then
  refuse "the prepared folder $dev is missing or incomplete; run bash scripts/prepare_device.sh on a machine with a package registry and carry .device along."
fi
nvcc=$(command -v nvcc 2>/dev/null || true)
for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
  [ -z "$nvcc" ] && [ -x "$c" ] && nvcc=$c
done
[ -n "$nvcc" ] || refuse "no CUDA compiler (nvcc) was found on PATH or in /usr/local/cuda*/bin, so llama.cpp cannot be built with CUDA here."
# cmake and ninja may come with the Python environment (pip packages): its bin folder goes on PATH
pybin=$(command -v "$py" 2>/dev/null) && PATH=$(dirname "$pybin"):$PATH
command -v cmake >/dev/null 2>&1 || refuse "cmake is not installed here, so llama.cpp cannot be built."
generator=Ninja
command -v ninja >/dev/null 2>&1 || generator="Unix Makefiles"
lacks=$("$py" -c '
import importlib.util as u, sys
need = ["pip", "numpy", "yaml", "jinja2", "huggingface_hub", "psutil", "typing_extensions", "tqdm", "requests",
        "pygments", "packaging"]
gone = [m for m in need if u.find_spec(m) is None]
if sys.version_info < (3, 11):
    print(f"is Python {sys.version.split()[0]}, older than the 3.11 this check needs")
elif gone:
    print("lacks " + ", ".join(gone) + ", which this check does not carry (add them to scripts/prepare_device.sh)")
' 2>/dev/null) || lacks="does not run"
[ -z "$lacks" ] || refuse "$py $lacks."

out=${OUT:-$work/out}
site=$work/site
build=$work/build
# The build folder stays: a second run on a machine still warm resumes a build that ran out of time.
rm -rf "$site" "$work/cuda-extra" "$work/cuda-flags"
mkdir -p "$work" "$out"
[ -f "$build/CMakeCache.txt" ] && echo "resuming the build in $build, left by an earlier run"
echo "GPU: $gpu"
echo "nvcc: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*')); cmake: $(cmake --version | head -1); $("$py" -V) at $(command -v "$py"); $jobs cores"

# --- steps with budgets ---------------------------------------------------------------------------
summary=()
failed=0
step() { # step NAME BUDGET FUNCTION: runs with min(budget, time left); records ok / failed / timed out
  local name=$1 budget=$2 left t0 rc took verdict
  left=$((start + total - SECONDS))
  ((budget > left)) && budget=$left
  if ((budget < 10)); then
    summary+=("$(printf '%-10s skipped: the %ss budget is spent' "$name" "$total")")
    failed=1
    return 1
  fi
  echo
  echo "=== $name (budget ${budget}s)"
  t0=$SECONDS
  # timeout kills the whole process group (cmake, ninja, nvcc, pytest) when the budget runs out
  timeout --kill-after=10 "$budget" bash -c "$3"
  rc=$?
  took=$((SECONDS - t0))
  if ((rc == 0)); then
    verdict=ok
  elif ((rc == 124 || rc == 137)); then
    verdict="TIMED OUT"
  else
    verdict="FAILED (exit $rc)"
  fi
  echo "=== $name: $verdict in ${took}s (total $((SECONDS - start))s)"
  summary+=("$(printf '%-10s %-18s %4ss' "$name" "$verdict" "$took")")
  ((rc == 0)) || failed=1
  return $rc
}
finish() {
  echo
  echo "=== summary (${total}s budget)"
  printf '%s\n' "${summary[@]}"
  echo "total: $((SECONDS - start))s"
  exit $failed
}
logged() { # logged LOG COMMAND...: the whole output to $out/LOG, its last 40 lines on failure
  local log=$out/$1 rc
  shift
  "$@" >"$log" 2>&1
  rc=$?
  ((rc == 0)) || tail -n 40 "$log"
  return $rc
}

install() {
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$dev"/wheels/*.whl &&
    # the project itself, built offline with the carried setuptools; -P keeps the source tree off sys.path
    "$py" -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --find-links "$dev/buildreq" \
      --target "$site" "$root"
}

find_cuda_libs() { # cuBLAS and the driver library where the toolkit lacks them: extra CMake flags, one a line
  local tk inc lib drv f roots
  tk=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
  if [ ! -f "$tk/include/cublas_v2.h" ]; then # a toolkit assembled from wheels: cuBLAS may sit in a Python package
    roots=$("$py" -c 'import nvidia; print(*nvidia.__path__)' 2>/dev/null)
    # shellcheck disable=SC2086 # roots: folders, one a word
    inc=$(find $roots "$tk"/ /usr/local /opt /usr/include /usr/lib -name cublas_v2.h 2>/dev/null | head -n 1)
    [ -n "$inc" ] || { echo "cuBLAS (cublas_v2.h) is nowhere on this machine" >&2; return 1; }
    inc=$(dirname "$inc")
    lib=$(find "$(dirname "$inc")" -name 'libcublas.so*' 2>/dev/null | head -n 1)
    [ -n "$lib" ] || { echo "cuBLAS headers are in $inc but libcublas.so is not beside them" >&2; return 1; }
    lib=$(dirname "$lib")
    mkdir -p "$work/cuda-extra"
    for f in "$lib"/libcublas*.so*; do # the wheels hold libcublas.so.13 only: add the names the linker looks for
      ln -sf "$f" "$work/cuda-extra/$(basename "$f")"
      ln -sf "$f" "$work/cuda-extra/$(basename "$f" | sed 's/\.so\..*/.so/')"
    done
    echo "cuBLAS from $inc and $lib" >&2
    printf '%s\n' "-DCMAKE_CUDA_FLAGS=-I$inc" "-DCUDA_cublas_LIBRARY=$work/cuda-extra/libcublas.so" \
      "-DCUDA_cublasLt_LIBRARY=$work/cuda-extra/libcublasLt.so"
  fi
  if ! ls "$tk"/lib64/libcuda.so "$tk"/lib64/stubs/libcuda.so "$tk"/targets/*/lib/stubs/libcuda.so >/dev/null 2>&1; then
    drv=$(ls /usr/local/nvidia/lib64/libcuda.so* /usr/lib/x86_64-linux-gnu/libcuda.so* /usr/lib64/libcuda.so* \
      2>/dev/null | head -n 1)
    if [ -n "$drv" ]; then
      echo "driver library: $drv" >&2
      echo "-DCUDA_cuda_driver_LIBRARY=$drv"
    else
      echo "no libcuda.so to link: building without CUDA VMM (GGML_CUDA_NO_VMM)" >&2
      echo "-DGGML_CUDA_NO_VMM=ON"
    fi
  fi
}

configure() {
  local flags=()
  mapfile -t flags <"$work/cuda-flags"
  # FlashAttention kernels off (GGML_CUDA_FA=OFF): they are over a third of the CUDA compile time (~1400 of
  # ~4000 CPU-seconds for sm_90 alone, measured on the preparing machine), and the models tested and benchmarked
  # here run attention either way. NUDGE_DEVICE_CMAKE_ARGS=-DGGML_CUDA_FA=ON builds them (given last, it wins).
  # shellcheck disable=SC2206 # extra CMake options, one a word
  flags+=(${NUDGE_DEVICE_CMAKE_ARGS:-})
  logged configure.log cmake -S "$dev/llama.cpp" -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_CUDA_COMPILER="$nvcc" -DBUILD_SHARED_LIBS=ON \
    -DGGML_NATIVE=ON -DGGML_CCACHE=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DGGML_CUDA_FA=OFF "${flags[@]}" &&
    grep -E "CUDA Toolkit found|CMAKE_CUDA_ARCHITECTURES|Including CUDA backend" "$out/configure.log"
}

build() {
  logged build.log cmake --build "$build" --target llama -j "$jobs" &&
    ls -la "$build"/bin/lib*.so | awk '{print $5, $9}'
}

gpu_check() {
  "$py" -P - <<'EOF' || return 1
import os, sys
import llama_cpp
from nudge_local import devices
print(f"llama-cpp-python {llama_cpp.__version__} from {os.path.dirname(llama_cpp.__file__)}, "
      f"library from LLAMA_CPP_LIB_PATH={os.environ['LLAMA_CPP_LIB_PATH']}")
offload = bool(llama_cpp.llama_supports_gpu_offload())
backend = devices.backend()
print(f"llama_supports_gpu_offload: {offload}; nudge_local.engine.devices.backend(): {backend}; "
      f"gpu_layers(None): {devices.gpu_layers(None)}")
print(llama_cpp.llama_print_system_info().decode())
if not offload or backend != "CUDA":
    sys.exit("device_check.sh: this llama.cpp build does not offload to CUDA.")
EOF
  local doctor
  doctor=$("$py" -P -m nudge_local.cli doctor) || { echo "$doctor"; return 1; }
  echo "nudge-local doctor:"
  echo "$doctor" | head -n 5 | sed 's/^/  /'
  grep -q "^backend: CUDA" <<<"$doctor" || { echo "device_check.sh: nudge-local doctor does not say CUDA."; return 1; }
}

gpu_watch() { # samples the GPU while the tests and the benchmark run: proof that it is used
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 >"$out/gpu.csv" 2>/dev/null &
  watch_pid=$!
}
gpu_peak() {
  kill "$watch_pid" 2>/dev/null
  wait "$watch_pid" 2>/dev/null
  awk -F', *' '{if ($1 > u) u = $1; if ($2 > m) m = $2} END {printf "GPU while testing: peak utilization %s%%, peak memory %s MiB (%d samples)\n", u + 0, m + 0, NR}' "$out/gpu.csv"
}

tests() {
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$py" -P -m pytest -q -p no:cacheprovider \
    tests/test_model.py tests/test_token_mode.py tests/test_speculative.py tests/test_protocol.py
}

bench() {
  "$py" -P -m nudge_local.bench --agreement 0.5,0.7,0.9 --rounds 3 --json "$out/bench.json"
}

ratios() { # the paired ratios to base only, from bench.json, one line per generated pair
  [ -f "$out/bench.json" ] || return 0
  "$py" - "$out/bench.json" <<'EOF' || true
import json, sys
for pair, table in json.load(open(sys.argv[1])).items():
    cells = []
    for mode, row in table.items():
        r = row.get("ratio_to_base") if isinstance(row, dict) else None
        if mode != "base" and r is not None:
            rounds = row.get("ratio_to_base_rounds") or [r]
            cells.append(f"{mode} {r:.2f}x ({min(rounds):.2f}-{max(rounds):.2f})")
    print(f"{pair}: " + ", ".join(cells))
EOF
}

cd "$root" || exit 1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$site:$dev/python${PYTHONPATH:+:$PYTHONPATH}
export LLAMA_CPP_LIB_PATH=$build/bin # the folder that holds libllama.so (read in llama_cpp/llama_cpp.py)
export HF_HUB_OFFLINE=1
export root dev work site build out py nvcc arch jobs generator
export -f logged install configure build gpu_check tests bench

find_cuda_libs >"$work/cuda-flags" || refuse "cuBLAS was not found on this machine, so llama.cpp cannot be built with CUDA here."
[ -d "$work/cuda-extra" ] && export LD_LIBRARY_PATH=$work/cuda-extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# Budgets in seconds, each cut to what is left of $total: the build is most of it (~4000 CPU-seconds
# of nvcc for sm_90 without FlashAttention, ~250 s on 16 cores); the bench gets what the tests leave.
step install 60 install || finish
step configure 45 configure || finish
step build 320 build || { tail -n 3 "$out/build.log"; finish; }
step gpu 30 gpu_check || finish
gpu_watch
step tests 120 tests
step bench 200 bench
gpu_peak
echo
echo "=== ratios to base only, paired per round (speculative is where a GPU should pass 2x)"
ratios
finish
