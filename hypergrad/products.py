"""Second-order products of a scalar loss L(W, A) with a vector v, without forming any matrix.

* :func:`hvp`         H v            with H = d^2 L / dW^2                (double backward)
* :func:`mixed_vp`    [d^2 L/dA dW] v = d/dA <grad_W L(W, A), v>            (double backward)
* :func:`mixed_vp_fd` the same mixed product by a central finite difference of grad_A L along v (DARTS)

The double-backward products take ``grads = torch.autograd.grad(L, W, create_graph=True)`` so that one forward
pass serves any number of products (conjugate gradient calls :func:`hvp` once per iteration); gradients without
that graph are refused (their products would silently be zero). :func:`training_gradients` computes g = grad_W Ltr
and checks that every weight and hyper-parameter reaches Ltr.
"""
from contextlib import ExitStack, contextmanager
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ._validation import (as_tensor_tuple, check_has_graph, check_matching, check_reaches_training_loss,
                          check_real, check_scalar_loss, val_only_mask)
from .rng import RngState, capture_rng_state, replay_rng_state
from .tensor_tuples import Tensors, global_norm, zeros_like

LossFn = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]


def grad_or_zeros(output: Tensor, inputs: Sequence[Tensor], *, grad_outputs: Optional[Sequence[Tensor]] = None,
                  create_graph: bool = False, retain_graph: Optional[bool] = None) -> Tensors:
    """d output / d inputs (a vector-Jacobian product when ``grad_outputs`` is given), with zeros -- never None --
    for inputs the output does not depend on. Writes no ``.grad`` anywhere."""
    outputs = tuple(output) if isinstance(output, (tuple, list)) else (output,)
    live = [i for i, o in enumerate(outputs) if o.requires_grad]
    if not live:
        return zeros_like(inputs)
    vectors = None if grad_outputs is None else [grad_outputs[i] for i in live]
    grads = torch.autograd.grad([outputs[i] for i in live], tuple(inputs), grad_outputs=vectors,
                                create_graph=create_graph, retain_graph=retain_graph, allow_unused=True,
                                materialize_grads=True)
    return tuple(grads)


def _grads_allowing_unused(loss: Tensor, inputs: Sequence[Tensor], *, create_graph: bool = False) -> list:
    """d loss / d inputs, None for an input with no path to ``loss``."""
    if not loss.requires_grad:
        return [None] * len(inputs)
    return list(torch.autograd.grad(loss, tuple(inputs), create_graph=create_graph, allow_unused=True))


def _zeros_where_none(grads: Sequence[Optional[Tensor]], like: Sequence[Tensor]) -> Tensors:
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, like))


def _names(prefix: str, count: int, names: Optional[Sequence[str]]) -> Sequence[str]:
    return [f"{prefix}[{i}]" for i in range(count)] if names is None else names


def training_gradients(loss: Tensor, params: Sequence[Tensor], hparams: Sequence[Tensor], *,
                       create_graph: bool = False, val_only_hparams: Sequence[Tensor] = (),
                       param_names: Optional[Sequence[str]] = None,
                       hparam_names: Optional[Sequence[str]] = None) -> Tensors:
    """g = grad_W Ltr(W, A) for W = ``params``, with Ltr = ``loss``; ``create_graph`` keeps the graph of g for the
    exact mixed term.

    Raises ValueError if a weight has no path to Ltr (it would get g = 0), or a hyper-parameter has no path to Ltr
    and is not listed in ``val_only_hparams`` (its mixed term would be zero: a merged adapter gives a hypergradient
    of exactly 0). A hyper-parameter that legitimately enters only the validation loss has d W'/dA = 0, so its
    hypergradient is its direct term grad_A Lval(W', A); list it in ``val_only_hparams``. ``param_names`` /
    ``hparam_names`` name the tensors in the messages (default ``params[i]`` / ``hparams[i]``)."""
    val_only = val_only_mask(hparams, val_only_hparams)
    grads = _grads_allowing_unused(loss, tuple(params) + tuple(hparams), create_graph=create_graph)
    check_reaches_training_loss(grads[:len(params)], _names("params", len(params), param_names))
    check_reaches_training_loss(grads[len(params):], _names("hparams", len(hparams), hparam_names),
                                val_only=val_only)
    return tuple(grads[:len(params)])


def _grad_of_inner_product(grads: Sequence[Tensor], wrt: Sequence[Tensor], vector: Sequence[Tensor]) -> Tensors:
    """d/d(wrt) <grads, v>, keeping the graph of ``grads`` for further products."""
    check_has_graph("grads", grads)
    vector = tuple(v.detach() for v in vector)
    check_matching("vector", vector, "grads", tuple(grads))
    return tuple(g.detach() for g in grad_or_zeros(tuple(grads), wrt, grad_outputs=vector, retain_graph=True))


def hvp(grads: Sequence[Tensor], params: Sequence[Tensor], vector: Sequence[Tensor]) -> Tensors:
    """Hessian-vector product  H v = d/dW <grad_W L, v>,  H = d^2 L / dW^2.

    ``grads`` must be ``torch.autograd.grad(L, params, create_graph=True)`` (ValueError if none of them carries a
    graph); its graph is kept, so the function can be called repeatedly. ``vector`` is shaped like ``params``."""
    params = as_tensor_tuple("params", params)
    check_matching("grads", tuple(grads), "params", params)
    return _grad_of_inner_product(grads, params, vector)


def mixed_vp(grads: Sequence[Tensor], hparams: Sequence[Tensor], vector: Sequence[Tensor]) -> Tensors:
    """Mixed second-derivative product  [d^2 L / dA dW] v = d/dA <grad_W L(W, A), v>  (exact, double backward).

    ``grads`` must be ``torch.autograd.grad(L, W, create_graph=True)`` (ValueError if none of them carries a
    graph); ``vector`` is shaped like ``grads``; the result is shaped like ``hparams`` (zeros for a hyper-parameter
    that grad_W L does not depend on: its mixed block is zero)."""
    hparams = as_tensor_tuple("hparams", hparams)
    return _grad_of_inner_product(grads, hparams, vector)


@contextmanager
def full_precision():
    """Disable autocast on CPU and CUDA for the block, so its passes run in the tensors' own dtype."""
    with ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


def mixed_vp_fd(train_loss: LossFn, params: Sequence[Tensor], hparams: Sequence[Tensor], vector: Sequence[Tensor],
                *, radius: float = 0.01, rng_state: Optional[RngState] = None,
                val_only_hparams: Sequence[Tensor] = ()) -> Tensors:
    """Mixed product by central finite difference (DARTS, Liu et al. 2019):

        [d^2 L/dA dW] v  ~  [grad_A L(W + e v, A) - grad_A L(W - e v, A)] / (2 e),   e = radius / ||v||,

    with ||v|| the global 2-norm over all tensors. Error O(radius^2) for smooth L. Both passes evaluate ``train_loss``
    at perturbed copies of ``params`` (which are never modified), from the same random state ``rng_state`` (default:
    the current one of the CPU and of the tensors' device types; the global random state is left untouched) and
    with autocast disabled. Returns zeros if v = 0.
    A hyper-parameter with no path to L raises ValueError unless listed in ``val_only_hparams`` (it gets zeros).
    """
    params = as_tensor_tuple("params", params, require_grad=False)
    hparams = as_tensor_tuple("hparams", hparams)
    val_only = val_only_mask(hparams, val_only_hparams)
    vector = tuple(vector)
    check_matching("vector", vector, "params", params)
    radius = check_real("fd_radius", radius, positive=True)
    state = capture_rng_state(t.device for t in params + hparams) if rng_state is None else rng_state
    norm = global_norm(vector)
    if norm == 0:
        return zeros_like(hparams)
    eps = radius / norm

    def grad_hparams_at(sign: float) -> Tensors:
        shifted = tuple(p.detach() + (sign * eps) * v.detach() for p, v in zip(params, vector))
        with replay_rng_state(state), full_precision():
            loss = check_scalar_loss("train_loss", train_loss(shifted, hparams))
            grads = _grads_allowing_unused(loss, hparams)
        check_reaches_training_loss(grads, _names("hparams", len(hparams), None), val_only=val_only)
        return _zeros_where_none(grads, hparams)

    plus, minus = grad_hparams_at(1.0), grad_hparams_at(-1.0)
    return tuple((p - m) / (2 * eps) for p, m in zip(plus, minus))
