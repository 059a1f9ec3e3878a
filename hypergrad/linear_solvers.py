"""Approximate solutions of H x = b for a symmetric positive-definite linear operator given only as a
matrix-vector product ``matvec`` on tuples of tensors (for hypergradients: x = H^{-1} b with H the inner Hessian)."""
from typing import Callable, Sequence

from torch import Tensor

from ._validation import as_tensor_tuple, check_count, check_real
from .tensor_tuples import Tensors, add_scaled, dot, zeros_like

MatVec = Callable[[Tensors], Sequence[Tensor]]


def conjugate_gradient(matvec: MatVec, b: Sequence[Tensor], *, iterations: int = 20, tol: float = 1e-10) -> Tensors:
    """Conjugate gradient for H x = b, H symmetric positive definite, started at x = 0.

    Stops after ``iterations`` products or once ||b - H x|| <= tol * ||b||. Exact after n iterations in exact
    arithmetic for an n-dimensional problem. Raises ValueError if a search direction p has p^T H p <= 0 (H is not
    positive definite there: add damping to the inner loss or use the Neumann series)."""
    b = as_tensor_tuple("b", b, require_grad=False)
    iterations = check_count("iterations", iterations)
    tol = check_real("tol", tol, positive=False)
    x, r, p = zeros_like(b), b, b
    rs = dot(r, r)
    stop = tol * tol * rs
    for _ in range(iterations):
        if rs <= stop or rs == 0:
            break
        hp = tuple(matvec(p))
        curvature = dot(p, hp)
        if curvature <= 0:
            raise ValueError(f"conjugate_gradient: p^T H p = {float(curvature):.3e} <= 0, the operator is not "
                             "positive definite; add damping or use method='neumann'")
        step = rs / curvature
        x, r = add_scaled(x, step, p), add_scaled(r, -step, hp)
        rs_next = dot(r, r)
        p = add_scaled(r, rs_next / rs, p)
        rs = rs_next
    return x


def neumann_series(matvec: MatVec, b: Sequence[Tensor], *, iterations: int = 20, alpha: float = 1.0) -> Tensors:
    """Truncated Neumann series  H^{-1} b ~ alpha * sum_{j=0}^{J} (I - alpha H)^j b,  J = ``iterations``.

    Uses J products with H. Converges as J grows iff the spectral radius of I - alpha H is < 1, i.e. for
    0 < alpha < 2 / lambda_max(H) when H is positive definite; the error decays like (1 - alpha lambda_min)^(J+1).
    ``alpha`` plays the role of an inner learning rate (the series is J steps of gradient descent on
    0.5 x^T H x - b^T x from x = 0)."""
    b = as_tensor_tuple("b", b, require_grad=False)
    iterations = check_count("iterations", iterations)
    alpha = check_real("alpha", alpha, positive=True)
    term, total = b, b
    for _ in range(iterations):
        term = add_scaled(term, -alpha, tuple(matvec(term)))
        total = add_scaled(total, 1.0, term)
    return tuple(alpha * t for t in total)
