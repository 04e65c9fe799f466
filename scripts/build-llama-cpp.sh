#!/bin/sh
# Build llama.cpp's command-line tools once, into a cache folder, from the llama.cpp that PyPI's
# `llama-cpp-python` source package vendors (no git, no hub: only PyPI and a C++ toolchain).
#
#   scripts/build-llama-cpp.sh            # or: make llama-cpp
#
# The tools land in $PRUNEKIT_LLAMA_CPP (default ~/.cache/prunekit/llama.cpp)/bin; the marked test
# tests/export/test_llama_cpp.py and prunekit's GGUF read-back find them there. Building takes
# tens of minutes on two busy cores (38 min measured): set JOBS (default 1) and run it niced.
# Needs cmake and a C++ compiler (Debian: apt-get install -y cmake build-essential).
set -eu

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${PRUNEKIT_LLAMA_CPP:-${XDG_CACHE_HOME:-$HOME/.cache}/prunekit/llama.cpp}"
JOBS="${JOBS:-1}"
PIP="${PIP:-python3 -m pip}"
TOOLS="llama-perplexity llama-simple llama-completion llama-tokenize llama-bench llama-quantize"

BUILT=yes
for tool in $TOOLS; do [ -x "$CACHE/bin/$tool" ] || BUILT=; done
if [ -n "$BUILT" ]; then
  echo "llama.cpp: already built in $CACHE/bin"
  exit 0
fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "llama.cpp: '$tool' not found; install cmake and a C++ compiler (apt-get install -y cmake build-essential)" >&2
    exit 2
  }
done

mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/.build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "llama.cpp: fetching llama-cpp-python $VERSION (source) from PyPI"
$PIP download --quiet --no-deps --no-binary llama-cpp-python --dest "$WORK" "llama-cpp-python==$VERSION"
tar -xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
SRC="$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)"

echo "llama.cpp: building $TOOLS with $JOBS job(s); this takes a while"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF >"$WORK/cmake.log"
# shellcheck disable=SC2086
cmake --build "$WORK/build" -j"$JOBS" --target $TOOLS

# Install atomically: a half-built cache is never mistaken for a built one.
mkdir -p "$WORK/bin"
for tool in $TOOLS; do cp "$WORK/build/bin/$tool" "$WORK/bin/"; done
echo "llama-cpp-python $VERSION" >"$WORK/bin/VERSION"
rm -rf "$CACHE/bin"
mv "$WORK/bin" "$CACHE/bin"
echo "llama.cpp: built $TOOLS in $CACHE/bin"
