#!/usr/bin/env bash
# Builds the custom-op library with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option ONNXCOMPRESS_SANITIZE) into a folder of its own, never touching
# the installed package. Prints the path of the built library.
#
#   tests/fuzz/build_asan.sh [BUILD_DIR]      (default: build/asan)
#
# Use it with:  python -m tests.fuzz.run --asan LIB   or
#               eval "$(python -m tests.fuzz.sanitizer --env LIB)"; python ...
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="${1:-$root/build/asan}"
args=(-S "$root/custom_ops" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DONNXCOMPRESS_SANITIZE=ON)
# Reuse onnxruntime headers that an earlier `pip install .` fetched, if any
# (custom_ops/cmake/OrtHeaders.cmake otherwise finds or fetches them itself).
if [[ -z "${ONNXRUNTIME_INCLUDE_DIR:-}" ]]; then
  for h in "$root"/build/*/ort-headers/usr/include/onnxruntime; do
    if [[ -f "$h/onnxruntime_cxx_api.h" ]]; then args+=(-DONNXRUNTIME_INCLUDE_DIR="$h"); break; fi
  done
fi
if command -v ninja >/dev/null; then args+=(-G Ninja); fi
mkdir -p "$dir"
cmake "${args[@]}" >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log" >&2; exit 1; }
cmake --build "$dir" -j "${JOBS:-2}" >"$dir/build.log" 2>&1 || { tail -50 "$dir/build.log" >&2; exit 1; }
lib="$(find "$dir" -maxdepth 1 -name 'libonnxcompress_ops.*' | head -1)"
[[ -n "$lib" ]] || { echo "no library built in $dir" >&2; exit 1; }
echo "$lib"
