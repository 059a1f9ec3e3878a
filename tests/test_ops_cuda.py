"""The CUDA kernel of autolora.ops.lora_linear against the float64 einsum oracle, opcheck and gradcheck on CUDA.

Skipped on machines without CUDA or without the CUDA kernel in autolora._C.
"""
import pytest
import torch

from autolora import ops
from test_ops import einsum_oracle, float64_leaves, grads_of, make_operands

HAS_CUDA_KERNEL = torch.cuda.is_available() and ops._has_kernel("CUDA")
pytestmark = pytest.mark.skipif(not HAS_CUDA_KERNEL, reason="needs CUDA and the CUDA kernel of autolora._C")

# Error relative to the largest sum of |terms| of an output entry (the size rounding errors scale with, also where
# terms cancel): accumulation is float32 (float64 for float64 inputs), the tolerance reflects the rounding of inputs
# and outputs to the storage dtype.
RELATIVE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}
HALF_DTYPES = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
SCALING = 0.5
DEVICE = "cuda"  # every tensor of these tests is created here

# (leading dims, d_in, d_out, r): ragged tiles, ranks across the kernels' rank chunks (8 in shrink, 32 in expand),
# many 16-row expand tiles and columns beyond one 256-thread tile.
SHAPES = [((7,), 5, 3, 1), ((2, 9), 33, 17, 8), ((1300,), 300, 270, 17), ((3, 5, 40), 64, 96, 40)]


def assert_relative_close(actual, expected, magnitude, dtype):
    """max |actual - expected| <= RELATIVE_TOLERANCE[dtype] * max(magnitude), magnitude: expected's sums of |terms|."""
    assert actual.shape == expected.shape
    if expected.numel() == 0:
        return
    scale = magnitude.abs().max().item()
    error = (actual.double() - expected).abs().max().item()
    assert error <= RELATIVE_TOLERANCE[dtype] * scale, f"max error {error:.3g} vs scale {scale:.3g} in {dtype}"


def fused(*operands):
    """ops.lora_linear on (x, weight, bias, lora_A, lora_B, alpha, lora_x)."""
    return ops.lora_linear(*operands[:6], SCALING, lora_x=operands[6])


def oracle(*operands):
    return einsum_oracle(*operands[:6], SCALING, operands[6])


def absolute(tensors):
    """float64 |t| of each tensor (None stays None): the oracle at these gives the sums of |terms|."""
    return float64_leaves([None if t is None else t.abs() for t in tensors])


def assert_forward_matches_oracle(operands, dtype):
    """ops.lora_linear at ``operands`` (x, weight, bias, lora_A, lora_B, alpha, lora_x) against the float64 oracle."""
    y = fused(*operands)
    assert y.dtype == dtype
    assert_relative_close(y, oracle(*float64_leaves(operands)), oracle(*absolute(operands)), dtype)


def assert_matches_oracle(operands, dtype):
    """Forward and every gradient of <y, G> (G random) of the op at ``operands`` (x, weight, bias, lora_A, lora_B,
    alpha, lora_x; None where absent; each requiring grad, views allowed) against the float64 oracle."""
    assert_forward_matches_oracle(operands, dtype)
    grad_y = torch.randn(fused(*operands).shape, device=DEVICE, dtype=torch.float64)
    expected = grads_of(oracle, float64_leaves(operands), grad_y)
    magnitudes = grads_of(oracle, absolute(operands), grad_y.abs())
    for got, want, magnitude in zip(grads_of(fused, operands, grad_y.to(dtype)), expected, magnitudes):
        if want is not None:
            assert got.dtype == dtype
            assert_relative_close(got, want, magnitude, dtype)


def leaves(tensors):
    """Fresh leaves requiring grad with the values (and the layout, when dense) of ``tensors``."""
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("with_lora_x", [False, True])
def test_cuda_matches_oracle(dtype, shape, with_lora_x):
    lead, d_in, d_out, r = shape
    operands = list(make_operands(lead, d_in, d_out, r, dtype, bias=r % 2 == 0, seed=r, device=DEVICE))
    operands[5][0] = 0.0  # a zeroed selection weight
    lora_x = torch.randn(*lead, d_in, device=DEVICE, dtype=dtype) if with_lora_x else None
    assert_matches_oracle(leaves([*operands, lora_x]), dtype)


def test_cuda_non_contiguous_input():
    x, weight, bias, lora_A, lora_B, alpha = make_operands((6, 4), 10, 7, 3, torch.float32, device=DEVICE)
    x = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x.is_contiguous()
    assert_forward_matches_oracle([x, weight, bias, lora_A, lora_B, alpha, None], torch.float32)


def strided_view(values, transposed=False):
    """A view holding ``values`` at a storage offset of 3 with stride 2 along its last stored dim (the last dim, or the
    first when ``transposed``: column-major storage), cut from a NaN-filled leaf that requires grad, so that a kernel
    reading the storage as if it were contiguous picks up NaN."""
    stored = values.t() if transposed else values
    padded = torch.full((*stored.shape[:-1], 2 * stored.shape[-1] + 3), float("nan"), dtype=values.dtype,
                        device=values.device)
    padded[..., 3::2] = stored
    view = padded.requires_grad_()[..., 3::2]
    return view.t() if transposed else view


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_cuda_transposed_weight_and_sliced_operands(dtype):
    """GPT-2's Conv1D passes weight.t() (column-major W); A, B, alpha and bias as views with offsets and non-unit
    strides (B column-major), x transposed: the op reads each through its strides and returns the gradients of the
    views' values."""
    x, weight, bias, lora_A, lora_B, alpha = make_operands((9, 40), 70, 300, 12, dtype, seed=11, device=DEVICE)
    x = leaves([x.transpose(0, 1).contiguous().transpose(0, 1)])[0]
    weight = leaves([weight.t().contiguous()])[0].t()
    operands = [x, weight, strided_view(bias), strided_view(lora_A), strided_view(lora_B, transposed=True),
                strided_view(alpha), None]
    assert not x.is_contiguous() and weight.t().is_contiguous()
    assert all(not t.is_contiguous() and t.storage_offset() > 0 for t in operands[2:6])
    assert_matches_oracle(operands, dtype)


EMPTY_SHAPES = [((0,), 5, 4, 3), ((2, 0), 5, 4, 3), ((3,), 5, 4, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=[str(s) for s in EMPTY_SHAPES])
@pytest.mark.parametrize("with_lora_x", [False, True])
def test_cuda_no_rows_or_zero_rank(dtype, shape, with_lora_x):
    """No rows (also behind a leading dim) or r = 0: shapes and values of y and every gradient equal the oracle's
    (zeros where a sum is empty)."""
    lead, d_in, d_out, r = shape
    operands = make_operands(lead, d_in, d_out, r, dtype, device=DEVICE)
    lora_x = torch.randn(*lead, d_in, device=DEVICE, dtype=dtype) if with_lora_x else None
    assert_matches_oracle(leaves([*operands, lora_x]), dtype)


@pytest.mark.parametrize("d_in,d_out", [(0, 4), (5, 0)])
def test_cuda_forward_with_zero_width(d_in, d_out):
    """d_in = 0 (y = b) or d_out = 0 (y has no columns): the forward returns the oracle's output."""
    x, weight, bias, lora_A, lora_B, alpha = make_operands((3, 2), max(d_in, 1), d_out, 3, torch.float32,
                                                           device=DEVICE)
    assert_forward_matches_oracle([x[..., :d_in], weight[:, :d_in], bias, lora_A[:, :d_in], lora_B, alpha, None],
                                  torch.float32)


def test_cuda_rows_beyond_one_grid():
    """More rows than 65535 expand tiles of 16 rows: the blocks stride over the remaining row tiles."""
    rows = 16 * 65535 + 37
    operands = make_operands((rows,), 8, 6, 3, torch.float32, seed=5, device=DEVICE)
    assert_matches_oracle(leaves([*operands, None]), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_lora_x", [False, True])
def test_cuda_backward_is_bitwise_reproducible(dtype, with_lora_x):
    """Backward passes over the same inputs give bit-identical gradients (sums over 8192 rows in a fixed order)."""
    x, weight, bias, lora_A, lora_B, alpha = make_operands((8192,), 96, 80, 16, dtype, seed=3, device=DEVICE)
    lora_x = torch.randn_like(x) if with_lora_x else None
    operands = leaves([x, weight, bias, lora_A, lora_B, alpha, lora_x])
    grad_y = torch.randn(8192, 80, device=DEVICE, dtype=dtype)
    first = grads_of(fused, operands, grad_y)
    for _ in range(3):
        for want, got in zip(first, grads_of(fused, operands, grad_y)):
            assert want is None or torch.equal(want, got)


def half_ulp(values, dtype):
    """Half the spacing of ``dtype`` numbers at |values| (float64): 2^(e - 1) eps / 2 for |values| in [2^(e-1), 2^e)."""
    _, exponent = torch.frexp(values)
    return torch.ldexp(torch.full_like(values, torch.finfo(dtype).eps / 2), exponent - 1)


def assert_rounded_once(actual, exact, small_part, magnitude, dtype):
    """|actual - exact| <= half an ulp of exact, plus half an ulp of the largest |small_part| (a term rounded on its own
    before the sum), plus float32 accumulation error (2^-20 of the sum of |terms| ``magnitude``), with 1% margin."""
    exact, small_part, magnitude = exact.detach(), small_part.detach(), magnitude.detach()
    bound = half_ulp(exact, dtype) * 1.01 + half_ulp(small_part.abs().max(), dtype) + 2.0 ** -20 * magnitude
    excess = (actual.double() - exact).abs() - bound
    assert excess.max().item() <= 0, f"{int((excess > 0).sum())} of {excess.numel()} entries rounded more than once"


def rounding_case(dtype):
    """Operands whose rank-r term is about 1% of the base product (no bias): rounding the base product to the storage
    dtype before adding it would move many entries by more than half an ulp."""
    x, weight, _, lora_A, lora_B, alpha = make_operands((512,), 64, 48, 4, dtype, seed=13, device=DEVICE)
    return [x, weight, None, lora_A, lora_B * 0.02, alpha, None]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cuda_half_precision_output_is_rounded_once(dtype):
    """y = x W^T + s ((x A^T) alpha) B^T is accumulated in float32 and rounded once to float16/bfloat16 (the rank-r
    term, 1% of y, is rounded once on its own)."""
    operands = rounding_case(dtype)
    exact = oracle(*float64_leaves(operands))
    lora_only = oracle(operands[0].double(), torch.zeros_like(operands[1], dtype=torch.float64),
                       *float64_leaves(operands[2:]))
    magnitude = oracle(*float64_leaves([None if t is None else t.abs() for t in operands]))
    assert_rounded_once(fused(*operands), exact, lora_only, magnitude, dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_cuda_half_precision_input_gradient_is_rounded_once(dtype):
    """grad_x = G W + dU A, dU = s alpha (G B), accumulated in float32 and rounded once (dU A is rounded once on its
    own)."""
    operands = rounding_case(dtype)
    x = operands[0].clone().requires_grad_()
    grad_y = torch.randn(512, 48, device=DEVICE, dtype=torch.float64).to(dtype)
    got = torch.autograd.grad(fused(x, *operands[1:]), x, grad_y)[0]
    g, w, a, b, alpha = (t.double() for t in (grad_y, operands[1], operands[3], operands[4], operands[5]))
    lora_only = (g @ b * (SCALING * alpha)) @ a
    magnitude = g.abs() @ w.abs() + (g.abs() @ b.abs() * (SCALING * alpha)) @ a.abs()
    assert_rounded_once(got, g @ w + lora_only, lora_only, magnitude, dtype)


def test_cuda_backward_rejects_grad_y_of_another_device_dtype_or_shape():
    x, weight, _, lora_A, lora_B, alpha = make_operands((2, 3), 6, 4, 3, torch.float32, device=DEVICE)
    backward = torch.ops.autolora.lora_linear_backward.default
    bad = {"device": (torch.zeros(2, 3, 4, device="cpu"), "must have x's dtype and device"),
           "dtype": (torch.zeros(2, 3, 4, device=DEVICE, dtype=torch.float64), "must have x's dtype and device"),
           "shape": (torch.zeros(3, 2, 4, device=DEVICE), "must have y's shape")}
    for grad_y, message in bad.values():
        with pytest.raises(RuntimeError, match=message):
            backward(grad_y, x, weight, lora_A, lora_B, alpha, 0.7, None, True)


@pytest.mark.parametrize("with_lora_x", [False, True])
def test_cuda_gradcheck_and_gradgradcheck_float64(with_lora_x):
    operands = [t.requires_grad_() for t in make_operands((2, 3), 5, 4, 3, device=DEVICE, seed=1)]
    lora_x = torch.randn(2, 3, 5, dtype=torch.float64, device=DEVICE, requires_grad=True) if with_lora_x else None
    live = [*operands, lora_x] if with_lora_x else operands

    def fn(*tensors):
        return ops.lora_linear(*tensors[:6], 0.7, lora_x=tensors[6] if with_lora_x else None)

    # nondet_tol=0: gradcheck also requires two backward passes to agree bitwise
    assert torch.autograd.gradcheck(fn, live)
    assert torch.autograd.gradgradcheck(fn, live)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_opcheck(dtype):
    x, weight, bias, lora_A, lora_B, alpha = make_operands((2, 3), 6, 4, 3, dtype, device=DEVICE)
    args = [t.requires_grad_() for t in (x, weight, bias, lora_A, lora_B, alpha)]
    torch.library.opcheck(torch.ops.autolora.lora_linear.default, (*args, 0.7, None))
    grad_y = torch.randn(2, 3, 4, dtype=dtype, device=DEVICE)
    torch.library.opcheck(torch.ops.autolora.lora_linear_backward.default,
                          (grad_y, x.detach(), weight.detach(), lora_A.detach(), lora_B.detach(), alpha.detach(),
                           0.7, None, True))
