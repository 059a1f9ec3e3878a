"""Pluggable inner updates. The Adam lookahead is the step torch.optim.AdamW really takes, and its hypergradient
equals float64 autograd through an AdamW step written out here (independent of hypergrad), from an empty and from
a non-empty optimizer state, in the functional and in the object API."""
import pytest
import torch

import hypergrad

f64 = dict(dtype=torch.float64)
GROUPS = ({"lr": 0.05, "weight_decay": 0.1}, {"lr": 0.02, "weight_decay": 0.0})  # one group per weight tensor


def _warm_optimizer(problem, steps, *, betas=(0.8, 0.99), eps=1e-8):
    """Fresh leaf copies of the weights and an AdamW (one parameter group each) after ``steps`` real steps on Ltr."""
    weights = [p.detach().clone().requires_grad_() for p in problem.params]
    optimizer = torch.optim.AdamW([dict(params=[w], **group) for w, group in zip(weights, GROUPS)], betas=betas,
                                  eps=eps)
    for _ in range(steps):
        grads = torch.autograd.grad(problem.train_loss(weights, problem.hparams), weights)
        for w, g in zip(weights, grads):
            w.grad = g
        optimizer.step()
    for w in weights:
        w.grad = None
    return weights, optimizer


def _state_snapshot(optimizer, weights):
    """Per weight: (lr, beta1, beta2, eps, weight_decay, step, exp_avg, exp_avg_sq), read from the optimizer."""
    rows = []
    for w in weights:
        group = next(g for g in optimizer.param_groups if any(p is w for p in g["params"]))
        state = optimizer.state.get(w, {})
        rows.append((group["lr"], *group["betas"], group["eps"], group["weight_decay"], int(state.get("step", 0)),
                     state.get("exp_avg", torch.zeros_like(w)).clone(),
                     state.get("exp_avg_sq", torch.zeros_like(w)).clone()))
    return rows


def _explicit_adamw(weights, grads, snapshot):
    """W' = W (1 - lr wd) - lr mhat / (sqrt(vhat) + eps), m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    mhat = m / (1 - b1^t), vhat = v / (1 - b2^t), t = step + 1; differentiable in g."""
    stepped = []
    for w, g, (lr, b1, b2, eps, wd, step, m, v) in zip(weights, grads, snapshot):
        t = step + 1
        m_hat = (b1 * m + (1 - b1) * g) / (1 - b1 ** t)
        v_hat = (b2 * v + (1 - b2) * g * g) / (1 - b2 ** t)
        stepped.append(w * (1 - lr * wd) - lr * m_hat / (torch.sqrt(v_hat) + eps))
    return stepped


def _oracle(problem, weights, snapshot, first_order=False):
    """h = d Lval(W'(A), A) / dA by float64 autograd through :func:`_explicit_adamw`."""
    hparams = [a.detach().clone().requires_grad_() for a in problem.hparams]
    start = [w.detach() .clone().requires_grad_() for w in weights]
    grads = torch.autograd.grad(problem.train_loss(start, hparams), start, create_graph=not first_order)
    lookahead = _explicit_adamw([w.detach() for w in start], grads, snapshot)
    if first_order:
        lookahead = [w.detach() for w in lookahead]
    return torch.autograd.grad(problem.val_loss(lookahead, hparams), hparams, allow_unused=True,
                               materialize_grads=True)


def _relative_error(got, want):
    got, want = torch.cat([g.flatten() for g in got]), torch.cat([w.flatten() for w in want])
    return (torch.linalg.norm(got - want) / torch.linalg.norm(want)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("warm_steps", [0, 4])
@pytest.mark.parametrize("lr", [None, 0.3])  # 0.3: the override replaces both groups' learning rates
def test_adam_lookahead_is_the_step_adamw_takes(gated_problem, dtype, warm_steps, lr):
    problem = gated_problem(dtype=dtype)
    weights, optimizer = _warm_optimizer(problem, warm_steps)
    grads = torch.autograd.grad(problem.train_loss(weights, problem.hparams), weights)
    lookahead = hypergrad.AdamWUpdate.from_optimizer(optimizer, weights, lr=lr).lookahead(weights, grads)
    for group, w, g in zip(optimizer.param_groups, weights, grads):
        group["lr"] = group["lr"] if lr is None else lr
        w.grad = g
    optimizer.step()
    for predicted, stepped in zip(lookahead, weights):
        torch.testing.assert_close(predicted, stepped.detach(), rtol=0, atol=0)


def test_adam_lookahead_differs_from_the_sgd_lookahead(gated_problem):
    problem = gated_problem()
    weights, optimizer = _warm_optimizer(problem, 3)
    grads = torch.autograd.grad(problem.train_loss(weights, problem.hparams), weights)
    adam = hypergrad.AdamWUpdate.from_optimizer(optimizer, weights).lookahead(weights, grads)
    sgd = hypergrad.SGDUpdate(0.05).lookahead(weights, grads)
    assert not torch.allclose(adam[0], sgd[0], rtol=1e-3)


# First step (empty state): P(g) ~ sign(g) and J_P = eps / (|g| + eps)^2, so a large eps is needed for the mixed
# term to be far above the tolerance. After a few steps the default eps suffices.
STATES = [pytest.param(0, 0.3, id="empty-state"), pytest.param(5, 1e-8, id="after-5-steps")]


@pytest.mark.parametrize("warm_steps,eps", STATES)
def test_exact_adam_hypergradient_equals_autograd_through_explicit_adamw(gated_problem, warm_steps, eps):
    problem = gated_problem(seed=1)
    weights, optimizer = _warm_optimizer(problem, warm_steps, eps=eps)
    snapshot = _state_snapshot(optimizer, weights)
    update = hypergrad.AdamWUpdate.from_optimizer(optimizer, weights)
    args = (problem.train_loss, problem.val_loss, weights, problem.hparams)
    got = hypergrad.unrolled_hypergrad(*args, inner_update=update, method="exact")
    oracle = _oracle(problem, weights, snapshot)
    for g, o in zip(got, oracle):
        torch.testing.assert_close(g, o, rtol=1e-10, atol=1e-13)
    first_order = hypergrad.unrolled_hypergrad(*args, inner_update=update, method="first_order")
    for g, o in zip(first_order, _oracle(problem, weights, snapshot, first_order=True)):
        torch.testing.assert_close(g, o, rtol=1e-12, atol=1e-14)
    assert _relative_error(first_order, oracle) > 1e-3  # the mixed term matters, so the comparison can fail


def test_adam_finite_difference_converges_to_exact_as_radius_squared(gated_problem):
    problem = gated_problem(seed=2)
    weights, optimizer = _warm_optimizer(problem, 5)
    update = hypergrad.AdamWUpdate.from_optimizer(optimizer, weights)
    args = (problem.train_loss, problem.val_loss, weights, problem.hparams)
    exact = hypergrad.unrolled_hypergrad(*args, inner_update=update)
    errors = [_relative_error(hypergrad.unrolled_hypergrad(*args, inner_update=update, method="finite_difference",
                                                           fd_radius=r), exact) for r in (1e-1, 1e-2, 1e-3)]
    assert errors[0] > 1e-7
    for coarse, fine in zip(errors, errors[1:]):
        assert 30 < coarse / fine < 300  # O(r^2)


def _bilevel(problem, method):
    model = problem.module()
    inner = torch.optim.AdamW([dict(params=[w], **group) for w, group in zip(model.weights(), GROUPS)],
                              betas=(0.8, 0.99))
    outer = torch.optim.SGD(model.gates(), lr=1.0)  # A_next = A - h, so the step reveals h
    opt = hypergrad.BilevelOptimizer(
        model, inner, outer,
        lambda m, batch: problem.fit(m.weights(), m.gates(), batch) + problem.regulariser(m.weights(), m.gates()),
        lambda m, batch: problem.fit(m.weights(), m.gates(), batch), method=method, lookahead="adam", fd_radius=1e-4)
    return model, inner, opt


@pytest.mark.parametrize("method,tolerance", [("exact", 1e-10), ("finite_difference", 1e-6), ("first_order", 1e-12)])
def test_bilevel_adam_lookahead_matches_explicit_adamw_from_the_state_before_the_step(gated_problem, method,
                                                                                    tolerance):
    problem = gated_problem(seed=3)
    model, inner, opt = _bilevel(problem, method)
    for _ in range(3):
        opt.step(problem.train_batch, problem.val_batch)
    problem.params = [w.detach().clone() for w in model.weights()]
    problem.hparams = [a.detach().clone() for a in model.gates()]
    snapshot = _state_snapshot(inner, model.weights())
    functional = hypergrad.unrolled_hypergrad(
        problem.train_loss, problem.val_loss, [w.requires_grad_() for w in problem.params],
        [a.requires_grad_() for a in problem.hparams], method=method, fd_radius=1e-4,
        inner_update=hypergrad.AdamWUpdate.from_optimizer(inner, model.weights()))
    stats = opt.step(problem.train_batch, problem.val_batch)
    h = [before.detach() - after.detach() for before, after in zip(problem.hparams, model.gates())]
    oracle = _oracle(problem, problem.params, snapshot, first_order=method == "first_order")
    assert _relative_error(h, oracle) < tolerance
    assert _relative_error(h, functional) < 1e-12
    # The lookahead is the real step: Lval(W') equals Lval at the weights AdamW produced (with the pre-step A).
    assert stats["val_loss"] == pytest.approx(problem.val_loss(model.weights(), problem.hparams).item(), rel=1e-12)


@pytest.mark.parametrize("options,match", [
    (dict(amsgrad=True), "amsgrad"),
    (dict(maximize=True), "maximize"),
])
def test_adam_update_refuses_variants_it_does_not_model(options, match):
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        hypergrad.AdamWUpdate.from_optimizer(torch.optim.AdamW([w], **options), [w])


def test_adam_update_refuses_coupled_weight_decay_and_other_optimizers():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="coupled"):
        hypergrad.AdamWUpdate.from_optimizer(torch.optim.Adam([w], weight_decay=0.1), [w])
    hypergrad.AdamWUpdate.from_optimizer(torch.optim.Adam([w]), [w])  # Adam without decay is AdamW without decay
    with pytest.raises(TypeError, match="torch.optim.Adam or AdamW"):
        hypergrad.AdamWUpdate.from_optimizer(torch.optim.SGD([w], lr=0.1), [w])
    with pytest.raises(ValueError, match="not a parameter of the optimizer"):
        hypergrad.AdamWUpdate.from_optimizer(torch.optim.AdamW([w]), [torch.zeros(2)])


def test_bilevel_optimizer_checks_the_lookahead(gated_problem):
    model = gated_problem().module()
    loss = lambda m, batch: m.w1.sum()
    with pytest.raises(ValueError, match="unknown lookahead 'lion'"):
        hypergrad.BilevelOptimizer(model, torch.optim.AdamW(model.weights()), torch.optim.SGD(model.gates(), lr=1),
                                   loss, lookahead="lion")
    with pytest.raises(TypeError, match="torch.optim.Adam or AdamW"):
        hypergrad.BilevelOptimizer(model, torch.optim.SGD(model.weights(), lr=0.1),
                                   torch.optim.SGD(model.gates(), lr=1), loss, lookahead="adam")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(), ValueError, "pass lr"),
    (dict(lr=0.1, inner_update=hypergrad.SGDUpdate(0.1)), ValueError, "not both"),
    (dict(inner_update="adam"), TypeError, "InnerUpdate"),
    (dict(inner_update=hypergrad.AdamWUpdate([hypergrad.AdamWState(lr=0.1)]), steps=2), ValueError, "steps=1"),
])
def test_unrolled_checks_the_inner_update(kwargs, error, match):
    w = torch.ones(3, **f64, requires_grad=True)
    a = torch.ones(3, **f64, requires_grad=True)
    loss = lambda p, h: 0.5 * ((p[0] - h[0]) ** 2).sum()
    with pytest.raises(error, match=match):
        hypergrad.unrolled_hypergrad(loss, loss, [w], [a], **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1.0), "lr must be finite and >= 0"),
    (dict(lr=0.1, betas=(1.0, 0.9)), "betas"),
    (dict(lr=0.1, eps=0.0), "eps must be finite and > 0"),
    (dict(lr=0.1, step=3), "exp_avg and exp_avg_sq"),
])
def test_adamw_state_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hypergrad.AdamWState(**kwargs)


def test_adamw_update_checks_state_shapes():
    w = torch.ones(3, **f64, requires_grad=True)
    update = hypergrad.AdamWUpdate([hypergrad.AdamWState(lr=0.1, step=1, exp_avg=torch.zeros(2, **f64),
                                                         exp_avg_sq=torch.zeros(2, **f64))])
    with pytest.raises(ValueError, match=r"exp_avg of weight 0 has shape \(2,\)"):
        update.lookahead([w], [torch.ones(3, **f64)])
    with pytest.raises(ValueError, match="1 states for 2 weights"):
        update.lookahead([w, w], [torch.ones(3, **f64)] * 2)
