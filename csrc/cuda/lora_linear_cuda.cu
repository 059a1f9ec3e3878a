// CUDA kernels of the fused LoRA linear (float32, float64, float16, bfloat16; accumulation in float / double).
//
// Forward   y = x W^T + b + s * ((lx A^T) * alpha) B^T:
//   shrink_kernel  T = s * alpha * (lx A^T)          (one warp per row, N x r, kept in the accumulation type),
//   expand_kernel  y = b + T B^T                      (accumulated in float, rounded once to y's dtype),
//   cuBLAS         y = x W^T + y                      (at::addmm_ with beta = 1: the GEMM accumulates x W^T and y in
//                                                      float and rounds the sum once).
//   The base product is never rounded on its own: the output carries one rounding at its own magnitude, plus the one
//   of the much smaller b + rank-r term. No N x d_out LoRA product is formed.
// Backward, G = dL/dy, U = lx A^T, V = G B (both N x r, accumulation type, from shrink_kernel), dU = s * alpha * V:
//   grad_alpha_j = s * sum_n U_nj V_nj                 (ATen reduction of U * V),
//   grad_B       = s * alpha * (G^T U)                 (cuBLAS),
//   grad_A       = dU^T lx                             (cuBLAS),
//   grad_x       = dU A (expand_kernel) + G W (cuBLAS, beta = 1), or grad_lora_x = dU A and grad_x = G W.
// The skinny products G^T U and dU^T lx go to cuBLAS with a float32 result for float16/bfloat16 inputs (their
// half-precision operand U or dU is rounded once; the sum is never rounded to half precision), and each gradient is
// rounded once to its dtype. No kernel uses atomics, so every result is bitwise reproducible from run to run.
// The factor matrices are made contiguous as A (r x d_in) and B^T (r x d_out) (copies of r x d elements at most), so
// the threads of a warp read consecutive elements of them; x, lora_x and grad_y are read as contiguous rows; the
// base weight and the bias may have any strides.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <utility>

#include "../lora_linear.h"

namespace autolora {
namespace {

constexpr int kWarp = 32;
constexpr int kShrinkWarps = 4;        // rows per shrink block (one warp each)
constexpr int kShrinkThreads = kShrinkWarps * kWarp;
constexpr int kShrinkRankChunk = 8;    // rank components accumulated at once per lane
constexpr int kTileCols = 256;         // columns per expand block (one thread each)
constexpr int kExpandRows = 16;        // rows per expand tile
constexpr int kExpandRankChunk = 32;   // rank components staged in shared memory per expand step
constexpr int64_t kMaxGridX = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxGridY = 65535;

// out[n, j] = s * scale_j * sum_i x[n, i] m[j, i]   (scale == nullptr means scale_j = 1).
// x (rows x cols) and m (rank x cols) are contiguous: lane i of a warp reads x[n, i] and m[j, i] (consecutive
// addresses across the warp).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kShrinkThreads)
shrink_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t cols, const scalar_t* __restrict__ m,
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
        if (j0 + jj < rank) acc[jj] += xv * static_cast<acc_t>(m[(j0 + jj) * cols + i]);
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

// y[n, c] = bias_c + sum_j coef[n, j] m[j, c]   (bias == nullptr means bias_c = 0), accumulated in acc_t and rounded
// once. y (rows x cols) and m (rank x cols) are contiguous; each thread owns one column of a kExpandRows-row tile and
// the blocks of one grid column stride over the row tiles (gridDim.y is capped at 65535).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileCols)
expand_kernel(scalar_t* __restrict__ y, int64_t rows, int64_t cols, const acc_t* __restrict__ coef,
              const scalar_t* __restrict__ m, int64_t rank, const scalar_t* __restrict__ bias) {
  __shared__ acc_t coef_tile[kExpandRows][kExpandRankChunk];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  const acc_t bias_c = (bias != nullptr && col < cols) ? static_cast<acc_t>(bias[col]) : acc_t(0);
  for (int64_t row0 = static_cast<int64_t>(blockIdx.y) * kExpandRows; row0 < rows;
       row0 += static_cast<int64_t>(gridDim.y) * kExpandRows) {
    acc_t acc[kExpandRows];
#pragma unroll
    for (int rr = 0; rr < kExpandRows; ++rr) acc[rr] = bias_c;
    for (int64_t j0 = 0; j0 < rank; j0 += kExpandRankChunk) {
      __syncthreads();  // the previous step's reads of coef_tile are done
      stage_coef_tile(coef_tile, coef, row0, rows, j0, rank);
      __syncthreads();
      if (col < cols) {
        const int64_t chunk = std::min<int64_t>(kExpandRankChunk, rank - j0);
        for (int64_t jj = 0; jj < chunk; ++jj) {
          const acc_t mv = static_cast<acc_t>(m[(j0 + jj) * cols + col]);
#pragma unroll
          for (int rr = 0; rr < kExpandRows; ++rr) acc[rr] += coef_tile[rr][jj] * mv;
        }
      }
    }
    if (col < cols) {
      const int64_t tile_rows = std::min<int64_t>(kExpandRows, rows - row0);
      for (int64_t rr = 0; rr < tile_rows; ++rr) y[(row0 + rr) * cols + col] = static_cast<scalar_t>(acc[rr]);
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launchers: each returns before launching on empty work (a zero-sized grid is a launch error), launches on the
// current stream of the current device (set by the callers' CUDAGuard), and checks the launch.

// (rows x rank) in the accumulation type: s * scale * (x2 m^T), x2 contiguous rows, m contiguous (rank x cols).
template <typename scalar_t, typename acc_t>
at::Tensor shrink(const at::Tensor& x2, const at::Tensor& m, const at::Tensor* scale, double s) {
  const int64_t rows = x2.size(0), cols = x2.size(1), rank = m.size(0);
  at::Tensor out = at::empty({rows, rank}, x2.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  if (rows == 0 || rank == 0) return out;
  const int64_t blocks = ceil_div(rows, kShrinkWarps);
  TORCH_CHECK(blocks <= kMaxGridX, "lora_linear (CUDA): too many rows (", rows, ") for one launch");
  shrink_kernel<scalar_t, acc_t><<<blocks, kShrinkThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x2.data_ptr<scalar_t>(), rows, cols, m.data_ptr<scalar_t>(), rank,
      scale == nullptr ? nullptr : scale->data_ptr<scalar_t>(), static_cast<acc_t>(s), out.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Writes y = bias + coef m for a contiguous y (rows x cols), coef (rows x rank) in acc_t, m contiguous (rank x cols).
template <typename scalar_t, typename acc_t>
void expand(at::Tensor& y, const at::Tensor& coef, const at::Tensor& m, const at::Tensor* bias) {
  const int64_t rows = y.size(0), cols = y.size(1), rank = coef.size(1);
  if (rows == 0 || cols == 0) return;
  const dim3 grid(ceil_div(cols, kTileCols), std::min(ceil_div(rows, kExpandRows), kMaxGridY));
  expand_kernel<scalar_t, acc_t><<<grid, kTileCols, 0, c10::cuda::getCurrentCUDAStream()>>>(
      y.data_ptr<scalar_t>(), rows, cols, coef.data_ptr<acc_t>(), m.data_ptr<scalar_t>(), rank,
      bias == nullptr ? nullptr : bias->data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Whether this torch has aten::mm.dtype (float16/bfloat16 inputs, float32 result; torch >= 2.8).
template <typename T, typename = void>
struct has_mm_out_dtype : std::false_type {};
template <typename T>
struct has_mm_out_dtype<T, std::void_t<decltype(at::mm(std::declval<T>(), std::declval<T>(), at::kFloat))>>
    : std::true_type {};

// a b summed in float32 (float64 for float64) with a result of that type: at::mm for float32/float64; for
// float16/bfloat16 operands cuBLAS with a float32 output, so no partial sum is rounded to half precision (torch before
// 2.8 lacks that overload: the operands are then converted to float32 first).
template <typename T = at::Tensor>
T mm_accumulate(const T& a, const T& b) {
  if (!at::isReducedFloatingType(a.scalar_type())) return at::mm(a, b);
  if constexpr (has_mm_out_dtype<const T&>::value) {
    return at::mm(a, b, at::kFloat);
  } else {
    return at::mm(a.to(at::kFloat), b.to(at::kFloat));
  }
}

at::Tensor lora_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& alpha,
                            double scaling, const std::optional<at::Tensor>& lora_x) {
  check_lora_inputs(x, weight, bias, lora_A, lora_B, alpha, lora_x);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t d_out = weight.size(0);
  const at::Tensor x2 = as_rows(x);
  const at::Tensor lx2 = lora_x.has_value() ? as_rows(*lora_x) : x2;
  const at::Tensor a = lora_A.contiguous(), bt = lora_B.t().contiguous(), alpha_c = alpha.contiguous();
  const at::Tensor bias_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({x2.size(0), d_out}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lora_linear_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor t = shrink<scalar_t, acc_t>(lx2, a, &alpha_c, scaling);
    expand<scalar_t, acc_t>(y, t, bt, bias.has_value() ? &bias_c : nullptr);
  });
  y.addmm_(x2, weight.t());
  return y.view(output_shape(x, d_out));
}

LoraGrads lora_linear_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                    const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& alpha,
                                    double scaling, const std::optional<at::Tensor>& lora_x, bool input_grad) {
  check_lora_inputs(x, weight, std::nullopt, lora_A, lora_B, alpha, lora_x);
  check_grad_y(grad_y, x, weight.size(0));
  const c10::cuda::CUDAGuard device_guard(x.device());
  const at::ScalarType dtype = x.scalar_type();
  const at::Tensor g2 = as_rows(grad_y);
  const at::Tensor x2 = as_rows(x);
  const at::Tensor lx2 = lora_x.has_value() ? as_rows(*lora_x) : x2;
  const at::Tensor a = lora_A.contiguous(), bt = lora_B.t().contiguous();
  const bool separate_lx = input_grad && lora_x.has_value();
  at::Tensor grad_x = at::empty({0}, x.options()), grad_lx = at::empty({0}, x.options());
  at::Tensor grad_a, grad_b, grad_alpha;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "lora_linear_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor u = shrink<scalar_t, acc_t>(lx2, a, nullptr, 1.0);
    const at::Tensor v = shrink<scalar_t, acc_t>(g2, bt, nullptr, 1.0);
    const at::Tensor coef = alpha.to(u.scalar_type()) * scaling;
    const at::Tensor du = v * coef;
    grad_alpha = (u * v).sum(0).mul_(scaling).to(dtype);
    grad_b = (mm_accumulate(g2.t(), u.to(dtype)) * coef).to(dtype);
    grad_a = mm_accumulate(du.to(dtype).t(), lx2).to(dtype);
    if (input_grad) {
      at::Tensor& lora_target = separate_lx ? grad_lx : grad_x;
      lora_target = at::empty_like(x2);
      expand<scalar_t, acc_t>(lora_target, du, a, nullptr);
    }
  });
  if (separate_lx) {
    grad_x = at::mm(g2, weight);
    grad_lx = grad_lx.view(x.sizes());
  } else if (input_grad) {
    grad_x.addmm_(g2, weight);
  }
  if (input_grad) grad_x = grad_x.view(x.sizes());
  return {grad_x, grad_lx, grad_a, grad_b, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(autolora, CUDA, m) {
  m.impl("lora_linear", &lora_linear_cuda);
  m.impl("lora_linear_backward", &lora_linear_backward_cuda);
}

}  // namespace autolora
