"""The fused op autolora.ops.lora_linear against an independent float64 einsum oracle, opcheck, gradcheck,
gradgradcheck, input validation, and the fallback to the pure-PyTorch reference."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autolora import ops

EXTENSION_BUILT = importlib.util.find_spec("autolora._C") is not None and os.environ.get("AUTOLORA_NO_EXT") != "1"
requires_extension = pytest.mark.skipif(not EXTENSION_BUILT, reason="autolora._C not built (AUTOLORA_REQUIRE_EXT=1 "
                                                                    "makes test_backend_* fail instead)")
OPERAND_NAMES = ("x", "weight", "bias", "lora_A", "lora_B", "alpha")


def make_operands(lead, d_in, d_out, r, dtype=torch.float64, bias=True, seed=0, device="cpu"):
    """Random (x, weight, bias, lora_A, lora_B, alpha) with x of shape (*lead, d_in); alpha in (0, 1)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)

    return (rand(*lead, d_in), rand(d_out, d_in, scale=d_in ** -0.5), rand(d_out) if bias else None,
            rand(r, d_in, scale=d_in ** -0.5), rand(d_out, r),
            torch.rand(r, generator=g, dtype=torch.float64).to(device=device, dtype=dtype))


def einsum_oracle(x, weight, bias, lora_A, lora_B, alpha, scaling, lora_x=None):
    """y = x W^T + b + s ((lx A^T) alpha) B^T written with einsum (independent of autolora.ops)."""
    lx = x if lora_x is None else lora_x
    y = torch.einsum("...i,oi->...o", x, weight)
    if bias is not None:
        y = y + bias
    shrunk = torch.einsum("...i,ji->...j", lx, lora_A) * alpha
    return y + scaling * torch.einsum("...j,oj->...o", shrunk, lora_B)


def float64_leaves(tensors):
    """Detached float64 copies requiring grad (None stays None)."""
    return [None if t is None else t.detach().double().requires_grad_() for t in tensors]


def grads_of(fn, tensors, grad_y):
    """Gradients of <fn(*tensors), grad_y> with respect to every tensor that is not None."""
    live = [t for t in tensors if t is not None]
    grads = iter(torch.autograd.grad(fn(*tensors), live, grad_y))
    return [None if t is None else next(grads) for t in tensors]


# Relative tolerance by the dtype of the result: rounding-level agreement for float64 and float32; a float16 or
# bfloat16 result is rounded twice (the base product, then its sum with the float32 LoRA branch), each time by at most
# the unit roundoff u = 2^-11 (float16) or 2^-8 (bfloat16).
ORACLE_TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2 * 2.0 ** -11,
                    torch.bfloat16: 2 * 2.0 ** -8}


def assert_close_to_oracle(actual, expected, magnitude=None):
    """Error within ORACLE_TOLERANCE[actual.dtype] relative to the oracle's magnitude.

    ``magnitude`` (default: the largest |expected|) is the size the rounding error scales with; for sums with
    cancellation pass the same quantity computed from absolute values (sum of |terms|)."""
    tol = ORACLE_TOLERANCE[actual.dtype]
    if magnitude is None:
        magnitude = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * (1.0 + magnitude))


# ---------------------------------------------------------------------------------------------------- backend

@pytest.mark.skipif(os.environ.get("AUTOLORA_REQUIRE_EXT") != "1", reason="only where AUTOLORA_REQUIRE_EXT=1")
def test_backend_extension_is_built_where_required():
    assert EXTENSION_BUILT, "AUTOLORA_REQUIRE_EXT=1 but autolora._C was not built"
    assert ops.backend() in ("cpp", "cuda")


def operators_run_by(call):
    """Names of the operators the dispatcher ran during ``call()``, from a profiler record."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        call()
    return {event.key for event in profile.key_averages()}


@requires_extension
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the backend reported is the CUDA kernel's")
def test_backend_is_cpp_without_cuda():
    assert ops.backend() == "cpp"


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_op_runs_forward_and_backward_for_cpu_operands_of_one_dtype(dtype):
    operands = [t.requires_grad_() for t in make_operands((4,), 6, 5, 3, dtype)]
    assert "autolora::lora_linear" in operators_run_by(lambda: ops.lora_linear(*operands, 0.5))
    y = ops.lora_linear(*operands, 0.5)
    assert "autolora::lora_linear_backward" in operators_run_by(lambda: torch.autograd.grad(y.sum(), operands))


def autocast_bfloat16_call(operands):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return ops.lora_linear(*operands, 0.5)


@pytest.mark.parametrize("case", ["bfloat16", "bfloat16 base, float32 factors", "autocast"])
def test_reference_runs_where_the_cpu_kernel_does_not_apply(case):
    """No CPU kernel for bfloat16, none for mixed dtypes, and autocast casts inside the reference's F.linear calls."""
    operands = {"bfloat16": make_operands((4,), 6, 5, 3, torch.bfloat16),
                "bfloat16 base, float32 factors": half_base_operands(torch.bfloat16)[:6],
                "autocast": make_operands((4,), 6, 5, 3, torch.float32)}[case]
    call = (lambda: autocast_bfloat16_call(operands)) if case == "autocast" else lambda: ops.lora_linear(*operands, 0.5)
    ran = operators_run_by(call)
    assert "autolora::lora_linear" not in ran and "aten::linear" in ran


def test_reference_matches_einsum_oracle():
    x, weight, bias, lora_A, lora_B, alpha = make_operands((3, 4), 7, 5, 3)
    lora_x = torch.randn_like(x)
    for lx in (None, lora_x):
        expected = einsum_oracle(x, weight, bias, lora_A, lora_B, alpha, 0.3, lx)
        torch.testing.assert_close(ops.lora_linear_reference(x, weight, bias, lora_A, lora_B, alpha, 0.3, lora_x=lx),
                                   expected, rtol=1e-12, atol=1e-12)


def test_fallback_with_no_ext_env_uses_reference_and_warns_once():
    script = textwrap.dedent("""
        import warnings
        import torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from autolora import ops
            import autolora.ops
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(4, 6, generator=g), torch.randn(5, 6, generator=g), torch.randn(5, generator=g)
        A, B, alpha = torch.randn(3, 6, generator=g), torch.randn(5, 3, generator=g), torch.rand(3, generator=g)
        y = ops.lora_linear(x, w, b, A, B, alpha, 0.5)
        expected = x @ w.T + b + 0.5 * ((x @ A.T) * alpha) @ B.T
        print(ops.backend(), len(caught), float((y - expected).abs().max()))
        print(caught[0].message)
    """)
    env = dict(os.environ, AUTOLORA_NO_EXT="1")
    env.pop("AUTOLORA_REQUIRE_EXT", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    first, message = result.stdout.strip().splitlines()
    name, n_warnings, max_error = first.split()
    assert (name, n_warnings) == ("reference", "1")
    assert float(max_error) < 1e-5
    assert "AUTOLORA_NO_EXT=1" in message


# ---------------------------------------------------------------------------------------------------- opcheck

@requires_extension
@pytest.mark.parametrize("lead,bias,with_lora_x", [((5,), True, False), ((2, 3), False, False), ((2, 3), True, True)])
def test_opcheck_forward(lead, bias, with_lora_x):
    operands = [t.requires_grad_() if t is not None else None for t in make_operands(lead, 6, 4, 3, bias=bias)]
    lora_x = torch.randn(*lead, 6, dtype=torch.float64, requires_grad=True) if with_lora_x else None
    torch.library.opcheck(torch.ops.autolora.lora_linear.default, (*operands, 0.7, lora_x))


@requires_extension
@pytest.mark.parametrize("input_grad,with_lora_x", [(True, False), (True, True), (False, False), (False, True)])
def test_opcheck_backward(input_grad, with_lora_x):
    x, weight, _, lora_A, lora_B, alpha = make_operands((2, 3), 6, 4, 3)
    lora_x = torch.randn_like(x) if with_lora_x else None
    grad_y = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.autolora.lora_linear_backward.default,
                          (grad_y, x, weight, lora_A, lora_B, alpha, 0.7, lora_x, input_grad))


# ---------------------------------------------------------------------------------------------------- gradcheck

GRADCHECK_CASES = {
    "bias": dict(bias=True, with_lora_x=False),
    "no_bias": dict(bias=False, with_lora_x=False),
    "lora_x": dict(bias=True, with_lora_x=True),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradcheck_and_gradgradcheck_float64(case):
    bias, with_lora_x = GRADCHECK_CASES[case]["bias"], GRADCHECK_CASES[case]["with_lora_x"]
    operands = [t.requires_grad_() if t is not None else None
                for t in make_operands((2, 3), 5, 4, 3, bias=bias, seed=1)]
    lora_x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True) if with_lora_x else None
    live = [t for t in (*operands, lora_x) if t is not None]

    def fn(*tensors):
        it = iter(tensors)
        args = [None if t is None else next(it) for t in operands]
        lx = next(it) if with_lora_x else None
        return ops.lora_linear(*args, 0.7, lora_x=lx)

    assert torch.autograd.gradcheck(fn, live)
    assert torch.autograd.gradgradcheck(fn, live)


def test_mixed_second_derivative_matches_finite_difference_of_gradient():
    """d/dA <grad_alpha L(A), u> against a central difference of grad_alpha in A (the hypergradient's mixed term)."""
    x, weight, bias, lora_A, lora_B, alpha = make_operands((6,), 5, 4, 3, seed=2)
    target = torch.randn(6, 4, dtype=torch.float64)
    direction = torch.randn(3, dtype=torch.float64)

    def grad_alpha(a_matrix, create_graph):
        alpha_leaf = alpha.clone().requires_grad_()
        loss = (ops.lora_linear(x, weight, bias, a_matrix, lora_B, alpha_leaf, 0.7) - target).pow(2).sum()
        return torch.autograd.grad(loss, alpha_leaf, create_graph=create_graph)[0]

    a_leaf = lora_A.clone().requires_grad_()
    mixed = torch.autograd.grad(grad_alpha(a_leaf, True) @ direction, a_leaf)[0]
    eps = 1e-5
    numeric = torch.zeros_like(lora_A)
    for index in range(lora_A.numel()):
        step = torch.zeros_like(lora_A).view(-1)
        step[index] = eps
        step = step.view_as(lora_A)
        numeric.view(-1)[index] = ((grad_alpha(lora_A + step, False) - grad_alpha(lora_A - step, False)) @ direction
                                   / (2 * eps))
    torch.testing.assert_close(mixed, numeric, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------- agreement

@st.composite
def op_cases(draw):
    lead = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    return dict(lead=lead, d_in=draw(st.integers(1, 24)), d_out=draw(st.integers(1, 24)), r=draw(st.integers(1, 9)),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])), bias=draw(st.booleans()),
                transposed_x=draw(st.booleans()), zero_alpha=draw(st.lists(st.booleans(), min_size=9, max_size=9)),
                with_lora_x=draw(st.booleans()), scaling=draw(st.sampled_from([0.0, 0.5, 2.0])),
                seed=draw(st.integers(0, 2 ** 16)))


def build_case(case):
    """Operands of a drawn case: x optionally non-contiguous (a transposed view), some alphas zeroed."""
    lead, d_in = case["lead"], case["d_in"]
    x, weight, bias, lora_A, lora_B, alpha = make_operands(lead, d_in, case["d_out"], case["r"], case["dtype"],
                                                           case["bias"], case["seed"])
    if case["transposed_x"]:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    alpha = alpha.masked_fill(torch.tensor(case["zero_alpha"][:case["r"]]), 0.0)
    lora_x = torch.randn(*lead, d_in, dtype=case["dtype"]) if case["with_lora_x"] else None
    return [x, weight, bias, lora_A, lora_B, alpha, lora_x]


def check_forward_and_grads(tensors, scaling):
    """Forward and all gradients of ops.lora_linear equal the float64 einsum oracle (grads via autograd); y has x's
    dtype and every gradient its operand's."""
    def fused(x, weight, bias, lora_A, lora_B, alpha, lora_x):
        return ops.lora_linear(x, weight, bias, lora_A, lora_B, alpha, scaling, lora_x=lora_x)

    def oracle(*args):
        return einsum_oracle(*args[:6], scaling, args[6])

    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    oracle_leaves = float64_leaves(tensors)
    # The oracle on absolute values gives, per entry, the sum of |terms| that float32 rounding errors scale with.
    abs_leaves = float64_leaves([None if t is None else t.abs() for t in tensors])
    y = fused(*leaves)
    expected = oracle(*oracle_leaves)
    assert y.shape == expected.shape and y.dtype == tensors[0].dtype
    assert_close_to_oracle(y, expected, magnitude=oracle(*abs_leaves).abs().max().item())
    grad_y = torch.randn(y.shape, dtype=torch.float64).to(y.dtype)
    magnitudes = grads_of(oracle, abs_leaves, grad_y.double().abs())
    for got, want, size, leaf in zip(grads_of(fused, leaves, grad_y), grads_of(oracle, oracle_leaves, grad_y.double()),
                                     magnitudes, leaves):
        if want is not None:
            assert got.dtype == leaf.dtype
            assert_close_to_oracle(got, want, magnitude=size.abs().max().item() if size.numel() else 0.0)


@settings(max_examples=60, deadline=None)
@given(case=op_cases())
def test_matches_oracle_on_random_shapes(case):
    tensors = build_case(case)
    if case["transposed_x"] and case["lead"][0] > 1 and case["d_in"] > 1:
        assert not tensors[0].is_contiguous()
    check_forward_and_grads(tensors, case["scaling"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_oracle_over_many_row_blocks(dtype):
    """Enough rows for several cache blocks per thread and a ragged last block."""
    tensors = [*make_operands((1237,), 300, 200, 8, dtype, seed=3), None]
    check_forward_and_grads(tensors, 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("r", [1, 8, 13, 16])
@pytest.mark.parametrize("path", ["folded", "folded_column_major_weight", "per_row", "lora_x"])
def test_matches_oracle_on_each_cpu_path(path, r, dtype):
    """Each CPU path against the oracle: 203 rows fold the rank-r term into the weight (rows (d_in + d_out) >=
    d_in d_out), also with W stored column-major (a transposed view, like GPT-2's Conv1D weight), 21 rows apply it
    per row, and a separate lora_x always does. r = 1, 13 and 16 pad the rank to whole groups of 8 in the float32
    vectorised pass, d_in = 300 and d_out = 40 end in partial 16-lane strips, and neither row count is a multiple
    of the 8-row tile."""
    rows = 21 if path == "per_row" else 203
    x, weight, bias, lora_A, lora_B, alpha = make_operands((rows,), 300, 40, r, dtype, seed=r)
    if path == "folded_column_major_weight":
        weight = weight.t().contiguous().t()
    g = torch.Generator().manual_seed(100 + r)
    lora_x = torch.randn(rows, 300, generator=g, dtype=torch.float64).to(dtype) if path == "lora_x" else None
    check_forward_and_grads([x, weight, bias, lora_A, lora_B, alpha, lora_x], 0.75)


# ------------------------------------------------------------------------------------------- half-precision base

def half_base_operands(dtype, with_lora_x=False, seed=9):
    """[x, W, b, A, B, alpha, lora_x]: x, W, b, lora_x in ``dtype`` and A, B, alpha in float32, as in a half-precision
    model with float32 adapters."""
    x, weight, bias, lora_A, lora_B, alpha = make_operands((3, 5), 24, 16, 4, torch.float32, seed=seed)
    lora_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(dtype) if with_lora_x else None
    return [x.to(dtype), weight.to(dtype), bias.to(dtype), lora_A, lora_B, alpha, lora_x]


@pytest.mark.parametrize("with_lora_x", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_with_float32_factors_matches_oracle(dtype, with_lora_x):
    """y has x's dtype and lies within two roundings of the oracle; the gradients of A, B and alpha are float32 and
    agree with the oracle to float32 rounding (the LoRA branch runs in float32 on the exact values of x and grad_y),
    those of x, W, b and lora_x have the base dtype."""
    check_forward_and_grads(half_base_operands(dtype, with_lora_x), 0.75)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_double_backward_in_float32(dtype):
    """The exact hypergradient's mixed term d/d(A, B) <d/d alpha <y, G>, u> through the op with a half-precision base
    equals the float64 oracle to float32 rounding: for a fixed G, d/d alpha <y, G> = s * sum_n (lx A^T) * (G B)
    involves x and G only through their exact values."""
    x, weight, bias, lora_A, lora_B, alpha, _ = half_base_operands(dtype)
    g = torch.Generator().manual_seed(10)
    grad_y = torch.randn(3, 5, 16, generator=g).to(dtype)
    direction = torch.randn(4, generator=g, dtype=torch.float64)

    def mixed_term(fn, base, factors, grad_y):
        lora_A, lora_B, alpha = [t.detach().clone().requires_grad_() for t in factors]
        (grad_alpha,) = torch.autograd.grad(fn(*base, lora_A, lora_B, alpha, 0.75), alpha, grad_y, create_graph=True)
        return torch.autograd.grad(grad_alpha @ direction.to(alpha.dtype), (lora_A, lora_B))

    got = mixed_term(ops.lora_linear, (x, weight, bias), (lora_A, lora_B, alpha), grad_y)
    want = mixed_term(einsum_oracle, [t.double() for t in (x, weight, bias)],
                      [t.double() for t in (lora_A, lora_B, alpha)], grad_y.double())
    for actual, expected in zip(got, want):
        assert actual.dtype == torch.float32
        assert_close_to_oracle(actual, expected)


def test_dropout_on_lora_input_with_explicit_mask():
    """lora_x = x * mask / (1 - p): output and grads (through both uses of x) equal the oracle with that mask."""
    x, weight, bias, lora_A, lora_B, alpha = make_operands((4, 5), 6, 7, 3, seed=4)
    p = 0.25
    mask = (torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) >= p).double()
    params = [t.clone().requires_grad_() for t in (x, weight, bias, lora_A, lora_B, alpha)]
    oracle_params = [t.clone().requires_grad_() for t in (x, weight, bias, lora_A, lora_B, alpha)]
    y = ops.lora_linear(*params, 1.5, lora_x=params[0] * mask / (1 - p))
    expected = einsum_oracle(*oracle_params, 1.5, oracle_params[0] * mask / (1 - p))
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    grad_y = torch.randn_like(y)
    got_grads = torch.autograd.grad(y, params, grad_y, retain_graph=True)
    for got, want in zip(got_grads, torch.autograd.grad(expected, oracle_params, grad_y)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # The mask matters: the x-gradient differs from the one without dropout.
    no_dropout = torch.autograd.grad(ops.lora_linear(*params, 1.5), params[0], grad_y)[0]
    assert (no_dropout - got_grads[0]).abs().max() > 1e-3


def test_factor_grads_with_frozen_base_and_constant_input():
    """Only A, B, alpha require grad: the backward skips grad_x (input_grad=False) and still gets the factors right."""
    x, weight, bias, lora_A, lora_B, alpha = make_operands((5, 2), 6, 4, 3, seed=6)
    factors = [t.clone().requires_grad_() for t in (lora_A, lora_B, alpha)]
    oracle_factors = float64_leaves(factors)
    grads = torch.autograd.grad(ops.lora_linear(x, weight, bias, *factors, 0.5).pow(2).sum(), factors)
    expected = torch.autograd.grad(einsum_oracle(x, weight, bias, *oracle_factors, 0.5).pow(2).sum(), oracle_factors)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rows", [0, 7])
def test_transposed_weight_expanded_grad_and_empty_batch(rows):
    """W as a transposed view (GPT-2 Conv1D storage), grad_y from y.sum() (stride 0), and a batch of zero rows."""
    x, weight, _, lora_A, lora_B, alpha = make_operands((rows,), 5, 4, 3, seed=7)
    weight = weight.t().contiguous().t()
    leaves = [t.clone().requires_grad_() for t in (x, weight, lora_A, lora_B, alpha)]
    oracle_leaves = float64_leaves(leaves)
    got = torch.autograd.grad(ops.lora_linear(leaves[0], leaves[1], None, *leaves[2:], 0.5).sum(), leaves)
    want = torch.autograd.grad(einsum_oracle(oracle_leaves[0], oracle_leaves[1], None, *oracle_leaves[2:], 0.5).sum(),
                               oracle_leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@requires_extension
def test_meta_tensors_give_output_shape():
    operands = make_operands((2, 3), 6, 4, 3, device="meta")
    y = ops.lora_linear(*operands, 0.5)
    assert y.device.type == "meta" and y.shape == (2, 3, 4)


AUTOCAST_UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


@pytest.mark.parametrize("with_lora_x", [False, True])
@pytest.mark.parametrize("x_in_autocast_dtype", [False, True])
@pytest.mark.parametrize("autocast_dtype", list(AUTOCAST_UNIT_ROUNDOFF))
def test_cpu_autocast_matches_oracle_to_the_rounding_autocast_introduces(autocast_dtype, x_in_autocast_dtype,
                                                                         with_lora_x):
    """Under CPU autocast, float32 parameters with a float32 x or one in the autocast dtype (mixed dtypes) give y in
    the autocast dtype and float32 parameter gradients, against the float64 einsum oracle evaluated at the operands
    autocast casts for F.linear (x, W, b, A, B, lora_x rounded to the autocast dtype; alpha multiplies in float32).

    Tolerance: every further rounding to the autocast dtype multiplies a partial result by (1 + d), |d| <= u. Along
    the forward, the LoRA term passes at most 5 (lx A^T, its product with alpha cast for the second F.linear,
    (.) B^T, the scaling, the sum with the base term); along the backward each gradient passes at most 5 (grad_x:
    G W, the LoRA branch's (s G B) * alpha cast, (.) A, the sum of the two; the factors' gradients fewer). So each
    entry is within 5 u M, M the same entry computed on absolute values, plus second-order terms: 6 u M."""
    u = AUTOCAST_UNIT_ROUNDOFF[autocast_dtype]
    x, weight, bias, lora_A, lora_B, alpha = make_operands((3, 5), 16, 12, 4, dtype=torch.float32, seed=8)
    lora_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(11)) if with_lora_x else None
    x_dtype = autocast_dtype if x_in_autocast_dtype else torch.float32
    x, lora_x = x.to(x_dtype), None if lora_x is None else lora_x.to(x_dtype)
    operands = (x, weight, bias, lora_A, lora_B, alpha, lora_x)
    leaves = [None if t is None else t.clone().requires_grad_() for t in operands]
    cast = [t if t is None or t is alpha else t.to(autocast_dtype) for t in operands]
    oracle_leaves = float64_leaves(cast)
    abs_leaves = float64_leaves([None if t is None else t.abs() for t in cast])

    def fused(*args):
        with torch.autocast("cpu", dtype=autocast_dtype):
            return ops.lora_linear(*args[:6], 0.5, lora_x=args[6])

    def oracle(*args):
        return einsum_oracle(*args[:6], 0.5, args[6])

    y = fused(*leaves)
    assert y.dtype == autocast_dtype
    assert_within_roundings(y, oracle(*oracle_leaves), oracle(*abs_leaves), 6 * u)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(12)).to(autocast_dtype)
    for leaf, got, want, magnitude in zip(leaves, grads_of(fused, leaves, grad_y),
                                          grads_of(oracle, oracle_leaves, grad_y.double()),
                                          grads_of(oracle, abs_leaves, grad_y.double().abs())):
        if leaf is not None:
            assert got.dtype == leaf.dtype
            assert_within_roundings(got, want, magnitude, 6 * u)


def assert_within_roundings(actual, expected, magnitude, relative):
    """|actual - expected| <= relative * magnitude entrywise (magnitude: the entry's sum of |terms|)."""
    excess = (actual.double() - expected).abs() / (relative * magnitude.abs() + 1e-30)
    assert excess.max() <= 1.0, f"error {excess.max().item():.3g} times the bound at {excess.argmax().item()}"


# ---------------------------------------------------------------------------------------------------- errors

BASE_SHAPES = {"x": (2, 6), "weight": (4, 6), "bias": (4,)}
FACTOR_SHAPES = {"lora_A": (3, 6), "lora_B": (4, 3), "alpha": (3,)}


def zeros_like_operands(shapes, dtype):
    return {name: torch.zeros(shape, dtype=dtype) for name, shape in shapes.items()}


def bad_inputs():
    """(description, operand overrides, exception type, message fragment)."""
    return [
        ("A cols", {"lora_A": torch.zeros(3, 5)}, ValueError, "lora_A must have shape (r, d_in)=(3, 6), got (3, 5)"),
        ("A rows", {"lora_A": torch.zeros(2, 6)}, ValueError, "lora_A must have shape (r, d_in)=(3, 6), got (2, 6)"),
        ("B shape", {"lora_B": torch.zeros(4, 2)}, ValueError, "lora_B must have shape (d_out, r)=(4, 3), got (4, 2)"),
        ("alpha 2-D", {"alpha": torch.zeros(3, 1)}, ValueError, "alpha must be a 1-D vector"),
        ("bias shape", {"bias": torch.zeros(5)}, ValueError, "bias must have shape (d_out,)=(4,), got (5,)"),
        ("x width", {"x": torch.zeros(2, 5)}, ValueError, "x must have shape (..., d_in)=(..., 6)"),
        ("weight 1-D", {"weight": torch.zeros(6)}, ValueError, "weight must be a 2-D (d_out, d_in) matrix"),
        ("lora_x shape", {"lora_x": torch.zeros(3, 6)}, ValueError,
         "lora_x must have shape x.shape=(2, 6), got (3, 6)"),
        ("factor dtypes", {"lora_B": torch.zeros(4, 3, dtype=torch.float64)}, TypeError,
         "lora_B has dtype torch.float64 but lora_A has torch.float32; lora_A, lora_B, alpha need one dtype"),
        ("base dtypes", {"weight": torch.zeros(4, 6, dtype=torch.bfloat16)}, TypeError,
         "weight has dtype torch.bfloat16 but x has torch.float32; x, weight, bias, lora_x need one dtype"),
        ("half factors", zeros_like_operands(FACTOR_SHAPES, torch.bfloat16), TypeError,
         "lora_A has dtype torch.bfloat16 but x has torch.float32; the LoRA factors and alpha need x's dtype, or "
         "float32 when x is float16/bfloat16"),
        ("float64 factors", {**zeros_like_operands(BASE_SHAPES, torch.bfloat16),
                             **zeros_like_operands(FACTOR_SHAPES, torch.float64)}, TypeError,
         "lora_A has dtype torch.float64 but x has torch.bfloat16"),
        ("int alpha", {"alpha": torch.zeros(3, dtype=torch.int64)}, TypeError,
         "alpha must be a floating-point tensor, got dtype torch.int64"),
        ("int x", {"x": torch.zeros(2, 6, dtype=torch.int64)}, TypeError, "x must be a floating-point tensor"),
        ("device", {"alpha": torch.zeros(3, device="meta")}, ValueError, "alpha is on device meta but x is on cpu"),
        ("not tensor", {"lora_A": [[0.0] * 6] * 3}, TypeError, "lora_A must be a torch.Tensor, got list"),
        ("scaling type", {"scaling": torch.tensor(1.0)}, TypeError, "scaling must be a Python float, got Tensor"),
        ("scaling nan", {"scaling": float("nan")}, ValueError, "scaling must be finite"),
    ]


@pytest.mark.parametrize("description,overrides,error,fragment", bad_inputs(), ids=[c[0] for c in bad_inputs()])
def test_readable_errors(description, overrides, error, fragment):
    args = dict(**zeros_like_operands(BASE_SHAPES, torch.float32), **zeros_like_operands(FACTOR_SHAPES, torch.float32),
                scaling=1.0, lora_x=None)
    args.update(overrides)
    with pytest.raises(error) as info:
        ops.lora_linear(*(args[name] for name in OPERAND_NAMES), args["scaling"], lora_x=args["lora_x"])
    assert fragment in str(info.value)


@pytest.mark.parametrize("d_in, d_out", [(0, 4), (5, 0)], ids=["no-input-features", "no-output-features"])
@pytest.mark.parametrize("create_graph", [False, True], ids=["fused-backward", "differentiable-backward"])
def test_zero_width_forward_and_backward(d_in, d_out, create_graph):
    """A layer with no input (or no output) features: y = b (or empty), and every gradient has its operand's shape
    and is zero (or empty): the closed form of the op at zero width."""
    x = torch.randn(3, 2, d_in, requires_grad=True)
    weight, bias = torch.randn(d_out, d_in), torch.randn(d_out, requires_grad=True)
    lora_A, lora_B = torch.randn(4, d_in, requires_grad=True), torch.randn(d_out, 4, requires_grad=True)
    alpha = torch.rand(4, requires_grad=True)
    y = ops.lora_linear(x, weight, bias, lora_A, lora_B, alpha, 2.0)
    assert torch.equal(y, bias.detach().expand(3, 2, d_out))
    grads = torch.autograd.grad((y * torch.randn_like(y)).sum(), (x, lora_A, lora_B, alpha, bias),
                                create_graph=create_graph)
    for grad, operand in zip(grads[:4], (x, lora_A, lora_B, alpha)):
        assert grad.shape == operand.shape and not grad.abs().sum()
    assert grads[4].shape == bias.shape
