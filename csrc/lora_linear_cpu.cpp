// CPU kernels of the fused LoRA linear (float32, float64).
//
// Without a separate lora_x the rank-r term folds into the weight,
//     y = x W_eff^T + b,   grad_x = G W_eff,   W_eff = W + B diag(s alpha) A,
// so forward and grad_x are each one full-size GEMM and the LoRA product is never formed per row. Forming W_eff
// costs d_out d_in r multiply-adds, independent of the number of rows; applying the rank-r term per row costs
// rows (d_in + d_out) r in the forward (and rows d_in r for grad_x), so the fold is used from
// rows >= d_in d_out / (d_in + d_out) on. For float32 on AVX-512 CPUs W_eff comes from one vectorised pass over W
// (lora_avx512.cpp), otherwise from one BLAS addmm. With a separate lora_x (dropout on the LoRA input), or with
// fewer rows, the rank-r term is accumulated into the base GEMM's output in place: y = b + x W^T, then
// y += (lx A^T * s alpha) B^T.
//
// The factor gradients always come from one pass over row blocks of G = dL/dy and lx (each block cache-resident):
//     U^T = A lx^T,   dU^T = s alpha * (B^T G^T),   P += U^T G,   grad_A += dU^T lx,
// for float32 on AVX-512 CPUs by the vectorised pass of lora_avx512.cpp, otherwise as four BLAS products per block;
// then grad_B = (s alpha * P)^T and grad_alpha_j = s sum_o B_oj P_jo. The threads own contiguous row ranges and
// private accumulators, summed in a fixed order (deterministic for a given thread count).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "lora_avx512.h"
#include "lora_linear.h"

namespace autolora {
namespace {

// Whether folding the rank-r term into W_eff (d_out d_in r multiply-adds) is cheaper than applying it per row in the
// forward (rows (d_in + d_out) r); the backward follows the same choice.
bool fold_pays_off(int64_t rows, int64_t d_in, int64_t d_out) {
  return rows * (d_in + d_out) >= d_in * d_out;
}

// W_eff = W + B diag(coef) A with coef = s alpha, (d_out, d_in), laid out like W (e.g. a transposed Conv1D weight),
// so the GEMM reads it as it would read W: rows of W that the update leaves at zero give bit-identical outputs.
// float32 on AVX-512 CPUs: one vectorised pass over W (rows in parallel), for row-major W as W + (B coef) A and for
// column-major W as its transpose, W^T + A^T (B coef)^T. Otherwise one BLAS addmm.
at::Tensor folded_weight(const at::Tensor& w, const at::Tensor& lora_A, const at::Tensor& lora_B,
                         const at::Tensor& coef) {
  at::Tensor w_eff = at::empty_like(w);
  const at::Tensor b_coef = lora_B * coef;  // (d_out, r)
  const bool row_major = w.is_contiguous(), column_major = w.t().is_contiguous();
  if (w.scalar_type() != at::kFloat || !lora_avx512_supported() || !(row_major || column_major)) {
    return at::addmm_out(w_eff, w, b_coef, lora_A);
  }
  const at::Tensor m = row_major ? w : w.t(), out = row_major ? w_eff : w_eff.t();
  const at::Tensor l = (row_major ? b_coef : lora_A.t()).contiguous();
  const at::Tensor rm = (row_major ? lora_A : b_coef.t()).contiguous();
  const int64_t rows = m.size(0), cols = m.size(1), r = l.size(1);
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, cols)), [&](int64_t i0, int64_t i1) {
    rank_update_rows_avx512(m.data_ptr<float>() + i0 * cols, l.data_ptr<float>() + i0 * r, rm.data_ptr<float>(),
                            i1 - i0, cols, r, out.data_ptr<float>() + i0 * cols);
  });
  return w_eff;
}

// y = b + x2 W^T (or x2 W^T without bias) for rows x2 (rows, d_in), written into y: one BLAS GEMM.
void linear_rows_out(at::Tensor& y, const at::Tensor& x2, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
  if (bias.has_value()) {
    at::addmm_out(y, *bias, x2, w.t());
  } else {
    at::mm_out(y, x2, w.t());
  }
}

// Rows per block of the backward's rank-r pass: the block's rows of G and lx together take about 2 MiB, so they
// stay cached between the products that read them twice.
int64_t rows_per_block(const at::Tensor& x, int64_t d_in, int64_t d_out) {
  constexpr int64_t kBlockBytes = 2 * 1024 * 1024;
  return std::clamp<int64_t>(kBlockBytes / (x.element_size() * (d_in + d_out)), 32, 1024);
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
  const at::Tensor x2 = as_rows(x).detach(), w = weight.detach(), a = lora_A.detach();
  const at::Tensor coef = alpha.detach() * scaling;  // s * alpha
  const std::optional<at::Tensor> b = bias.has_value() ? std::optional<at::Tensor>(bias->detach()) : std::nullopt;
  const int64_t rows = x2.size(0);

  if (!lora_x.has_value() && fold_pays_off(rows, d_in, d_out)) {
    // y is allocated before the transient W_eff, so freeing W_eff leaves no hole below y (with glibc malloc, fewer
    // heap trims and page faults on the next call).
    at::Tensor y = at::empty({rows, d_out}, x2.options());
    linear_rows_out(y, x2, folded_weight(w, a, lora_B.detach(), coef), b);
    return y.view(output_shape(x, d_out));
  }
  const at::Tensor lx2 = lora_x.has_value() ? as_rows(*lora_x).detach() : x2;
  at::Tensor y = at::empty({rows, d_out}, x2.options());
  linear_rows_out(y, x2, w, b);
  const at::Tensor t_t = at::mm(a, lx2.t()).mul_(coef.unsqueeze(1));  // (r, rows): (s alpha * lx A^T)^T
  y.addmm_(t_t.t(), lora_B.detach().t());
  return y.view(output_shape(x, d_out));
}

LoraGrads lora_linear_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& alpha,
                                   double scaling, const std::optional<at::Tensor>& lora_x, bool input_grad) {
  check_lora_inputs(x, weight, std::nullopt, lora_A, lora_B, alpha, lora_x);
  check_cpu_dtype(x);
  const int64_t d_in = weight.size(1), d_out = weight.size(0), r = lora_A.size(0);
  check_grad_y(grad_y, x, d_out);
  if (d_in == 0 || d_out == 0) {  // every product then has an empty inner dimension: all gradients are zero
    const at::Tensor none = x.new_empty({0});
    return {input_grad ? at::zeros_like(x) : none,
            input_grad && lora_x.has_value() ? at::zeros_like(*lora_x) : none,
            at::zeros_like(lora_A), at::zeros_like(lora_B), at::zeros_like(alpha)};
  }
  const at::Tensor g2 = as_rows(grad_y).detach();
  const at::Tensor x2 = as_rows(x).detach();
  const at::Tensor lx2 = lora_x.has_value() ? as_rows(*lora_x).detach() : x2;
  const at::Tensor w = weight.detach(), a = lora_A.detach().contiguous(), b_t = lora_B.detach().t().contiguous();
  const at::Tensor coef = alpha.detach() * scaling, coef_col = coef.unsqueeze(1);
  const int64_t rows = x2.size(0);

  const bool fold = !lora_x.has_value() && fold_pays_off(rows, d_in, d_out);
  const bool need_du = input_grad && !fold;  // grad_x (or grad_lora_x) then needs the per-row term dU A
  const bool vectorised = x2.scalar_type() == at::kFloat && lora_avx512_supported();
  // The vectorised pass tiles its rows itself: one call per thread's range. The BLAS products go block by block.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t block = vectorised ? std::max<int64_t>(1, (rows + threads - 1) / threads)
                                   : rows_per_block(x2, d_in, d_out);
  const int64_t chunks = row_chunks(rows, block);
  at::Tensor du = need_du ? at::empty({rows, r}, x2.options()) : at::Tensor();
  at::Tensor p = at::zeros({chunks, r, d_out}, x2.options());       // per-chunk U^T G
  at::Tensor grad_a = at::zeros({chunks, r, d_in}, x2.options());   // per-chunk dU^T lx

  for_each_row_block(rows, block, chunks, [&](int64_t c, int64_t r0, int64_t r1) {
    if (vectorised) {
      lora_factor_grads_avx512(lx2.data_ptr<float>() + r0 * d_in, g2.data_ptr<float>() + r0 * d_out, r1 - r0, d_in,
                               d_out, a.data_ptr<float>(), b_t.data_ptr<float>(), coef.data_ptr<float>(), r,
                               p.select(0, c).data_ptr<float>(), grad_a.select(0, c).data_ptr<float>(),
                               need_du ? du.data_ptr<float>() + r0 * r : nullptr);
      return;
    }
    const at::Tensor g_blk = g2.narrow(0, r0, r1 - r0), lx_blk = lx2.narrow(0, r0, r1 - r0);
    const at::Tensor u_blk_t = at::mm(a, lx_blk.t());                     // U^T   (r, rows)
    const at::Tensor du_blk_t = at::mm(b_t, g_blk.t()).mul_(coef_col);    // dU^T  (r, rows)
    p.select(0, c).addmm_(u_blk_t, g_blk);
    grad_a.select(0, c).addmm_(du_blk_t, lx_blk);
    if (need_du) du.narrow(0, r0, r1 - r0).copy_(du_blk_t.t());
  });

  at::Tensor grad_x = x2.new_empty({0}), grad_lx = x2.new_empty({0});
  if (input_grad) {
    grad_x = at::empty({rows, d_in}, x2.options());  // allocated before the transient W_eff, as in the forward
    at::mm_out(grad_x, g2, fold ? folded_weight(w, a, b_t.t(), coef) : w);
    if (lora_x.has_value()) {
      grad_lx = at::mm(du, a).view(x.sizes());
    } else if (need_du) {
      grad_x.addmm_(du, a);
    }
    grad_x = grad_x.view(x.sizes());
  }
  const at::Tensor p_sum = p.sum(0);  // (r, d_out)
  at::Tensor grad_b = (p_sum * coef_col).t().contiguous();
  at::Tensor grad_alpha = (p_sum * b_t).sum(1).mul_(scaling);
  return {grad_x, grad_lx, grad_a.sum(0), grad_b, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(autolora, CPU, m) {
  m.impl("lora_linear", &lora_linear_cpu);
  m.impl("lora_linear_backward", &lora_linear_backward_cpu);
}

}  // namespace autolora
