// CUDA kernels of the fused LoRA linear (float32, float64, float16, bfloat16; accumulation in float / double).
//
// Forward   y = x W^T + b + s * ((lx A^T) * alpha) B^T:
//   the base GEMM y = b + x W^T is cuBLAS (through at::addmm); the rank-r part is two custom kernels:
//   shrink_kernel  T = s * alpha * (lx A^T)   (one warp per row, N x r, kept in the accumulation type), and
//   expand_kernel  y += T B^T                 (accumulated into y in place: no N x d_out LoRA product exists).
// Backward, G = dL/dy:
//   shrink_kernel         U = lx A^T,  dU = s * alpha * (G B)
//   column_reduce_kernel  P = G^T U   (the one pass over G that both grad_B and grad_alpha need)
//   b_alpha_grads_kernel  grad_B = s * alpha * P,  grad_alpha_j = s * sum_o B_oj P_oj
//   column_reduce_kernel  grad_A^T = lx^T dU
//   grad_x = G W (cuBLAS) then expand_kernel grad_x += dU A (or grad_lora_x = dU A when lora_x is given).
// column_reduce_kernel sums row segments with atomicAdd, so backward results may differ in the last bits between
// runs. Requires sm_60 or newer (double atomicAdd).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../lora_linear.h"

namespace autolora {
namespace {

constexpr int kWarp = 32;
constexpr int kShrinkWarps = 4;        // rows per shrink block (one warp each)
constexpr int kShrinkRankChunk = 8;    // rank components accumulated at once per lane
constexpr int kTileCols = 256;         // columns per expand / column-reduce block (one thread each)
constexpr int kExpandRows = 16;        // rows per expand tile
constexpr int kExpandRankChunk = 32;   // rank components staged in shared memory per expand step
constexpr int kReduceRowTile = 32;     // rows staged in shared memory per column-reduce step
constexpr int kReduceRankChunk = 16;   // rank components accumulated at once per column-reduce thread
constexpr int64_t kReduceRows = 512;   // rows per column-reduce block (before atomicAdd)
constexpr int kFinalizeThreads = 256;
constexpr int64_t kMaxGridY = 65535;

// out[n, j] = s * scale_j * sum_i x[n, i] m[j, i]   (scale == nullptr means scale_j = 1).
// m is addressed as m[j * m_stride_rank + i * m_stride_col], so A and B^T are read in place.
template <typename scalar_t, typename acc_t>
__global__ void shrink_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t cols,
                              const scalar_t* __restrict__ m, int64_t m_stride_rank, int64_t m_stride_col,
                              int64_t rank, const scalar_t* __restrict__ scale, acc_t s, acc_t* __restrict__ out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kShrinkWarps + threadIdx.x / kWarp;
  if (row >= rows) return;  // uniform per warp: the shuffles below see all 32 lanes
  const scalar_t* x_row = x + row * cols;
  for (int64_t j0 = 0; j0 < rank; j0 += kShrinkRankChunk) {
    acc_t acc[kShrinkRankChunk] = {};
    for (int64_t i = lane; i < cols; i += kWarp) {
      const acc_t xv = static_cast<acc_t>(x_row[i]);
#pragma unroll
      for (int jj = 0; jj < kShrinkRankChunk; ++jj) {
        if (j0 + jj < rank) acc[jj] += xv * static_cast<acc_t>(m[(j0 + jj) * m_stride_rank + i * m_stride_col]);
      }
    }
#pragma unroll
    for (int jj = 0; jj < kShrinkRankChunk; ++jj) {
      acc_t v = acc[jj];
      for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
      if (lane == 0 && j0 + jj < rank) {
        const acc_t scale_j = scale == nullptr ? acc_t(1) : static_cast<acc_t>(scale[j0 + jj]);
        out[row * rank + j0 + jj] = v * s * scale_j;
      }
    }
  }
}

// tile[t][jj] = coef[(row0 + t) * rank + j0 + jj] for the block's shared ROWS x CHUNK tile, zero outside
// rows [row0, row_end) and ranks [0, rank). All threads of the block take part; the caller synchronises.
template <int ROWS, int CHUNK, typename acc_t>
__device__ void stage_coef_tile(acc_t (&tile)[ROWS][CHUNK], const acc_t* __restrict__ coef, int64_t row0,
                                int64_t row_end, int64_t j0, int64_t rank) {
  for (int t = threadIdx.x; t < ROWS * CHUNK; t += blockDim.x) {
    const int64_t row = row0 + t / CHUNK, j = j0 + t % CHUNK;
    tile[t / CHUNK][t % CHUNK] = (row < row_end && j < rank) ? coef[row * rank + j] : acc_t(0);
  }
}

// y[n, c] = (accumulate ? y[n, c] : 0) + sum_j coef[n, j] m[c, j],  m[c, j] at m[c * m_stride_col + j * m_stride_rank].
// y is a contiguous rows x cols matrix; each thread owns one column of a kExpandRows-row tile.
template <typename scalar_t, typename acc_t>
__global__ void expand_kernel(scalar_t* __restrict__ y, int64_t rows, int64_t cols, const acc_t* __restrict__ coef,
                              const scalar_t* __restrict__ m, int64_t m_stride_col, int64_t m_stride_rank,
                              int64_t rank, bool accumulate) {
  __shared__ acc_t coef_tile[kExpandRows][kExpandRankChunk];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  for (int64_t row0 = static_cast<int64_t>(blockIdx.y) * kExpandRows; row0 < rows;
       row0 += static_cast<int64_t>(gridDim.y) * kExpandRows) {
    acc_t acc[kExpandRows] = {};
    for (int64_t j0 = 0; j0 < rank; j0 += kExpandRankChunk) {
      __syncthreads();
      stage_coef_tile(coef_tile, coef, row0, rows, j0, rank);
      __syncthreads();
      if (col < cols) {
        const int64_t chunk = std::min<int64_t>(kExpandRankChunk, rank - j0);
        for (int64_t jj = 0; jj < chunk; ++jj) {
          const acc_t mv = static_cast<acc_t>(m[col * m_stride_col + (j0 + jj) * m_stride_rank]);
#pragma unroll
          for (int rr = 0; rr < kExpandRows; ++rr) acc[rr] += coef_tile[rr][jj] * mv;
        }
      }
    }
    if (col < cols) {
      const int64_t tile_rows = std::min<int64_t>(kExpandRows, rows - row0);
      for (int64_t rr = 0; rr < tile_rows; ++rr) {
        scalar_t* dst = y + (row0 + rr) * cols + col;
        const acc_t base = accumulate ? static_cast<acc_t>(*dst) : acc_t(0);
        *dst = static_cast<scalar_t>(base + acc[rr]);
      }
    }
  }
}

// out[c, j] += sum_n x[n, c] coef[n, j] over the block's row segment (out zero-initialised by the caller, cols x rank).
// One pass over x: each thread owns a column, the coefficients of kReduceRowTile rows are staged in shared memory.
template <typename scalar_t, typename acc_t>
__global__ void column_reduce_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t cols,
                                     const acc_t* __restrict__ coef, int64_t rank, int64_t rows_per_block,
                                     acc_t* __restrict__ out) {
  __shared__ acc_t coef_tile[kReduceRowTile][kReduceRankChunk];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t row_end = std::min<int64_t>(rows, row_begin + rows_per_block);
  for (int64_t j0 = 0; j0 < rank; j0 += kReduceRankChunk) {
    acc_t acc[kReduceRankChunk] = {};
    for (int64_t n0 = row_begin; n0 < row_end; n0 += kReduceRowTile) {
      __syncthreads();
      stage_coef_tile(coef_tile, coef, n0, row_end, j0, rank);
      __syncthreads();
      if (col < cols) {
        const int64_t tile_rows = std::min<int64_t>(kReduceRowTile, row_end - n0);
        for (int64_t rr = 0; rr < tile_rows; ++rr) {
          const acc_t xv = static_cast<acc_t>(x[(n0 + rr) * cols + col]);
#pragma unroll
          for (int jj = 0; jj < kReduceRankChunk; ++jj) acc[jj] += xv * coef_tile[rr][jj];
        }
      }
    }
    if (col < cols) {
      for (int jj = 0; jj < kReduceRankChunk && j0 + jj < rank; ++jj) atomicAdd(&out[col * rank + j0 + jj], acc[jj]);
    }
  }
}

// From P = G^T U (d_out x rank): grad_B[o, j] = s alpha_j P[o, j] and grad_alpha_j = s sum_o B[o, j] P[o, j].
// One block per rank component j.
template <typename scalar_t, typename acc_t>
__global__ void b_alpha_grads_kernel(const acc_t* __restrict__ p, const scalar_t* __restrict__ b, int64_t b_stride_out,
                                     int64_t b_stride_rank, const scalar_t* __restrict__ alpha, acc_t s,
                                     int64_t d_out, int64_t rank, scalar_t* __restrict__ grad_b,
                                     scalar_t* __restrict__ grad_alpha) {
  __shared__ acc_t partial[kFinalizeThreads];
  const int64_t j = blockIdx.x;
  const acc_t coef = s * static_cast<acc_t>(alpha[j]);
  acc_t sum = 0;
  for (int64_t o = threadIdx.x; o < d_out; o += blockDim.x) {
    const acc_t pv = p[o * rank + j];
    grad_b[o * rank + j] = static_cast<scalar_t>(coef * pv);
    sum += static_cast<acc_t>(b[o * b_stride_out + j * b_stride_rank]) * pv;
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kFinalizeThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_alpha[j] = static_cast<scalar_t>(s * partial[0]);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launchers: each returns immediately on empty work (a zero-sized grid is a launch error).
template <typename scalar_t, typename acc_t>
at::Tensor shrink(const at::Tensor& x2, const at::Tensor& m, int64_t m_stride_rank, int64_t m_stride_col,
                  int64_t rank, const at::Tensor* scale, double s) {
  const int64_t rows = x2.size(0), cols = x2.size(1);
  at::Tensor out = at::zeros({rows, rank}, x2.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  if (rows == 0 || rank == 0) return out;
  shrink_kernel<scalar_t, acc_t><<<ceil_div(rows, kShrinkWarps), kShrinkWarps * kWarp, 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
      x2.data_ptr<scalar_t>(), rows, cols, m.data_ptr<scalar_t>(), m_stride_rank, m_stride_col, rank,
      scale == nullptr ? nullptr : scale->data_ptr<scalar_t>(), static_cast<acc_t>(s), out.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

template <typename scalar_t, typename acc_t>
void expand(at::Tensor& y, const at::Tensor& coef, const at::Tensor& m, int64_t m_stride_col, int64_t m_stride_rank,
            bool accumulate) {
  const int64_t rows = y.size(0), cols = y.size(1), rank = coef.size(1);
  if (rows == 0 || cols == 0) return;
  const dim3 grid(ceil_div(cols, kTileCols), std::min(ceil_div(rows, kExpandRows), kMaxGridY));
  expand_kernel<scalar_t, acc_t><<<grid, kTileCols, 0, c10::cuda::getCurrentCUDAStream()>>>(
      y.data_ptr<scalar_t>(), rows, cols, coef.data_ptr<acc_t>(), m.data_ptr<scalar_t>(), m_stride_col,
      m_stride_rank, rank, accumulate);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t>
at::Tensor column_reduce(const at::Tensor& x2, const at::Tensor& coef) {
  const int64_t rows = x2.size(0), cols = x2.size(1), rank = coef.size(1);
  at::Tensor out = at::zeros({cols, rank}, coef.options());
  if (rows == 0 || cols == 0 || rank == 0) return out;
  const int64_t rows_per_block = std::max(kReduceRows, ceil_div(rows, kMaxGridY));
  const dim3 grid(ceil_div(cols, kTileCols), ceil_div(rows, rows_per_block));
  column_reduce_kernel<scalar_t, acc_t><<<grid, kTileCols, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x2.data_ptr<scalar_t>(), rows, cols, coef.data_ptr<acc_t>(), rank, rows_per_block, out.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor lora_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& alpha,
                            double scaling, const std::optional<at::Tensor>& lora_x) {
  check_lora_inputs(x, weight, bias, lora_A, lora_B, alpha, lora_x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t d_out = weight.size(0), rank = lora_A.size(0);
  const at::Tensor x2 = as_rows(x);
  const at::Tensor lx2 = lora_x.has_value() ? as_rows(*lora_x) : x2;
  const at::Tensor alpha_c = alpha.contiguous();
  at::Tensor y = bias.has_value() ? at::addmm(*bias, x2, weight.t()) : at::mm(x2, weight.t());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lora_linear_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor t = shrink<scalar_t, acc_t>(lx2, lora_A, lora_A.stride(0), lora_A.stride(1), rank, &alpha_c,
                                                 scaling);
    expand<scalar_t, acc_t>(y, t, lora_B, lora_B.stride(0), lora_B.stride(1), /*accumulate=*/true);
  });
  return y.view(output_shape(x, d_out));
}

LoraGrads lora_linear_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                    const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& alpha,
                                    double scaling, const std::optional<at::Tensor>& lora_x, bool input_grad) {
  check_lora_inputs(x, weight, std::nullopt, lora_A, lora_B, alpha, lora_x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t d_in = weight.size(1), d_out = weight.size(0), rank = lora_A.size(0);
  const at::Tensor g2 = as_rows(grad_y);
  const at::Tensor x2 = as_rows(x);
  const at::Tensor lx2 = lora_x.has_value() ? as_rows(*lora_x) : x2;
  TORCH_CHECK(g2.size(0) == x2.size(0) && g2.size(1) == d_out, "lora_linear_backward: grad_y must have y's shape");
  const at::Tensor alpha_c = alpha.contiguous();
  const bool separate_lx = input_grad && lora_x.has_value();
  at::Tensor grad_x = input_grad ? at::mm(g2, weight) : at::empty({0}, x.options());
  at::Tensor grad_lx = separate_lx ? at::empty({x2.size(0), d_in}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_a, grad_b = at::empty({d_out, rank}, x.options()), grad_alpha = at::empty({rank}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lora_linear_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor u = shrink<scalar_t, acc_t>(lx2, lora_A, lora_A.stride(0), lora_A.stride(1), rank, nullptr, 1.0);
    const at::Tensor du = shrink<scalar_t, acc_t>(g2, lora_B, lora_B.stride(1), lora_B.stride(0), rank, &alpha_c,
                                                  scaling);
    const at::Tensor p = column_reduce<scalar_t, acc_t>(g2, u);
    if (rank > 0) {
      b_alpha_grads_kernel<scalar_t, acc_t><<<rank, kFinalizeThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          p.data_ptr<acc_t>(), lora_B.data_ptr<scalar_t>(), lora_B.stride(0), lora_B.stride(1),
          alpha_c.data_ptr<scalar_t>(), static_cast<acc_t>(scaling), d_out, rank, grad_b.data_ptr<scalar_t>(),
          grad_alpha.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_a = column_reduce<scalar_t, acc_t>(lx2, du).t().to(x.scalar_type()).contiguous();
    if (input_grad) {
      at::Tensor& lora_target = separate_lx ? grad_lx : grad_x;
      expand<scalar_t, acc_t>(lora_target, du, lora_A, lora_A.stride(1), lora_A.stride(0), /*accumulate=*/!separate_lx);
    }
  });
  if (input_grad) grad_x = grad_x.view(x.sizes());
  if (separate_lx) grad_lx = grad_lx.view(x.sizes());
  return {grad_x, grad_lx, grad_a, grad_b, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(autolora, CUDA, m) {
  m.impl("lora_linear", &lora_linear_cuda);
  m.impl("lora_linear_backward", &lora_linear_backward_cuda);
}

}  // namespace autolora
