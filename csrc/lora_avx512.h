// AVX-512 float32 kernels of the CPU op (csrc/lora_avx512.cpp); callers check lora_avx512_supported() first.
//
// lora_factor_grads_avx512: for rows n of lx (n x d_in) and G = dL/dy (n x d_out), with A (r x d_in),
// B^T (r x d_out) and coef = s alpha (r),
//     U = lx A^T,   dU = coef * (G B),   P += U^T G  (r x d_out),   grad_A += dU^T lx  (r x d_in),
// and dU is written out (n x r) when requested. One pass reads each row of lx and G once and keeps the factors and
// the accumulators cache-resident: the rank-r products it replaces are too skinny for BLAS to run at full speed.
//
// rank_update_rows_avx512: out = m + L R for row-major m (rows x cols), L (rows x r) and R (r x cols), one pass
// over m; used to fold the rank-r term into the weight, W_eff = W + B diag(coef) A.
#pragma once

#include <cstdint>

namespace autolora {

// Whether this CPU runs the AVX-512 kernels (checked at run time; false on non-x86 builds).
bool lora_avx512_supported();

// Accumulates P (r x d_out) and grad_A (r x d_in) over `rows` rows of lx and g (row strides d_in and d_out); writes
// dU (rows x r, row stride r) when du is not null. All pointers are to contiguous float32 data.
void lora_factor_grads_avx512(const float* lx, const float* g, int64_t rows, int64_t d_in, int64_t d_out,
                              const float* lora_A, const float* lora_B_t, const float* coef, int64_t r, float* p,
                              float* grad_A, float* du);

// out[i][k] = m[i][k] + sum_j l[i][j] rm[j][k] for i < rows, k < cols; m and out have row stride cols, l row
// stride r, rm row stride cols. All pointers are to contiguous float32 data; out may not alias the inputs.
void rank_update_rows_avx512(const float* m, const float* l, const float* rm, int64_t rows, int64_t cols, int64_t r,
                             float* out);

}  // namespace autolora
