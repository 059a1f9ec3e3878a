"""The fused alpha-weighted LoRA linear and its dispatch.

    y = x W^T + b + s * ((lx A^T) * alpha) B^T,        lx = lora_x if given, else x

x (..., d_in) with any leading dims, W (d_out, d_in), b (d_out) or None, A (r, d_in), B (d_out, r), alpha (r),
s a Python float. ``lora_x`` is the input of the LoRA branch only, e.g. ``dropout(x)``: the caller draws the dropout
mask, so the op stays deterministic and its gradients flow to both x and lora_x.

Dtypes. x, W, b and lora_x share the base dtype; A, B and alpha share the adapter dtype, which is the base dtype or,
on a float16/bfloat16 base, float32 (PEFT's ``autocast_adapter_dtype``: half-precision frozen weights, float32
trainable factors). With a float32 adapter on a half base the op computes the base product x W^T + b in the base
dtype, the LoRA branch in float32 (lx cast to float32), and rounds their float32 sum once to the base dtype; the
gradients of A, B and alpha are float32. Under autocast any floating dtypes are accepted and cast as autocast
prescribes.

Implementations, chosen per call: the ``autolora._C`` extension (``torch.ops.autolora.lora_linear``; CPU kernel in
float32/float64, CUDA kernel in float32/float64/float16/bfloat16 when it was built) when all operands have one
dtype, and otherwise the pure-PyTorch :func:`lora_linear_reference`: for any other device or dtype, for a float32
adapter on a half-precision base, under autocast, when the extension is absent, or when ``AUTOLORA_NO_EXT=1``. The
extension op is differentiable through ``torch.library.register_autograd``: the first backward calls the fused
``autolora::lora_linear_backward``; a backward that must itself be differentiable (``create_graph=True``, as in exact
hypergradients) runs the same formulas as ATen ops, so double backward works. The reference is plain autograd, so
double backward works there too.
"""
import functools
import math
import numbers
import os
import warnings

import torch
import torch.nn.functional as F

HALF_DTYPES = (torch.float16, torch.bfloat16)
_FUSED_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}


def _load_extension():
    """Import ``autolora._C`` (which registers the operators); False, after one warning, when it is unavailable."""
    if os.environ.get("AUTOLORA_NO_EXT") == "1":
        warnings.warn("autolora.ops: AUTOLORA_NO_EXT=1, lora_linear uses the pure-PyTorch reference", stacklevel=3)
        return False
    try:
        from autolora import _C  # noqa: F401  (import side effect: operator registration)
    except ImportError as err:
        warnings.warn(f"autolora.ops: extension autolora._C not importable ({err}); lora_linear uses the "
                      "pure-PyTorch reference. Build it with `pip install --no-build-isolation -e .`", stacklevel=3)
        return False
    return True


_EXTENSION_LOADED = _load_extension()


@functools.cache
def _has_kernel(device_type):
    """Whether the extension registered a ``lora_linear`` kernel for ``device_type`` ("CPU", "CUDA"); registrations
    happen when ``autolora._C`` is imported, so the answer is cached."""
    return _EXTENSION_LOADED and torch._C._dispatch_has_kernel_for_dispatch_key("autolora::lora_linear", device_type)


def backend():
    """The active implementation: "cuda" (extension with CUDA kernel, CUDA available), "cpp" or "reference".

    The extension runs the calls whose operands share one dtype; a float32 adapter on a half-precision base and
    calls under autocast always run :func:`lora_linear_reference`, whatever this returns.
    """
    if not _EXTENSION_LOADED:
        return "reference"
    if torch.cuda.is_available() and _has_kernel("CUDA"):
        return "cuda"
    return "cpp"


def lora_linear_reference(x, weight, bias, lora_A, lora_B, alpha, scaling, *, lora_x=None):
    """Pure-PyTorch y = x W^T + b + s * ((lx A^T) * alpha) B^T with lx = lora_x, or x when lora_x is None.

    The base product runs in W's dtype and the LoRA branch in A's (lx is cast to it); their sum is formed in the
    wider dtype and rounded once to the base product's dtype (x's, or autocast's).
    """
    lx = x if lora_x is None else lora_x
    base = F.linear(x, weight, bias)
    update = scaling * F.linear(F.linear(lx.to(lora_A.dtype), lora_A) * alpha, lora_B)
    return (base + update).to(base.dtype)


def lora_linear(x, weight, bias, lora_A, lora_B, alpha, scaling, *, lora_x=None):
    """y = x W^T + b + s * ((lx A^T) * alpha) B^T, lx = lora_x or x; fused kernel where one exists.

    A, B and alpha may be float32 while x, W, b are float16/bfloat16 (see the module docstring); y has x's dtype.
    Under autocast for x's device type the pure-PyTorch reference runs instead (its F.linear calls cast the
    operands as autocast prescribes), and the operands' floating dtypes may differ. Raises TypeError / ValueError
    naming the operand to fix when types, dtypes, devices or shapes disagree.
    """
    autocast = _autocast_enabled(x)
    check_lora_linear_inputs(x, weight, bias, lora_A, lora_B, alpha, scaling, lora_x, same_dtype=not autocast)
    if not autocast and lora_A.dtype == x.dtype and _uses_fused_kernel(x):
        return torch.ops.autolora.lora_linear(x, weight, bias, lora_A, lora_B, alpha, float(scaling), lora_x)
    return lora_linear_reference(x, weight, bias, lora_A, lora_B, alpha, scaling, lora_x=lora_x)


def _autocast_enabled(x):
    """Whether autocast is on for x's device type (then operand dtypes may differ and F.linear casts them)."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know, e.g. meta
        return False


def _uses_fused_kernel(x):
    """Whether the extension has a kernel for x's device and dtype (meta tensors go to the registered fake)."""
    if not _EXTENSION_LOADED:
        return False
    if x.device.type == "meta":
        return True
    return x.dtype in _FUSED_DTYPES.get(x.device.type, ()) and _has_kernel(x.device.type.upper())


def check_lora_linear_inputs(x, weight, bias, lora_A, lora_B, alpha, scaling, lora_x=None, same_dtype=True):
    """Validate the operands of :func:`lora_linear`; the messages say which operand to change and how.

    Dtypes: see :func:`_check_dtypes`; ``same_dtype=False`` (used under autocast) allows any floating dtypes.
    """
    operands = {"x": x, "weight": weight, "bias": bias, "lora_A": lora_A, "lora_B": lora_B, "alpha": alpha,
                "lora_x": lora_x}
    for name, value in operands.items():
        if not isinstance(value, torch.Tensor) and not (value is None and name in ("bias", "lora_x")):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real):
        raise TypeError(f"scaling must be a Python float, got {type(scaling).__name__}")
    if not math.isfinite(float(scaling)):
        raise ValueError(f"scaling must be finite, got {scaling}")
    for name, value in operands.items():
        if value is not None and not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if value is not None and value.device != x.device:
            raise ValueError(f"{name} is on device {value.device} but x is on {x.device}; move all operands to "
                             "one device")
    if same_dtype:
        _check_dtypes(x, weight, bias, lora_A, lora_B, alpha, lora_x)
    _check_shapes(x, weight, bias, lora_A, lora_B, alpha, lora_x)


def _check_dtypes(x, weight, bias, lora_A, lora_B, alpha, lora_x):
    """x, weight, bias, lora_x share the base dtype; lora_A, lora_B, alpha share the adapter dtype, which is the
    base dtype or float32 on a half-precision base."""
    for group in ({"x": x, "weight": weight, "bias": bias, "lora_x": lora_x},
                  {"lora_A": lora_A, "lora_B": lora_B, "alpha": alpha}):
        (first, reference), *others = group.items()
        for name, value in others:
            if value is not None and value.dtype != reference.dtype:
                raise TypeError(f"{name} has dtype {value.dtype} but {first} has {reference.dtype}; "
                                f"{', '.join(group)} need one dtype")
    if lora_A.dtype != x.dtype and not (x.dtype in HALF_DTYPES and lora_A.dtype == torch.float32):
        raise TypeError(f"lora_A has dtype {lora_A.dtype} but x has {x.dtype}; the LoRA factors and alpha need x's "
                        "dtype, or float32 when x is float16/bfloat16")


def _check_shapes(x, weight, bias, lora_A, lora_B, alpha, lora_x):
    """Shapes: x (..., d_in), weight (d_out, d_in), alpha (r), A (r, d_in), B (d_out, r), bias (d_out), lora_x ~ x."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D (d_out, d_in) matrix, got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    if x.dim() < 1 or x.shape[-1] != d_in:
        raise ValueError(f"x must have shape (..., d_in)=(..., {d_in}) to match weight, got {tuple(x.shape)}")
    if alpha.dim() != 1:
        raise ValueError(f"alpha must be a 1-D vector of r selection weights, got shape {tuple(alpha.shape)}")
    r = alpha.shape[0]
    expected = {"lora_A": (lora_A, (r, d_in), "(r, d_in)"), "lora_B": (lora_B, (d_out, r), "(d_out, r)"),
                "bias": (bias, (d_out,), "(d_out,)"), "lora_x": (lora_x, tuple(x.shape), "x.shape")}
    for name, (value, shape, formula) in expected.items():
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {formula}={shape}, got {tuple(value.shape)}")


def as_rows(t, width):
    """``t`` (..., width) as a (rows, width) matrix; unlike reshape(-1, width) this also works for width 0."""
    return t.reshape(t.shape[:-1].numel(), width)


def lora_linear_grads(grad_y, x, weight, lora_A, lora_B, alpha, scaling, lora_x=None, input_grad=True):
    """Differentiable ATen form of ``autolora::lora_linear_backward`` (same outputs, same formulas).

    With G = grad_y as rows, U = lx A^T, V = G B, dU = s * alpha * V:
        grad_x = G W (+ dU A when lora_x is None),  grad_lora_x = dU A (empty when lora_x is None),
        grad_A = dU^T lx,  grad_B = s * (G^T U) * alpha,  grad_alpha = s * sum_n U * V.
    grad_x and grad_lora_x are empty tensors when ``input_grad`` is False.
    """
    d_out, d_in = weight.shape
    g, x2 = as_rows(grad_y, d_out), as_rows(x, d_in)
    lx = x2 if lora_x is None else as_rows(lora_x, d_in)
    coef = alpha * scaling
    u = lx @ lora_A.t()
    v = g @ lora_B
    du = v * coef
    grad_A, grad_B, grad_alpha = du.t() @ lx, g.t() @ (u * coef), (u * v).sum(0) * scaling
    empty = x.new_empty(0)
    if not input_grad:
        return empty, empty, grad_A, grad_B, grad_alpha
    grad_x, lora_part = g @ weight, du @ lora_A
    if lora_x is None:
        return (grad_x + lora_part).reshape(x.shape), empty, grad_A, grad_B, grad_alpha
    return grad_x.reshape(x.shape), lora_part.reshape(x.shape), grad_A, grad_B, grad_alpha


def _setup_context(ctx, inputs, output):
    x, weight, bias, lora_A, lora_B, alpha, scaling, lora_x = inputs
    ctx.scaling = scaling
    ctx.save_for_backward(x, weight, lora_A, lora_B, alpha, lora_x)


def _backward(ctx, grad_y):
    """Gradients for (x, weight, bias, lora_A, lora_B, alpha, scaling, lora_x); fused unless create_graph."""
    x, weight, lora_A, lora_B, alpha, lora_x = ctx.saved_tensors
    needs = ctx.needs_input_grad
    input_grad = needs[0] or needs[7]
    grads_of = lora_linear_grads if torch.is_grad_enabled() else torch.ops.autolora.lora_linear_backward
    grad_x, grad_lx, grad_A, grad_B, grad_alpha = grads_of(grad_y, x, weight, lora_A, lora_B, alpha, ctx.scaling,
                                                           lora_x, input_grad)
    g = as_rows(grad_y, weight.shape[0])
    grad_weight = g.t() @ as_rows(x, weight.shape[1]) if needs[1] else None
    grad_bias = g.sum(0) if needs[2] else None
    return (grad_x if needs[0] else None, grad_weight, grad_bias, grad_A if needs[3] else None,
            grad_B if needs[4] else None, grad_alpha if needs[5] else None, None, grad_lx if needs[7] else None)


def _fake_forward(x, weight, bias, lora_A, lora_B, alpha, scaling, lora_x):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _fake_backward(grad_y, x, weight, lora_A, lora_B, alpha, scaling, lora_x, input_grad):
    grad_x = x.new_empty(x.shape) if input_grad else x.new_empty(0)
    grad_lx = x.new_empty(x.shape) if input_grad and lora_x is not None else x.new_empty(0)
    return grad_x, grad_lx, lora_A.new_empty(lora_A.shape), lora_B.new_empty(lora_B.shape), alpha.new_empty(alpha.shape)


if _EXTENSION_LOADED:
    torch.library.register_fake("autolora::lora_linear")(_fake_forward)
    torch.library.register_fake("autolora::lora_linear_backward")(_fake_backward)
    torch.library.register_autograd("autolora::lora_linear", _backward, setup_context=_setup_context)
