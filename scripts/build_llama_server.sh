#!/usr/bin/env bash
# Builds llama.cpp's own llama-server and rpc-server from the llama.cpp source that the pinned
# llama-cpp-python ships (its source package carries vendor/llama.cpp), once, into a cache outside
# the repository: ${NUDGE_LOCAL_LLAMA_SERVER_DIR:-~/.cache/nudge-local/llama.cpp-VERSION}/bin.
# Later runs find the binaries there and return at once (as pip keeps its built wheels).
# Prints the bin directory. About 6 minutes on 2 cores; needs cmake and a C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
VERSION=$("$PY" -c "import llama_cpp; print(llama_cpp.__version__)")
DIR=${NUDGE_LOCAL_LLAMA_SERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nudge-local/llama.cpp-$VERSION}
if [ -x "$DIR/bin/llama-server" ] && [ -x "$DIR/bin/rpc-server" ]; then
  echo "$DIR/bin"; exit 0
fi
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock 9  # one build at a time (tests and scripts may ask at once); the next finds it done
if [ -x "$DIR/bin/llama-server" ] && [ -x "$DIR/bin/rpc-server" ]; then
  echo "$DIR/bin"; exit 0
fi
command -v cmake >/dev/null || { echo "cmake is needed to build llama-server; install it (apt install cmake ninja-build)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$SRC" -B "$WORK/build" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF >&2
cmake --build "$WORK/build" --target llama-server ggml-rpc-server -j "$(nproc)" >&2
mkdir -p "$DIR.part/bin"
cp "$WORK/build/bin/llama-server" "$DIR.part/bin/"
cp "$WORK/build/bin/ggml-rpc-server" "$DIR.part/bin/rpc-server"
rm -rf "$DIR" && mv "$DIR.part" "$DIR"  # whole or not at all
echo "$DIR/bin"
