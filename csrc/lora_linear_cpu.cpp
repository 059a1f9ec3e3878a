// CPU kernels of the fused LoRA linear (float32, float64).
//
// Rows of x are processed in blocks small enough to stay in cache. For each block the base GEMM writes
// y_blk = b + x_blk W^T, and the rank-r term is accumulated into that same block while it is still cached:
// y_blk += (lx_blk A^T * (s alpha)) B^T, so no N x d_out LoRA product is ever materialised. The backward makes one
// pass over the blocks of G = dL/dy: each block yields its share of grad_x, grad_lora_x, grad_A and of
// P = G^T U (U = lx A^T), from which grad_B = s alpha * P and grad_alpha_j = s sum_o B_oj P_oj are formed at the end.
// The threads own contiguous row ranges and private accumulators, summed in a fixed order (deterministic for a
// given thread count).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "lora_linear.h"

namespace autolora {
namespace {

// Rows per block: x_blk and y_blk together take about 2 MiB (L2/L3-resident while the rank-r term is added), and
// the block is tall enough for the per-block GEMM to run near full BLAS speed.
int64_t rows_per_block(const at::Tensor& x, int64_t d_in, int64_t d_out) {
  constexpr int64_t kBlockBytes = 2 * 1024 * 1024;
  return std::clamp<int64_t>(kBlockBytes / (x.element_size() * (d_in + d_out)), 32, 512);
}

// Number of contiguous row ranges processed in parallel (one per thread, at least one block each).
int64_t row_chunks(int64_t rows, int64_t block) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (rows + block - 1) / block));
}

// Calls fn(chunk, r0, r1) on consecutive blocks of at most `block` rows of [0, rows), the range split into
// `chunks` contiguous parts run in parallel. Autograd recording is off inside (worker threads start with it on).
template <typename Fn>
void for_each_row_block(int64_t rows, int64_t block, int64_t chunks, const Fn& fn) {
  at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    at::NoGradGuard no_grad;
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t begin = rows * c / chunks, end = rows * (c + 1) / chunks;
      for (int64_t r0 = begin; r0 < end; r0 += block) fn(c, r0, std::min(end, r0 + block));
    }
  });
}

void check_cpu_dtype(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "lora_linear: the CPU kernel supports float32 and float64, got ", x.scalar_type());
}

at::Tensor lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& alpha,
                           double scaling, const std::optional<at::Tensor>& lora_x) {
  check_lora_inputs(x, weight, bias, lora_A, lora_B, alpha, lora_x);
  check_cpu_dtype(x);
  const int64_t d_in = weight.size(1), d_out = weight.size(0);
  const at::Tensor x2 = as_rows(x).detach();
  const at::Tensor lx2 = lora_x.has_value() ? as_rows(*lora_x).detach() : x2;
  const at::Tensor w_t = weight.detach().t(), a = lora_A.detach(), b_t = lora_B.detach().t().contiguous();
  const at::Tensor coef = (alpha.detach() * scaling).unsqueeze(1);  // s * alpha, fused into the rank-r activations
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(bias->detach()) : std::nullopt;
  const int64_t rows = x2.size(0), block = rows_per_block(x2, d_in, d_out);
  at::Tensor y = at::empty({rows, d_out}, x2.options());

  for_each_row_block(rows, block, row_chunks(rows, block), [&](int64_t, int64_t r0, int64_t r1) {
    at::Tensor y_blk = y.narrow(0, r0, r1 - r0);
    const at::Tensor x_blk = x2.narrow(0, r0, r1 - r0);
    if (b.has_value()) {
      at::addmm_out(y_blk, *b, x_blk, w_t);
    } else {
      at::mm_out(y_blk, x_blk, w_t);
    }
    const at::Tensor t_blk_t = at::mm(a, lx2.narrow(0, r0, r1 - r0).t()).mul_(coef);  // (r, rows)
    y_blk.addmm_(t_blk_t.t(), b_t);
  });
  return y.view(output_shape(x, d_out));
}

LoraGrads lora_linear_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& alpha,
                                   double scaling, const std::optional<at::Tensor>& lora_x, bool input_grad) {
  check_lora_inputs(x, weight, std::nullopt, lora_A, lora_B, alpha, lora_x);
  check_cpu_dtype(x);
  const int64_t d_in = weight.size(1), d_out = weight.size(0), r = lora_A.size(0);
  const at::Tensor g2 = as_rows(grad_y).detach();
  const at::Tensor x2 = as_rows(x).detach();
  const at::Tensor lx2 = lora_x.has_value() ? as_rows(*lora_x).detach() : x2;
  const at::Tensor w = weight.detach(), a = lora_A.detach().contiguous(), b_t = lora_B.detach().t().contiguous();
  const at::Tensor coef = (alpha.detach() * scaling).unsqueeze(1);
  const int64_t rows = x2.size(0), block = rows_per_block(x2, d_in, d_out), chunks = row_chunks(rows, block);
  TORCH_CHECK(g2.size(0) == rows && g2.size(1) == d_out, "lora_linear_backward: grad_y must have y's shape");

  const bool separate_lx = input_grad && lora_x.has_value();
  at::Tensor grad_x2 = input_grad ? at::empty({rows, d_in}, x2.options()) : at::empty({0}, x2.options());
  at::Tensor grad_lx2 = separate_lx ? at::empty({rows, d_in}, x2.options()) : at::empty({0}, x2.options());
  at::Tensor p_t = at::zeros({chunks, r, d_out}, x2.options());     // per-chunk (G^T U)^T
  at::Tensor grad_a = at::zeros({chunks, r, d_in}, x2.options());   // per-chunk dU^T lx

  for_each_row_block(rows, block, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    const at::Tensor g_blk = g2.narrow(0, r0, r1 - r0), lx_blk = lx2.narrow(0, r0, r1 - r0);
    const at::Tensor u_blk_t = at::mm(a, lx_blk.t());                 // U^T   (r, rows)
    const at::Tensor du_blk_t = at::mm(b_t, g_blk.t()).mul_(coef);    // dU^T  (r, rows)
    p_t.select(0, c).addmm_(u_blk_t, g_blk);
    grad_a.select(0, c).addmm_(du_blk_t, lx_blk);
    if (!input_grad) return;
    at::Tensor gx_blk = grad_x2.narrow(0, r0, r1 - r0);
    at::mm_out(gx_blk, g_blk, w);
    if (separate_lx) {
      at::Tensor glx_blk = grad_lx2.narrow(0, r0, r1 - r0);
      at::mm_out(glx_blk, du_blk_t.t(), a);
    } else {
      gx_blk.addmm_(du_blk_t.t(), a);
    }
  });

  const at::Tensor p_sum = p_t.sum(0);  // (r, d_out)
  at::Tensor grad_b = (p_sum * coef).t().contiguous();
  at::Tensor grad_alpha = (p_sum * b_t).sum(1).mul_(scaling);
  at::Tensor grad_x = input_grad ? grad_x2.view(x.sizes()) : grad_x2;
  at::Tensor grad_lx = separate_lx ? grad_lx2.view(x.sizes()) : grad_lx2;
  return {grad_x, grad_lx, grad_a.sum(0), grad_b, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(autolora, CPU, m) {
  m.impl("lora_linear", &lora_linear_cpu);
  m.impl("lora_linear_backward", &lora_linear_backward_cpu);
}

}  // namespace autolora
