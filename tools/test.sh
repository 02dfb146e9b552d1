#!/usr/bin/env bash
# Runs every test a CPU-only machine can run: the GoogleTest suite, the C++ example built
# against the installed CMake package, and the Python tests against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
PREFIX=$PWD/build/test-install

echo "== C++: build and GoogleTest"
cmake -S . -B build/test -DCMAKE_BUILD_TYPE=Release -DFLASHFLEX_BUILD_TESTS=ON
cmake --build build/test -j "$JOBS"
# --no-tests=error: a suite that registers no test is a failure, not a pass.
ctest --test-dir build/test --output-on-failure --no-tests=error -j "$JOBS"

echo "== C++: install, then find_package(flashflex) from the example"
cmake --install build/test --prefix "$PREFIX"
cmake -S examples/cpp -B build/example -DCMAKE_PREFIX_PATH="$PREFIX"
cmake --build build/example -j "$JOBS"
./build/example/causal_attention

echo "== Python: pip install . and pytest"
CMAKE_BUILD_PARALLEL_LEVEL=$JOBS python3 -m pip install ${PIP_FLAGS:-} .
# Run from outside the source tree so the installed package is the one imported.
(cd tests/python && python3 -m pytest -q -p no:cacheprovider .)
