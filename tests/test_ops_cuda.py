"""The CUDA kernel of autolora.ops.lora_linear against the float64 einsum oracle, opcheck and gradcheck on CUDA.

Skipped on machines without CUDA or without the CUDA kernel in autolora._C.
"""
import pytest
import torch

from autolora import ops
from test_ops import einsum_oracle, float64_leaves, grads_of, make_operands

HAS_CUDA_KERNEL = torch.cuda.is_available() and ops._has_kernel("CUDA")
pytestmark = pytest.mark.skipif(not HAS_CUDA_KERNEL, reason="needs CUDA and the CUDA kernel of autolora._C")

# Error relative to the oracle's largest magnitude: accumulation is float32 (float64 for float64 inputs), the
# tolerance reflects the rounding of inputs and outputs to the storage dtype.
RELATIVE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}

# (leading dims, d_in, d_out, r): ragged tiles, ranks across the kernels' rank chunks (8, 16, 32), several
# column-reduce segments (rows > 512) and columns beyond one 256-thread tile.
SHAPES = [((7,), 5, 3, 1), ((2, 9), 33, 17, 8), ((1300,), 300, 270, 17), ((3, 5, 40), 64, 96, 40)]


def assert_relative_close(actual, expected, dtype):
    scale = max(expected.abs().max().item(), 1e-30)
    error = (actual.double() - expected).abs().max().item()
    assert error <= RELATIVE_TOLERANCE[dtype] * scale, f"max error {error:.3g} vs scale {scale:.3g} in {dtype}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("with_lora_x", [False, True])
def test_cuda_matches_oracle(dtype, shape, with_lora_x):
    lead, d_in, d_out, r = shape
    operands = list(make_operands(lead, d_in, d_out, r, dtype, bias=r % 2 == 0, seed=r, device="cuda"))
    operands[5][0] = 0.0  # a zeroed selection weight
    lora_x = torch.randn(*lead, d_in, device="cuda", dtype=dtype) if with_lora_x else None
    tensors = [*operands, lora_x]
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    oracle_leaves = float64_leaves(tensors)

    def fused(*args):
        return ops.lora_linear(*args[:6], 0.5, lora_x=args[6])

    def oracle(*args):
        return einsum_oracle(*args[:6], 0.5, args[6])

    y = fused(*leaves)
    assert y.dtype == dtype
    assert_relative_close(y, oracle(*oracle_leaves), dtype)
    grad_y = torch.randn(y.shape, device="cuda", dtype=torch.float64)
    for got, want in zip(grads_of(fused, leaves, grad_y.to(dtype)), grads_of(oracle, oracle_leaves, grad_y)):
        if want is not None:
            assert got.dtype == dtype
            assert_relative_close(got, want, dtype)


def test_cuda_non_contiguous_input():
    x, weight, bias, lora_A, lora_B, alpha = make_operands((6, 4), 10, 7, 3, torch.float32, device="cuda")
    x = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x.is_contiguous()
    expected = einsum_oracle(*float64_leaves([x, weight, bias, lora_A, lora_B, alpha]), 0.5)
    assert_relative_close(ops.lora_linear(x, weight, bias, lora_A, lora_B, alpha, 0.5), expected, torch.float32)


@pytest.mark.parametrize("with_lora_x", [False, True])
def test_cuda_gradcheck_and_gradgradcheck_float64(with_lora_x):
    operands = [t.requires_grad_() for t in make_operands((2, 3), 5, 4, 3, device="cuda", seed=1)]
    lora_x = torch.randn(2, 3, 5, dtype=torch.float64, device="cuda", requires_grad=True) if with_lora_x else None
    live = [*operands, lora_x] if with_lora_x else operands

    def fn(*tensors):
        return ops.lora_linear(*tensors[:6], 0.7, lora_x=tensors[6] if with_lora_x else None)

    # the column reductions use atomicAdd: results are reproducible only up to float64 rounding
    assert torch.autograd.gradcheck(fn, live, nondet_tol=1e-12)
    assert torch.autograd.gradgradcheck(fn, live, nondet_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_opcheck(dtype):
    x, weight, bias, lora_A, lora_B, alpha = make_operands((2, 3), 6, 4, 3, dtype, device="cuda")
    args = [t.requires_grad_() for t in (x, weight, bias, lora_A, lora_B, alpha)]
    torch.library.opcheck(torch.ops.autolora.lora_linear.default, (*args, 0.7, None))
    grad_y = torch.randn(2, 3, 4, dtype=dtype, device="cuda")
    torch.library.opcheck(torch.ops.autolora.lora_linear_backward.default,
                          (grad_y, x.detach(), weight.detach(), lora_A.detach(), lora_B.detach(), alpha.detach(),
                           0.7, None, True))
