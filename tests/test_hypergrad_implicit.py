"""implicit_hypergrad (IFT) against the closed-form ridge-regression hypergradient."""
import pytest
import torch

import hypergrad

f64 = dict(dtype=torch.float64)


def _ridge(seed=0, n=20, d=5, n_val=15):
    """Ltr = ||X w - y||^2 / (2n) + lam ||w||^2 / 2,  w*(lam) = (X^T X + n lam I)^{-1} X^T y,
    dw*/dlam = -n (X^T X + n lam I)^{-1} w*,  Lval = ||X_v w - y_v||^2 / (2 n_v)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g, **f64), torch.randn(n, generator=g, **f64)
    x_val, y_val = torch.randn(n_val, d, generator=g, **f64), torch.randn(n_val, generator=g, **f64)
    lam = torch.tensor(0.2, **f64, requires_grad=True)
    system = x.T @ x + n * lam.detach() * torch.eye(d, **f64)
    w_star = torch.linalg.solve(system, x.T @ y)
    dw_dlam = -n * torch.linalg.solve(system, w_star)
    expected = dw_dlam @ (x_val.T @ (x_val @ w_star - y_val)) / n_val
    train = lambda p, a: (x @ p[0] - y).pow(2).sum() / (2 * n) + a[0] * p[0].pow(2).sum() / 2
    val = lambda p, a: (x_val @ p[0] - y_val).pow(2).sum() / (2 * n_val)
    hessian = x.T @ x / n + lam.detach() * torch.eye(d, **f64)
    return train, val, w_star.requires_grad_(), lam, expected, hessian


def test_ridge_closed_form_with_conjugate_gradient():
    train, val, w_star, lam, expected, _ = _ridge()
    (h,) = hypergrad.implicit_hypergrad(train, val, [w_star], [lam], method="cg", iterations=5, tol=0.0)
    torch.testing.assert_close(h, expected, rtol=1e-10, atol=1e-12)
    assert w_star.grad is None and lam.grad is None


def test_ridge_closed_form_with_neumann_series():
    train, val, w_star, lam, expected, hessian = _ridge(seed=1)
    alpha = 1.0 / torch.linalg.eigvalsh(hessian).max().item()
    (h,) = hypergrad.implicit_hypergrad(train, val, [w_star], [lam], method="neumann", iterations=600, alpha=alpha)
    torch.testing.assert_close(h, expected, rtol=1e-8, atol=1e-10)


def test_truncated_neumann_is_a_biased_approximation():
    train, val, w_star, lam, expected, hessian = _ridge(seed=1)
    alpha = 1.0 / torch.linalg.eigvalsh(hessian).max().item()
    (h,) = hypergrad.implicit_hypergrad(train, val, [w_star], [lam], method="neumann", iterations=2, alpha=alpha)
    assert abs(h - expected) > 1e-3 * abs(expected)


def test_cg_stops_early_at_the_tolerance():
    train, val, w_star, lam, expected, _ = _ridge(seed=2)
    calls = []
    (h,) = hypergrad.implicit_hypergrad(lambda p, a: (calls.append(1), train(p, a))[1], val, [w_star], [lam],
                                        iterations=50, tol=1e-12)
    torch.testing.assert_close(h, expected, rtol=1e-9, atol=1e-12)
    assert len(calls) == 1  # the Hessian products reuse one training forward pass


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_unused_hyperparameter_raises_unless_declared_and_then_gets_zeros(method):
    train, val, w_star, lam, expected, _ = _ridge()
    unused = torch.ones(2, **f64, requires_grad=True)
    with pytest.raises(ValueError, match=r"hparams\[1\] has no path to the training loss"):
        hypergrad.implicit_hypergrad(train, val, [w_star], [lam, unused], method=method, alpha=0.1)
    h = hypergrad.implicit_hypergrad(train, val, [w_star], [lam, unused], method=method, alpha=0.1,
                                     val_only_hparams=[unused])
    assert torch.equal(h[1], torch.zeros(2, **f64))
