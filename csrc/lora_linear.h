// Shared declarations of the fused alpha-weighted LoRA linear op (namespace autolora).
//
//   y = x W^T + b + s * ((lx A^T) * alpha) B^T,     lx = lora_x if given, else x
//
// x: (..., d_in), W: (d_out, d_in), b: (d_out) or absent, A: (r, d_in), B: (d_out, r), alpha: (r), s: float.
// The helpers below are used by every device kernel so that the shape logic exists once.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>
#include <optional>
#include <tuple>
#include <vector>

namespace autolora {

// Gradients returned by lora_linear_backward, in schema order.
using LoraGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Rows of x as a contiguous (N, d_in) matrix (copies only when x is not already laid out that way). N is the product
// of the leading dims, also when d_in is 0 (where a reshape to (-1, 0) would be ambiguous).
inline at::Tensor as_rows(const at::Tensor& x) {
  const int64_t rows = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  return x.reshape({rows, x.size(-1)}).contiguous();
}

// Shape of y: x's leading dims followed by d_out.
inline std::vector<int64_t> output_shape(const at::Tensor& x, int64_t d_out) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = d_out;
  return shape;
}

// Consistency checks shared by all kernels (the Python wrapper reports the same conditions more verbosely).
inline void check_lora_inputs(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              const at::Tensor& lora_A, const at::Tensor& lora_B, const at::Tensor& alpha,
                              const std::optional<at::Tensor>& lora_x) {
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 2 && lora_A.dim() == 2 && lora_B.dim() == 2 && alpha.dim() == 1,
              "lora_linear: expected x (..., d_in), weight (d_out, d_in), lora_A (r, d_in), lora_B (d_out, r), "
              "alpha (r)");
  const int64_t d_in = weight.size(1), d_out = weight.size(0), r = lora_A.size(0);
  TORCH_CHECK(x.size(-1) == d_in && lora_A.size(1) == d_in, "lora_linear: d_in mismatch");
  TORCH_CHECK(lora_B.size(0) == d_out && lora_B.size(1) == r && alpha.size(0) == r, "lora_linear: rank mismatch");
  TORCH_CHECK(!bias.has_value() || (bias->dim() == 1 && bias->size(0) == d_out), "lora_linear: bias must be (d_out)");
  TORCH_CHECK(!lora_x.has_value() || lora_x->sizes() == x.sizes(), "lora_linear: lora_x must have x's shape");
  std::vector<at::Tensor> operands{weight, lora_A, lora_B, alpha};
  if (bias.has_value()) operands.push_back(*bias);
  if (lora_x.has_value()) operands.push_back(*lora_x);
  for (const at::Tensor& t : operands) {
    TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(),
                "lora_linear: all tensors must share x's dtype and device");
  }
}

// grad_y of lora_linear_backward must have y's shape (x's leading dims, d_out), dtype and device.
inline void check_grad_y(const at::Tensor& grad_y, const at::Tensor& x, int64_t d_out) {
  const std::vector<int64_t> y_shape = output_shape(x, d_out);
  TORCH_CHECK(grad_y.sizes() == c10::IntArrayRef(y_shape), "lora_linear_backward: grad_y must have y's shape ",
              c10::IntArrayRef(y_shape), ", got ", grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type() && grad_y.device() == x.device(),
              "lora_linear_backward: grad_y must have x's dtype and device (", x.scalar_type(), ", ", x.device(),
              "), got ", grad_y.scalar_type(), ", ", grad_y.device());
}

}  // namespace autolora
