#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu to object code (nvcc -c) so that a CUDA compile error shows up on any machine with
# nvcc, GPU or not. Nothing is linked or run. Exits non-zero on the first error.
#   bash csrc/compile_cuda_objects.sh        (NVCC, PYTHON and CUDA_ARCHS may be overridden)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
PYTHON=${PYTHON:-python3}
CUDA_ARCHS=${CUDA_ARCHS:-"80 90"}
includes=$("$PYTHON" -c "import torch.utils.cpp_extension as ext; print(' '.join('-I' + p for p in ext.include_paths()))")
nvcc_flags=$("$PYTHON" -c "from torch.utils.cpp_extension import COMMON_NVCC_FLAGS; print(' '.join(COMMON_NVCC_FLAGS))")
abi=$("$PYTHON" -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
arch_flags=()
for arch in $CUDA_ARCHS; do arch_flags+=("-gencode=arch=compute_${arch},code=sm_${arch}"); done
out_dir=$(mktemp -d)
trap 'rm -rf "$out_dir"' EXIT
# A CPU-only torch wheel ships the c10/cuda headers but not the configuration header its CUDA build writes;
# supply its one-line content (used only when torch's own copy is absent, as the -I order puts it last).
mkdir -p "$out_dir/shim/c10/cuda/impl"
echo "#define C10_CUDA_BUILD_SHARED_LIBS" > "$out_dir/shim/c10/cuda/impl/cuda_cmake_macros.h"
includes="$includes -I$out_dir/shim"
shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then echo "no CUDA sources in csrc/cuda"; exit 0; fi
for src in "${sources[@]}"; do
  echo "nvcc -c $src (sm: $CUDA_ARCHS)"
  # shellcheck disable=SC2086
  "$NVCC" -c "$src" -o "$out_dir/$(basename "$src" .cu).o" -std=c++20 -O3 -Xcompiler -fPIC $includes $nvcc_flags \
    -D_GLIBCXX_USE_CXX11_ABI="$abi" -DTORCH_EXTENSION_NAME=_C "${arch_flags[@]}"
done
echo "compiled ${#sources[@]} CUDA source(s) to object code"
