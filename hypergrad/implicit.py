"""Implicit-function-theorem hypergradient at an (approximate) inner optimum W*(A), grad_W Ltr(W*, A) = 0:

    h = grad_A Lval(W, A) - [d^2 Ltr / dA dW](W, A) . H^{-1} grad_W Lval(W, A),    H = d^2 Ltr / dW^2 (W, A)

with H^{-1} v approximated by conjugate gradient or a truncated Neumann series (Lorraine et al. 2020)."""
from typing import Callable, Sequence

from torch import Tensor

from ._validation import as_tensor_tuple, check_choice, check_finite, check_scalar_loss
from .linear_solvers import conjugate_gradient, neumann_series
from .products import grad_or_zeros, hvp, mixed_vp, training_gradients
from .tensor_tuples import Tensors, detached

LossFn = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]
IMPLICIT_METHODS = ("cg", "neumann")


def implicit_hypergrad(train_loss: LossFn, val_loss: LossFn, params: Sequence[Tensor], hparams: Sequence[Tensor],
                       *, method: str = "cg", iterations: int = 20, alpha: float = 1.0,
                       tol: float = 1e-10, val_only_hparams: Sequence[Tensor] = ()) -> Tensors:
    """IFT hypergradient dLval(W*(A), A)/dA evaluated at ``params`` (taken as the inner optimum W*).

    method "cg": :func:`~hypergrad.conjugate_gradient` with at most ``iterations`` Hessian products and relative
    residual ``tol`` (H must be positive definite). method "neumann": :func:`~hypergrad.neumann_series` with
    J = ``iterations`` products and step ``alpha`` (converges for 0 < alpha < 2 / lambda_max(H)).
    Every weight and every hyper-parameter not in ``val_only_hparams`` must reach ``train_loss`` (ValueError
    otherwise; see :func:`~hypergrad.training_gradients`). Returns one tensor per hyper-parameter; inputs are not
    modified and get no ``.grad``."""
    params = as_tensor_tuple("params", params)
    hparams = as_tensor_tuple("hparams", hparams)
    method = check_choice("method", method, IMPLICIT_METHODS)
    val = check_scalar_loss("val_loss", val_loss(params, hparams))
    grads = grad_or_zeros(val, params + hparams)
    v, direct = detached(grads[:len(params)]), grads[len(params):]
    train = check_scalar_loss("train_loss", train_loss(params, hparams))
    train_grads = training_gradients(train, params, hparams, create_graph=True, val_only_hparams=val_only_hparams)

    def hessian_times(x: Tensors) -> Tensors:
        return hvp(train_grads, params, x)

    if method == "cg":
        inverse_hvp = conjugate_gradient(hessian_times, v, iterations=iterations, tol=tol)
    else:
        inverse_hvp = neumann_series(hessian_times, v, iterations=iterations, alpha=alpha)
    mixed = mixed_vp(train_grads, hparams, inverse_hvp)
    h = tuple(d - m for d, m in zip(direct, mixed))
    check_finite("hypergradient", h)
    return detached(h)
