// Operator schemas of the fused LoRA linear, defined once for every backend, and the Python module entry point.
//
// lora_linear:          y = x W^T + b + s * ((lx A^T) * alpha) B^T,   lx = lora_x if given, else x
// lora_linear_backward: for upstream gradient G = dL/dy (rows n, columns o), with U = lx A^T, V = G B,
//                       dU = s * alpha * V:
//     grad_x      = G W  (+ dU A when lora_x is absent)      grad_lora_x = dU A  (empty when lora_x is absent)
//     grad_lora_A = dU^T lx       grad_lora_B = s * alpha * (G^T U)      grad_alpha_j = s * sum_n U_nj V_nj
//   grad_x and grad_lora_x are empty when input_grad is false. Weight and bias gradients are formed by the caller.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(autolora, m) {
  m.def("lora_linear(Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, Tensor lora_B, Tensor alpha, "
        "float scaling, Tensor? lora_x) -> Tensor");
  m.def("lora_linear_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor lora_A, Tensor lora_B, Tensor alpha, "
        "float scaling, Tensor? lora_x, bool input_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// Importing autolora._C registers the operators above; the module itself exposes nothing.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
