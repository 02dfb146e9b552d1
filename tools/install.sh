#!/usr/bin/env bash
# Builds and installs flashflex: the C++ library, headers and CMake package into $PREFIX
# (default ./install), then the Python package (`pip install .`).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-$PWD/install}
JOBS=${JOBS:-$(nproc)}

cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DFLASHFLEX_BUILD_TESTS=OFF
cmake --build build/release -j "$JOBS"
cmake --install build/release --prefix "$PREFIX"
CMAKE_BUILD_PARALLEL_LEVEL=$JOBS python3 -m pip install ${PIP_FLAGS:-} .
echo "flashflex installed: C++ in $PREFIX, Python package in $(python3 -c 'import flashflex, os; print(os.path.dirname(flashflex.__file__))')"
