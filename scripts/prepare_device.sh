#!/usr/bin/env bash
# Prepares .device/, the one ignored folder that scripts/device_check.sh needs on the GPU machine
# (which reaches no package registry and receives at most 64 MiB):
#
#   .device/llama.cpp/   the llama.cpp sources that llama-cpp-python==$LLAMA_CPP_VERSION ships, pruned to
#                        what CMake needs for libllama.so + libggml*.so with the CPU and CUDA backends
#                        (no bundled models, docs, examples, tests, tools or other GPU backends)
#   .device/python/      llama-cpp-python's pure-Python package (llama_cpp/), loaded with LLAMA_CPP_LIB_PATH
#   .device/wheels/      the few pure-Python wheels for Python 3.12 that the GPU machine lacks
#   .device/buildreq/    setuptools, to build this project there (pip install --no-index --find-links)
#
# Downloads ~80 MB (the sdist) once; not for CI. Usage:
#   bash scripts/prepare_device.sh            # LLAMA_CPP_SDIST=/path/to/llama_cpp_python-*.tar.gz reuses a download
set -euo pipefail

LLAMA_CPP_VERSION=0.3.36 # the pin in pyproject.toml
# Pure-Python wheels the GPU machine's python3 (3.12, with numpy, jinja2, PyYAML, huggingface-hub,
# psutil, typing-extensions, tqdm, requests, packaging, pygments) lacks, or has in another version.
WHEELS=(gguf==0.19.0 platformdirs==4.14.9 diskcache==5.6.3 pytest==8.4.2 pluggy==1.7.0 iniconfig==2.3.1)
BUILDREQ=(setuptools==84.2.1)

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${NUDGE_DEVICE_DIR:-$root/.device}
pip=(python3 -m pip)
[ -x "$root/.venv/bin/python" ] && pip=("$root/.venv/bin/python" -m pip)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$dest"
mkdir -p "$dest/wheels" "$dest/buildreq" "$dest/python"

sdist=${LLAMA_CPP_SDIST:-}
if [ -z "$sdist" ]; then
  echo "downloading the llama-cpp-python==$LLAMA_CPP_VERSION sdist (~77 MB)"
  "${pip[@]}" download -q --no-binary :all: --no-deps -d "$tmp/sdist" "llama-cpp-python==$LLAMA_CPP_VERSION"
  sdist=$(ls "$tmp"/sdist/llama_cpp_python-*.tar.gz)
fi
tar -xzf "$sdist" -C "$tmp"
src=$(ls -d "$tmp"/llama_cpp_python-*/)
grep -q "^Version: $LLAMA_CPP_VERSION\$" "$src/PKG-INFO" || {
  echo "prepare_device.sh: $sdist is not llama-cpp-python $LLAMA_CPP_VERSION." >&2
  exit 2
}

# The Python package: pure Python (it loads libllama.so from LLAMA_CPP_LIB_PATH, a folder).
cp -r "$src/llama_cpp" "$dest/python/llama_cpp"
rm -rf "$dest/python/llama_cpp/server" # needs FastAPI; nothing here imports it

# llama.cpp, whitelisted: the top-level CMake project, its cmake/ modules, include/, src/, vendor/
# (header-only libraries src/ and vendor/CMakeLists.txt reference) and ggml/ with the CPU and CUDA
# backends only. common/, tools/ (mtmd), examples, tests, docs and models (*.gguf) are left out:
# -DLLAMA_BUILD_COMMON=OFF (tests, examples, tools, server need common) builds none of them.
ll="$src/vendor/llama.cpp"
out="$dest/llama.cpp"
mkdir -p "$out"
cp "$ll/CMakeLists.txt" "$ll/LICENSE" "$out/"
cp -r "$ll/cmake" "$ll/include" "$ll/src" "$ll/vendor" "$ll/licenses" "$out/"
rm -rf "$out/vendor/cpp-httplib" # only for common
mkdir -p "$out/ggml/src"
cp -r "$ll/ggml/CMakeLists.txt" "$ll/ggml/cmake" "$ll/ggml/include" "$out/ggml/"
find "$ll/ggml/src" -maxdepth 1 -type f -exec cp {} "$out/ggml/src/" \;
cp -r "$ll/ggml/src/ggml-cpu" "$ll/ggml/src/ggml-cuda" "$out/ggml/src/"
[ -d "$ll/ggml/src/ggml-blas" ] && cp -r "$ll/ggml/src/ggml-blas" "$out/ggml/src/" # tiny; GGML_BLAS=OFF
find "$out" -name '*.gguf' -delete
find "$out" \( -name '*.md' -o -name '*.py' -o -name '.git*' \) -type f -delete
echo "$LLAMA_CPP_VERSION" >"$dest/llama.cpp/LLAMA_CPP_PYTHON_VERSION"

py=(--only-binary=:all: --no-deps --python-version 3.12 --implementation py --abi none --platform any)
"${pip[@]}" download -q "${py[@]}" -d "$dest/wheels" "${WHEELS[@]}"
"${pip[@]}" download -q "${py[@]}" -d "$dest/buildreq" "${BUILDREQ[@]}"

du -sh "$dest" "$dest"/*
echo "prepared $dest: carry it to the GPU machine (carry: [\"$(basename "$dest")\"]) and run scripts/device_check.sh there"
