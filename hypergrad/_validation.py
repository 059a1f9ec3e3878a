"""Input checks shared by the functional and the object API: every bad input fails early with a message saying
what to fix, and no function returns a non-finite hypergradient."""
import math
from numbers import Real
from typing import Optional, Sequence

import torch
from torch import Tensor


class NonFiniteHypergradError(ValueError):
    """Raised instead of returning a hypergradient (or loss) that contains NaN or Inf."""


def as_tensor_tuple(name: str, tensors: Sequence[Tensor], *, require_grad: bool = True) -> tuple[Tensor, ...]:
    """Return ``tensors`` as a non-empty tuple of floating-point tensors (that require grad, if asked)."""
    if isinstance(tensors, Tensor):
        raise TypeError(f"{name} must be a sequence of tensors, got a single tensor; pass [tensor] instead")
    try:
        items = tuple(tensors)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of tensors, got {type(tensors).__name__}") from None
    if not items:
        raise ValueError(f"{name} is empty; pass at least one tensor")
    for i, t in enumerate(items):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}[{i}] must be a floating-point tensor, got dtype {t.dtype}")
        if require_grad and not t.requires_grad:
            raise ValueError(f"{name}[{i}] does not require grad; call .requires_grad_() on it")
    return items


def val_only_mask(hparams: Sequence[Tensor], val_only_hparams: Sequence[Tensor]) -> tuple[bool, ...]:
    """One flag per hyper-parameter: True where it is one of ``val_only_hparams`` (matched by identity)."""
    if isinstance(val_only_hparams, Tensor):
        raise TypeError("val_only_hparams must be a sequence of tensors, got a single tensor; pass [tensor] instead")
    position = {id(a): i for i, a in enumerate(hparams)}
    declared = set()
    for k, t in enumerate(val_only_hparams):
        if id(t) not in position:
            raise ValueError(f"val_only_hparams[{k}] is not one of the hyper-parameters; list the hyper-parameter "
                             "tensors themselves (the same objects as in hparams)")
        declared.add(position[id(t)])
    return tuple(i in declared for i in range(len(hparams)))


def check_reaches_training_loss(grads: Sequence[Optional[Tensor]], names: Sequence[str], *,
                                val_only: Optional[Sequence[bool]] = None) -> None:
    """Raise ValueError for a weight (``val_only`` None) or an undeclared hyper-parameter whose gradient of the
    training loss is structurally absent (None from ``torch.autograd.grad(..., allow_unused=True)``)."""
    for i, (g, name) in enumerate(zip(grads, names)):
        if g is not None:
            continue
        if val_only is None:
            raise ValueError(f"{name} has no path to the training loss, so it has no training gradient (was its "
                             "module merged, bypassed or detached?); give the inner optimizer only weights the "
                             "training loss uses")
        if not val_only[i]:
            raise ValueError(f"{name} has no path to the training loss, so it cannot move the inner step and its "
                             "hypergradient would lack the mixed term (were the adapters merged?); if it "
                             "legitimately enters only the validation loss, declare it in val_only_hparams")


def check_has_graph(name: str, grads: Sequence[Tensor]) -> None:
    """Raise ValueError if no tensor of ``grads`` carries an autograd graph: their second-order products would be
    silently zero."""
    if not any(g.requires_grad for g in grads):
        raise ValueError(f"{name} carry no autograd graph, so their second derivatives would silently be zero; "
                         "compute them with torch.autograd.grad(loss, params, create_graph=True)")


def check_matching(name: str, tensors: Sequence[Tensor], like_name: str, like: Sequence[Tensor]) -> None:
    """Check that two tensor sequences have the same length and pairwise the same shapes."""
    if len(tensors) != len(like):
        raise ValueError(f"{name} has {len(tensors)} tensors but {like_name} has {len(like)}; they must match")
    for i, (t, ref) in enumerate(zip(tensors, like)):
        if t.shape != ref.shape:
            raise ValueError(f"{name}[{i}] has shape {tuple(t.shape)} but {like_name}[{i}] has {tuple(ref.shape)}")


def check_scalar_loss(name: str, loss: object) -> Tensor:
    """Check that a loss callable returned a 0-dim floating-point tensor."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(loss).__name__}")
    if loss.ndim != 0:
        raise ValueError(f"{name} must return a scalar (0-dim) tensor, got shape {tuple(loss.shape)}; "
                         "reduce it with .mean() or .sum()")
    if not loss.is_floating_point():
        raise TypeError(f"{name} must return a floating-point tensor, got dtype {loss.dtype}")
    return loss


def check_finite(name: str, tensors: Sequence[Tensor]) -> None:
    """Raise :class:`NonFiniteHypergradError` if any tensor holds NaN or Inf."""
    for i, t in enumerate(tensors):
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteHypergradError(f"{name}[{i}] contains NaN or Inf; lower the step size, check the losses "
                                          "for overflow, or use float64")


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def check_real(name: str, value: object, *, positive: bool) -> float:
    """Check that ``value`` is a finite real number, > 0 if ``positive`` else >= 0."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def check_count(name: str, value: object) -> int:
    """Check that ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value
