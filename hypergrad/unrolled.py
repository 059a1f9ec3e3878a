"""Hypergradients through unrolled steps on the inner (training) loss.

One step (AutoLoRA, Zhang et al. 2024, Eq. 4-5; DARTS, Liu et al. 2019, section 2.3), with g = grad_W Ltr(W, A) and
a differentiable model W' = U(W, g) of the inner optimiser's step (:mod:`hypergrad.inner_updates`):

    h = grad_A Lval(W', A) + [d^2 Ltr / dA dW](W, A) . u,      u = (dW'/dg)^T v,   v = grad_W Lval(W', A)

For SGD, W' = W - eta * g and u = -eta * v (the paper's form h = grad_A Lval(W', A) - eta [d^2 Ltr/dA dW] . v);
for AdamW, W' = W (1 - eta wd) - eta P(g) and u = -eta J_P^T v. method "exact" forms the mixed term by double
backward, "finite_difference" by the central difference of :func:`~hypergrad.products.mixed_vp_fd` along u, and
"first_order" drops it (h = grad_A Lval(W', A), W' held constant). :func:`one_step_hypergrad` is shared by
:func:`unrolled_hypergrad` and :class:`~hypergrad.BilevelOptimizer`; only the update differs between SGD and Adam.
"""
from typing import Callable, NamedTuple, Optional, Sequence

from torch import Tensor

from ._validation import (as_tensor_tuple, check_choice, check_count, check_finite, check_has_graph, check_real,
                          check_scalar_loss)
from .inner_updates import InnerUpdate, SGDUpdate
from .products import grad_or_zeros, mixed_vp, mixed_vp_fd, training_gradients
from .rng import RngState, capture_rng_state
from .tensor_tuples import Tensors, detached, zeros_like

LossFn = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]
UNROLLED_METHODS = ("exact", "finite_difference", "first_order")


class OneStepHypergrad(NamedTuple):
    """What :func:`one_step_hypergrad` returns: h = direct + mixed, Lval(W', A), the direct term grad_A Lval(W', A)
    and the mixed (second-order) term [d^2 Ltr/dA dW] . u (zeros for method "first_order")."""
    hypergrad: Tensors
    val_loss: Tensor
    direct: Tensors
    mixed: Tensors


def resolve_inner_update(lr: Optional[float], inner_update: Optional[InnerUpdate]) -> InnerUpdate:
    """``inner_update``, or the SGD update of step size ``lr``; exactly one of the two must be given."""
    if inner_update is None:
        if lr is None:
            raise ValueError("pass lr (the step size of the SGD lookahead W' = W - lr g) or an inner_update")
        return SGDUpdate(lr)
    if lr is not None:
        raise ValueError("pass lr or inner_update, not both: lr is the step size of the SGD lookahead, an "
                         "inner_update carries its own")
    if not isinstance(inner_update, InnerUpdate):
        raise TypeError(f"inner_update must be a hypergrad.InnerUpdate (SGDUpdate, AdamWUpdate), got "
                        f"{type(inner_update).__name__}")
    return inner_update


def one_step_hypergrad(train_loss: LossFn, val_loss: LossFn, params: Tensors, hparams: Tensors,
                       train_grads: Tensors, *, lr: Optional[float] = None, method: str, fd_radius: float = 0.01,
                       rng_state: Optional[RngState] = None, val_only_hparams: Sequence[Tensor] = (),
                       inner_update: Optional[InnerUpdate] = None) -> OneStepHypergrad:
    """Return (h, Lval(W', A), direct term, mixed term) for one inner step W' = U(W, train_grads): the SGD step
    W - lr * train_grads, or ``inner_update`` (e.g. :class:`~hypergrad.AdamWUpdate`);
    h = grad_A Lval(W', A) + [d^2 Ltr/dA dW] . u with u = (dW'/dg)^T grad_W Lval(W', A) (see the module docstring).

    ``train_grads`` is grad_W Ltr(W, A), computed by the caller from ``rng_state`` (with ``create_graph=True`` for
    method "exact", whose mixed term differentiates it: ValueError if none of them carries a graph), preferably by
    :func:`~hypergrad.training_gradients`, which checks that every weight and hyper-parameter reaches Ltr. The
    finite-difference passes perturb W along u, replay ``rng_state`` and raise ValueError for a hyper-parameter
    with no path to Ltr unless it is in ``val_only_hparams``. Raises NonFiniteHypergradError rather than returning
    NaN/Inf."""
    method = check_choice("method", method, UNROLLED_METHODS)
    update = resolve_inner_update(lr, inner_update)
    if method == "exact":
        check_has_graph("train_grads", train_grads)
    lookahead = tuple(w.requires_grad_(method != "first_order") for w in update.lookahead(params, train_grads))
    val = check_scalar_loss("val_loss", val_loss(lookahead, hparams))
    if method == "first_order":
        direct = grad_or_zeros(val, hparams)
        mixed = zeros_like(direct)
    else:
        grads = grad_or_zeros(val, lookahead + hparams)
        v, direct = grads[:len(params)], grads[len(params):]
        u = update.vjp(params, train_grads, v)
        if method == "exact":
            mixed = mixed_vp(train_grads, hparams, u)
        else:
            mixed = mixed_vp_fd(train_loss, params, hparams, u, radius=fd_radius, rng_state=rng_state,
                                val_only_hparams=val_only_hparams)
    h = tuple(d + m for d, m in zip(direct, mixed))
    check_finite("hypergradient", h)
    return OneStepHypergrad(detached(h), val.detach(), detached(direct), detached(mixed))


def sgd_steps(train_loss: LossFn, params: Tensors, hparams: Tensors, *, lr: float, steps: int,
              differentiable: bool, val_only_hparams: Sequence[Tensor] = ()) -> Tensors:
    """W_{k+1} = W_k - lr * grad_W Ltr(W_k, A) for ``steps`` steps from W_0 = params.

    With ``differentiable`` the steps stay in the autograd graph (memory grows linearly with ``steps``: every
    step keeps its forward activations and its gradient graph); otherwise each step starts from detached weights.
    Each step checks reachability as :func:`~hypergrad.training_gradients` does."""
    weights = params
    for _ in range(steps):
        if not differentiable:
            weights = tuple(w.detach().requires_grad_() for w in weights)
        loss = check_scalar_loss("train_loss", train_loss(weights, hparams))
        grads = training_gradients(loss, weights, hparams, create_graph=differentiable,
                                   val_only_hparams=val_only_hparams)
        stepped = tuple(w - lr * g for w, g in zip(weights, grads))
        weights = stepped if differentiable else detached(stepped)
    return weights


def unrolled_hypergrad(train_loss: LossFn, val_loss: LossFn, params: Sequence[Tensor], hparams: Sequence[Tensor],
                       *, lr: Optional[float] = None, method: str = "exact", steps: int = 1, fd_radius: float = 0.01,
                       val_only_hparams: Sequence[Tensor] = (), inner_update: Optional[InnerUpdate] = None) -> Tensors:
    """d Lval(W_K, A) / dA with W_K from ``steps`` = K inner steps on Ltr from W_0 = params: plain SGD steps of size
    ``lr``, or (K = 1 only) the step modelled by ``inner_update`` (e.g. :class:`~hypergrad.AdamWUpdate`).

    ``train_loss(params, hparams)`` and ``val_loss(params, hparams)`` take sequences of tensors and return scalars.
    Methods:

    * "exact": reverse mode through the K steps (K = 1: direct term plus the double-backward mixed term). Equals
      autograd through the explicit update; memory grows linearly with K.
    * "finite_difference": K = 1 only; mixed term by central difference with radius ``fd_radius`` (DARTS).
    * "first_order": the direct term only, h = grad_A Lval(W_K, A) with W_K held constant.

    Every weight and every hyper-parameter must reach ``train_loss`` (ValueError otherwise), except the
    hyper-parameters listed in ``val_only_hparams``: those that legitimately enter only the validation loss (their
    mixed term is zero, h = grad_A Lval(W_K, A); zeros if they enter neither loss).

    Returns one tensor per hyper-parameter. The inputs are neither modified nor given a ``.grad``. Raises
    NonFiniteHypergradError instead of returning NaN/Inf.
    """
    params = as_tensor_tuple("params", params)
    hparams = as_tensor_tuple("hparams", hparams)
    method = check_choice("method", method, UNROLLED_METHODS)
    steps = check_count("steps", steps)
    update = resolve_inner_update(lr, inner_update)
    fd_radius = check_real("fd_radius", fd_radius, positive=True)
    if method == "finite_difference" and steps != 1:
        raise ValueError("method='finite_difference' supports steps=1 only; use method='exact' for steps > 1")
    if steps > 1 and not isinstance(update, SGDUpdate):
        raise ValueError("an inner_update supports steps=1 only; steps > 1 unrolls plain SGD steps of size lr")
    if method == "exact" and steps > 1:
        final = sgd_steps(train_loss, params, hparams, lr=update.lr, steps=steps, differentiable=True,
                          val_only_hparams=val_only_hparams)
        h = grad_or_zeros(check_scalar_loss("val_loss", val_loss(final, hparams)), hparams)
        check_finite("hypergradient", h)
        return detached(h)
    start = params if steps == 1 else tuple(
        w.requires_grad_() for w in sgd_steps(train_loss, params, hparams, lr=update.lr, steps=steps - 1,
                                               differentiable=False, val_only_hparams=val_only_hparams))
    rng_state = capture_rng_state(t.device for t in start + hparams) if method == "finite_difference" else None
    loss = check_scalar_loss("train_loss", train_loss(start, hparams))
    train_grads = training_gradients(loss, start, hparams, create_graph=method == "exact",
                                     val_only_hparams=val_only_hparams)
    return one_step_hypergrad(train_loss, val_loss, start, hparams, train_grads, method=method, fd_radius=fd_radius,
                              rng_state=rng_state, val_only_hparams=val_only_hparams, inner_update=update).hypergrad
