"""unrolled_hypergrad against closed forms, autograd through the explicit update, and central finite differences
of the composite objective F(A) = Lval(W_K(A), A)."""
import pytest
import torch

import hypergrad

f64 = dict(dtype=torch.float64)


def _explicit_sgd(problem, hparams, lr, steps):
    """W_K by K SGD steps, differentiable in the hyper-parameters (an oracle written without hypergrad)."""
    weights = list(problem.params)
    for _ in range(steps):
        grads = torch.autograd.grad(problem.train_loss(weights, hparams), weights, create_graph=True)
        weights = [w - lr * g for w, g in zip(weights, grads)]
    return weights


def _composite(problem, hparams, lr, steps):
    return problem.val_loss(_explicit_sgd(problem, hparams, lr, steps), hparams)


def _central_difference(fn, hparams, step=1e-5):
    """dF/dA entry by entry: [F(A + s e_i) - F(A - s e_i)] / (2 s)."""
    result = []
    for k, a in enumerate(hparams):
        grad = torch.zeros_like(a)
        for i in range(a.numel()):
            shifted = []
            for sign in (1.0, -1.0):
                moved = [h.detach().clone() for h in hparams]
                moved[k].view(-1)[i] += sign * step
                shifted.append(fn(moved).item())
            grad.view(-1)[i] = (shifted[0] - shifted[1]) / (2 * step)
        result.append(grad)
    return result


def _relative_error(got, want):
    got, want = torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])
    return (torch.linalg.norm(got - want) / torch.linalg.norm(want)).item()


def test_one_step_weight_decay_closed_form():
    # Ltr = 0.5||w - c||^2 + 0.5 lam ||w||^2,  w' = w - eta((1 + lam) w - c),  dw'/dlam = -eta w,
    # Lval = 0.5||w' - c_val||^2  =>  dLval/dlam = -eta w^T (w' - c_val).
    g = torch.Generator().manual_seed(0)
    w, c, c_val = (torch.randn(5, generator=g, **f64) for _ in range(3))
    w.requires_grad_()
    lam, eta = torch.tensor(0.3, **f64, requires_grad=True), 0.1
    w_next = w.detach() - eta * ((1 + lam.detach()) * w.detach() - c)
    expected = -eta * w.detach() @ (w_next - c_val)
    for method in ("exact", "finite_difference"):
        (h,) = hypergrad.unrolled_hypergrad(
            lambda p, a: 0.5 * (p[0] - c).pow(2).sum() + 0.5 * a[0] * p[0].pow(2).sum(),
            lambda p, a: 0.5 * (p[0] - c_val).pow(2).sum(), [w], [lam], lr=eta, method=method)
        torch.testing.assert_close(h, expected, rtol=1e-9, atol=0)  # the loss is quadratic: FD is exact too
    (h,) = hypergrad.unrolled_hypergrad(
        lambda p, a: 0.5 * (p[0] - c).pow(2).sum() + 0.5 * a[0] * p[0].pow(2).sum(),
        lambda p, a: 0.5 * (p[0] - c_val).pow(2).sum(), [w], [lam], lr=eta, method="first_order")
    assert h.item() == 0.0  # Lval has no direct dependence on lam


def _linear_coupling(seed=0, n=4, m=3):
    """Ltr = 0.5 w^T H w - w^T B a,  Lval = 0.5||w - t||^2 + 0.5 rho ||a||^2."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, **f64)
    h = q @ q.T / n + 0.5 * torch.eye(n, **f64)
    b, t = torch.randn(n, m, generator=g, **f64), torch.randn(n, generator=g, **f64)
    w0 = torch.randn(n, generator=g, **f64).requires_grad_()
    a = torch.randn(m, generator=g, **f64).requires_grad_()
    rho = 0.3
    train = lambda p, hp: 0.5 * p[0] @ h @ p[0] - p[0] @ (b @ hp[0])
    val = lambda p, hp: 0.5 * (p[0] - t).pow(2).sum() + 0.5 * rho * hp[0].pow(2).sum()
    return h, b, t, w0, a, rho, train, val


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_k_step_linear_coupling_closed_form(steps):
    # w_{k+1} = P w_k + eta B a, P = I - eta H  =>  w_K = P^K w_0 + H^{-1}(I - P^K) B a,
    # dLval/da = [H^{-1}(I - P^K) B]^T (w_K - t) + rho a.
    h, b, t, w0, a, rho, train, val = _linear_coupling()
    eta = 0.2
    p_k = torch.linalg.matrix_power(torch.eye(4, **f64) - eta * h, steps)
    jacobian = torch.linalg.solve(h, (torch.eye(4, **f64) - p_k) @ b)
    w_k = p_k @ w0.detach() + jacobian @ a.detach()
    expected = jacobian.T @ (w_k - t) + rho * a.detach()
    (got,) = hypergrad.unrolled_hypergrad(train, val, [w0], [a], lr=eta, steps=steps)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    if steps == 1:  # quadratic Ltr: the central difference is exact up to rounding
        (fd,) = hypergrad.unrolled_hypergrad(train, val, [w0], [a], lr=eta, method="finite_difference")
        torch.testing.assert_close(fd, expected, rtol=1e-9, atol=1e-12)
    (direct,) = hypergrad.unrolled_hypergrad(train, val, [w0], [a], lr=eta, steps=steps, method="first_order")
    torch.testing.assert_close(direct, rho * a.detach(), rtol=1e-12, atol=1e-12)


def test_many_unrolled_steps_reach_the_implicit_limit():
    h, b, t, w0, a, rho, train, val = _linear_coupling()
    w_star = torch.linalg.solve(h, b @ a.detach())
    ift = torch.linalg.solve(h, b).T @ (w_star - t) + rho * a.detach()
    (unrolled,) = hypergrad.unrolled_hypergrad(train, val, [w0], [a], lr=0.2, steps=300)
    torch.testing.assert_close(unrolled, ift, rtol=1e-8, atol=1e-10)
    (implicit,) = hypergrad.implicit_hypergrad(train, val, [w_star.requires_grad_()], [a], method="cg")
    torch.testing.assert_close(implicit, ift, rtol=1e-10, atol=1e-12)


def test_darts_toy_problem_closed_form():
    # Liu et al. 2019, appendix: Lval(w, a) = a w - 2a + 1, Ltr(w, a) = w^2 - 2 a w + a^2, so w*(a) = a and
    # Lval(w*(a), a) = (a - 1)^2. One step: w' = w - eta (2w - 2a), h = dLval(w', a)/da = w' - 2 + 2 eta a
    # (direct term w' - 2, mixed term d^2Ltr/da dw = -2 times v = dLval/dw' = a). First order: w' - 2.
    train = lambda p, hp: p[0] ** 2 - 2 * hp[0] * p[0] + hp[0] ** 2
    val = lambda p, hp: hp[0] * p[0] - 2 * hp[0] + 1
    w, a, eta = torch.tensor(0.7, **f64, requires_grad=True), torch.tensor(1.6, **f64, requires_grad=True), 0.1
    w_next = 0.7 - eta * (2 * 0.7 - 2 * 1.6)
    for method, expected in (("exact", w_next - 2 + 2 * eta * 1.6), ("finite_difference", w_next - 2 + 2 * eta * 1.6),
                             ("first_order", w_next - 2)):
        (h,) = hypergrad.unrolled_hypergrad(train, val, [w], [a], lr=eta, method=method)
        assert h.item() == pytest.approx(expected, rel=1e-10), method
    # Implicit hypergradient at the inner optimum w = a equals d(a - 1)^2/da = 2(a - 1).
    (h,) = hypergrad.implicit_hypergrad(train, val, [a.detach().clone().requires_grad_()], [a])
    assert h.item() == pytest.approx(2 * (1.6 - 1), rel=1e-12)


def test_linear_inner_loss_variant_closed_form():
    # Ltr = a w - 2a + 1 (linear in w: g = a, no inner minimiser), Lval = a w - 2w + 1. w' = w - eta a and
    # dLval(w', a)/da = w' + (a - 2) dw'/da = w' - eta (a - 2): direct term w', mixed term 1 times v = a - 2.
    train = lambda p, hp: hp[0] * p[0] - 2 * hp[0] + 1
    val = lambda p, hp: hp[0] * p[0] - 2 * p[0] + 1
    w, a, eta = torch.tensor(0.7, **f64, requires_grad=True), torch.tensor(1.6, **f64, requires_grad=True), 0.1
    w_next = 0.7 - eta * 1.6
    for method, expected in (("exact", w_next - eta * (1.6 - 2)), ("finite_difference", w_next - eta * (1.6 - 2)),
                             ("first_order", w_next)):
        (h,) = hypergrad.unrolled_hypergrad(train, val, [w], [a], lr=eta, method=method)
        assert h.item() == pytest.approx(expected, rel=1e-10), method


@pytest.mark.parametrize("steps", [1, 3])
def test_exact_matches_central_difference_of_composite_objective(gated_problem, steps):
    problem = gated_problem()
    lr = 0.3
    got = hypergrad.unrolled_hypergrad(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                       lr=lr, steps=steps)
    fd = _central_difference(lambda a: _composite(problem, a, lr, steps), problem.hparams)
    assert _relative_error(got, fd) <= 1e-6


@pytest.mark.parametrize("steps", [1, 3])
def test_exact_equals_autograd_through_explicit_update(gated_problem, steps):
    problem = gated_problem(seed=1)
    lr = 0.3
    got = hypergrad.unrolled_hypergrad(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                       lr=lr, steps=steps)
    oracle = torch.autograd.grad(_composite(problem, problem.hparams, lr, steps), problem.hparams, allow_unused=True,
                                 materialize_grads=True)
    for g, o in zip(got, oracle):
        torch.testing.assert_close(g, o, rtol=1e-12, atol=1e-14)


def test_finite_difference_error_shrinks_quadratically_with_radius(gated_problem):
    problem = gated_problem(seed=2)
    args = (problem.train_loss, problem.val_loss, problem.params, problem.hparams)
    exact = hypergrad.unrolled_hypergrad(*args, lr=0.3)
    errors = [_relative_error(hypergrad.unrolled_hypergrad(*args, lr=0.3, method="finite_difference",
                                                           fd_radius=r), exact) for r in (1e-1, 1e-2, 1e-3)]
    assert errors[-1] < 1e-6
    for coarse, fine in zip(errors, errors[1:]):
        assert 30 < coarse / fine < 300  # O(r^2)


@pytest.mark.parametrize("steps", [1, 3])
def test_first_order_is_the_direct_term_at_fixed_final_weights(gated_problem, steps):
    problem = gated_problem(seed=3)
    final = [w.detach() for w in _explicit_sgd(problem, problem.hparams, 0.3, steps)]
    direct = torch.autograd.grad(problem.val_loss(final, problem.hparams), problem.hparams, allow_unused=True,
                                 materialize_grads=True)
    got = hypergrad.unrolled_hypergrad(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                       lr=0.3, steps=steps, method="first_order")
    for g, d in zip(got, direct):
        torch.testing.assert_close(g, d, rtol=1e-12, atol=1e-14)
    exact = hypergrad.unrolled_hypergrad(problem.train_loss, problem.val_loss, problem.params, problem.hparams,
                                         lr=0.3, steps=steps)
    assert _relative_error(got, exact) > 1e-3  # the dropped term matters on this problem


@pytest.mark.parametrize("method,steps", [("exact", 1), ("exact", 3), ("finite_difference", 1),
                                          ("first_order", 1), ("first_order", 3)])
def test_inputs_are_not_modified_and_get_no_grad(gated_problem, method, steps):
    problem = gated_problem()
    before = [t.detach().clone() for t in problem.params + problem.hparams]
    hypergrad.unrolled_hypergrad(problem.train_loss, problem.val_loss, problem.params, problem.hparams, lr=0.3,
                                 method=method, steps=steps)
    for t, b in zip(problem.params + problem.hparams, before):
        assert torch.equal(t.detach(), b) and t.grad is None


def test_finite_difference_passes_share_the_training_dropout_masks(gated_problem):
    problem = gated_problem(seed=4, dropout=0.5)
    first, second = (problem.train_loss(problem.params, problem.hparams).item() for _ in range(2))
    assert first != second  # dropout is active, so only replayed randomness can make FD match exact
    results = {}
    for method in ("exact", "finite_difference"):
        torch.manual_seed(123)
        results[method] = hypergrad.unrolled_hypergrad(problem.train_loss, problem.val_loss, problem.params,
                                                       problem.hparams, lr=0.3, method=method, fd_radius=1e-4)
    assert _relative_error(results["finite_difference"], results["exact"]) < 1e-6


def test_float32_exact_agrees_with_float64(gated_problem):
    p64, p32 = gated_problem(seed=5), gated_problem(seed=5, dtype=torch.float32)
    h64 = hypergrad.unrolled_hypergrad(p64.train_loss, p64.val_loss, p64.params, p64.hparams, lr=0.3)
    h32 = hypergrad.unrolled_hypergrad(p32.train_loss, p32.val_loss, p32.params, p32.hparams, lr=0.3)
    assert all(h.dtype == torch.float32 for h in h32)
    assert _relative_error([h.double() for h in h32], h64) < 1e-5
