"""Building blocks against explicit matrices: Hessian / mixed products, finite differences, linear solvers."""
import pytest
import torch
from torch.autograd.functional import hessian

import hypergrad
from hypergrad.products import grad_or_zeros


def _loss(w, a):
    """A non-quadratic scalar L(w, a) with a genuine w-a coupling."""
    return (torch.sin(w) * a[:3]).sum() + (w.pow(4)).sum() / 4 + (w @ a[1:]) ** 2 + torch.exp(a).sum()


@pytest.fixture
def point():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, generator=g, dtype=torch.float64)
    return w, a, v


def _blocks(w, a):
    """The explicit Hessian of L over the stacked vector (w, a), split into H_ww and H_aw."""
    full = hessian(lambda z: _loss(z[:3], z[3:]), torch.cat([w, a]).detach())
    return full[:3, :3], full[3:, :3]


def test_hvp_and_mixed_vp_match_explicit_hessian_blocks(point):
    w, a, v = point
    h_ww, h_aw = _blocks(w, a)
    grads = torch.autograd.grad(_loss(w, a), [w], create_graph=True)
    torch.testing.assert_close(hypergrad.hvp(grads, [w], [v])[0], h_ww @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hypergrad.mixed_vp(grads, [a], [v])[0], h_aw @ v, rtol=1e-12, atol=1e-12)
    assert w.grad is None and a.grad is None


def test_hvp_is_reusable_for_many_vectors(point):
    w, a, _ = point
    h_ww, _ = _blocks(w, a)
    grads = torch.autograd.grad(_loss(w, a), [w], create_graph=True)
    for basis in torch.eye(3, dtype=torch.float64):
        torch.testing.assert_close(hypergrad.hvp(grads, [w], [basis])[0], h_ww @ basis, rtol=1e-12, atol=1e-12)


def test_mixed_vp_fd_error_is_second_order_in_radius(point):
    w, a, v = point
    _, h_aw = _blocks(w, a)
    errors = [torch.linalg.norm(hypergrad.mixed_vp_fd(lambda p, h: _loss(p[0], h[0]), [w], [a], [v],
                                                      radius=r)[0] - h_aw @ v).item() for r in (1e-1, 1e-2, 1e-3)]
    assert errors[0] > 1e-6
    for coarse, fine in zip(errors, errors[1:]):
        assert 60 < coarse / fine < 160  # O(r^2): a factor 100 per decade of r


def test_mixed_vp_fd_of_zero_vector_is_zero(point):
    w, a, _ = point
    out = hypergrad.mixed_vp_fd(lambda p, h: _loss(p[0], h[0]), [w], [a], [torch.zeros(3, dtype=torch.float64)])
    assert torch.equal(out[0], torch.zeros(4, dtype=torch.float64))


def test_mixed_vp_fd_leaves_inputs_and_global_rng_untouched(point):
    w, a, v = point
    w_before = w.detach().clone()

    def noisy_loss(p, h):
        return _loss(p[0], h[0]) * (1 + 0.1 * torch.rand(()))

    state = torch.get_rng_state()
    hypergrad.mixed_vp_fd(noisy_loss, [w], [a], [v])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(w.detach(), w_before) and w.grad is None and a.grad is None


def test_mixed_vp_fd_runs_outside_autocast(point):
    w, a, v = point
    seen = []

    def loss(p, h):
        seen.append(torch.is_autocast_enabled("cpu"))
        return _loss(p[0], h[0])

    with torch.autocast("cpu", dtype=torch.bfloat16):
        hypergrad.mixed_vp_fd(loss, [w], [a], [v])
    assert seen == [False, False]


def test_grad_or_zeros_fills_unused_inputs_with_zeros(point):
    w, a, _ = point
    unused = torch.ones(2, dtype=torch.float64, requires_grad=True)
    grads = grad_or_zeros(_loss(w, a), [w, unused])
    assert torch.equal(grads[1], torch.zeros(2, dtype=torch.float64))


def _spd(n, seed, condition=10.0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = torch.linspace(1.0, condition, n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return q @ torch.diag(eigenvalues) @ q.T, b


def test_conjugate_gradient_solves_spd_system_in_n_steps():
    h, b = _spd(6, seed=2)
    x = hypergrad.conjugate_gradient(lambda v: (h @ v[0],), [b], iterations=6, tol=0.0)[0]
    torch.testing.assert_close(x, torch.linalg.solve(h, b), rtol=1e-10, atol=1e-12)


def test_conjugate_gradient_on_tensor_tuples_matches_block_solve():
    h, b = _spd(5, seed=3)
    x = hypergrad.conjugate_gradient(lambda v: tuple(torch.split(h @ torch.cat(v), [2, 3])),
                                     list(torch.split(b, [2, 3])), iterations=5, tol=0.0)
    torch.testing.assert_close(torch.cat(x), torch.linalg.solve(h, b), rtol=1e-10, atol=1e-12)


def test_conjugate_gradient_rejects_indefinite_operator():
    h = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="not positive definite"):
        hypergrad.conjugate_gradient(lambda v: (h @ v[0],), [torch.tensor([1.0, 1.0], dtype=torch.float64)])


def test_neumann_series_equals_truncated_sum_and_converges_to_inverse():
    h, b = _spd(4, seed=4, condition=4.0)
    alpha, terms = 0.2, 7
    truncated = hypergrad.neumann_series(lambda v: (h @ v[0],), [b], iterations=terms, alpha=alpha)[0]
    step = torch.eye(4, dtype=torch.float64) - alpha * h
    expected = alpha * sum(torch.linalg.matrix_power(step, j) @ b for j in range(terms + 1))
    torch.testing.assert_close(truncated, expected, rtol=1e-12, atol=1e-12)
    converged = hypergrad.neumann_series(lambda v: (h @ v[0],), [b], iterations=400, alpha=alpha)[0]
    torch.testing.assert_close(converged, torch.linalg.solve(h, b), rtol=1e-10, atol=1e-12)
