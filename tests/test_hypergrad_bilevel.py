"""BilevelOptimizer (object API): equality with the functional API, level isolation, meta_every, resume, and a
hyper-parameter problem it actually solves."""
import copy

import pytest
import torch
from torch import nn

import hypergrad

METHODS = ["exact", "finite_difference", "first_order"]


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that records the .grad of every parameter at each step."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([None if p.grad is None else p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def _object_api(problem, method, inner_lr=0.3, meta_every=1, unused=None, warmup_steps=0):
    model = problem.module()
    inner = RecordingSGD(model.weights(), lr=inner_lr)
    outer = RecordingSGD(model.gates() + ([unused] if unused is not None else []), lr=1.0)
    opt = hypergrad.BilevelOptimizer(
        model, inner, outer,
        lambda m, batch: problem.fit(m.weights(), m.gates(), batch) + problem.regulariser(m.weights(), m.gates()),
        lambda m, batch: problem.fit(m.weights(), m.gates(), batch), method=method, meta_every=meta_every,
        val_only_hparams=[] if unused is None else [unused], warmup_steps=warmup_steps)
    return model, inner, outer, opt


def _explicit_one_step(problem, lr, method):
    """Oracle written without hypergrad, float64 autograd through the explicit update W' = W - lr grad_W Ltr(W, A)
    (kept differentiable in A; held constant for first_order): h = d Lval(W', A) / dA."""
    weights = [p.detach().clone().requires_grad_() for p in problem.params]
    hparams = [a.detach().clone().requires_grad_() for a in problem.hparams]
    grads = torch.autograd.grad(problem.train_loss(weights, hparams), weights, create_graph=method != "first_order")
    lookahead = [w - lr * g for w, g in zip(weights, grads)]
    if method == "first_order":
        lookahead = [w.detach() for w in lookahead]
    return torch.autograd.grad(problem.val_loss(lookahead, hparams), hparams, allow_unused=True,
                               materialize_grads=True)


# finite_difference at radius 1e-4 errs by O(r^2) ~ 1e-9 relative on this problem
TOLERANCES = {"exact": 1e-12, "finite_difference": 1e-7, "first_order": 1e-12}


@pytest.mark.parametrize("method", METHODS)
def test_one_step_matches_autograd_through_explicit_update(gated_problem, method):
    problem = gated_problem()
    unused = problem.unused.detach().clone().requires_grad_()
    model, inner, outer, opt = _object_api(problem, method, unused=unused)
    opt.fd_radius = 1e-4
    stats = opt.step(problem.train_batch, problem.val_batch)
    expected = _explicit_one_step(problem, 0.3, method)
    for got, want in zip(outer.seen[0], expected):
        torch.testing.assert_close(got, want, rtol=TOLERANCES[method], atol=1e-15)
    assert torch.equal(outer.seen[0][2], torch.zeros(3, dtype=torch.float64))  # declared, enters neither loss
    train_grads = torch.autograd.grad(problem.train_loss(problem.params, problem.hparams), problem.params)
    for got, want in zip(inner.seen[0], train_grads):  # W saw exactly grad_W Ltr: no validation gradient leaked in
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
    for w, p, g in zip(model.weights(), problem.params, train_grads):
        torch.testing.assert_close(w.detach(), p.detach() - 0.3 * g, rtol=1e-13, atol=1e-15)
    lookahead = [p.detach() - 0.3 * g for p, g in zip(problem.params, train_grads)]
    assert stats["val_loss"] == pytest.approx(problem.val_loss(lookahead, problem.hparams).item(), rel=1e-12)
    assert stats["train_loss"] == pytest.approx(problem.train_loss(problem.params, problem.hparams).item(), rel=1e-12)
    assert stats["hypergrad_norm"] == pytest.approx(torch.sqrt(sum(h.pow(2).sum() for h in expected)).item(),
                                                    rel=TOLERANCES[method])
    assert stats["meta_step"] is True
    assert all(t.grad is None for t in model.parameters()) and unused.grad is None


def test_step_size_defaults_to_inner_learning_rate_and_can_be_overridden(gated_problem):
    problem = gated_problem()
    _, _, outer, opt = _object_api(problem, "exact", inner_lr=0.3)
    opt.step(problem.train_batch, problem.val_batch)
    problem = gated_problem()
    _, _, overridden, opt = _object_api(problem, "exact", inner_lr=0.3)
    opt.lr = 0.1
    opt.step(problem.train_batch, problem.val_batch)
    for seen, lr in ((outer.seen[0], 0.3), (overridden.seen[0], 0.1)):
        for got, want in zip(seen, _explicit_one_step(problem, lr, "exact")):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_dropout_finite_difference_matches_exact_in_object_api(gated_problem):
    problem = gated_problem(seed=4, dropout=0.5)
    seen = {}
    for method in ("exact", "finite_difference"):
        _, _, outer, opt = _object_api(problem, method)
        opt.fd_radius = 1e-4
        torch.manual_seed(7)
        opt.step(problem.train_batch, problem.val_batch)
        seen[method] = torch.cat([g.flatten() for g in outer.seen[0]])
    error = torch.linalg.norm(seen["finite_difference"] - seen["exact"]) / torch.linalg.norm(seen["exact"])
    assert error < 1e-6


def test_meta_every_spaces_the_meta_steps(gated_problem):
    problem = gated_problem()
    model, inner, outer, opt = _object_api(problem, "finite_difference", meta_every=3)
    flags, logits = [], []
    for call in range(6):
        val_batch = problem.val_batch if call % 3 == 2 else None  # no validation batch needed off the meta steps
        stats = opt.step(problem.train_batch, val_batch)
        flags.append(stats["meta_step"])
        logits.append(model.logits.detach().clone())
        assert ("val_loss" in stats) == stats["meta_step"]
        assert all(p.grad is None for p in model.parameters())
    assert flags == [False, False, True, False, False, True]
    assert len(inner.seen) == 6 and len(outer.seen) == 2
    assert torch.equal(logits[0], problem.hparams[0].detach()) and torch.equal(logits[1], logits[0])
    assert not torch.equal(logits[2], logits[1])
    with pytest.raises(ValueError, match="pass val_batch"):
        opt.step(problem.train_batch)
        opt.step(problem.train_batch)
        opt.step(problem.train_batch)


@pytest.mark.parametrize("meta_every, expected", [(1, [False, False, True, True, True]),
                                                   (2, [False, False, False, True, False])])
def test_warmup_steps_train_the_weights_alone_first(gated_problem, meta_every, expected):
    problem = gated_problem()
    model, inner, outer, opt = _object_api(problem, "exact", meta_every=meta_every, warmup_steps=2)
    flags = [opt.step(problem.train_batch, problem.val_batch)["meta_step"] for _ in range(5)]
    assert flags == expected
    assert len(inner.seen) == 5 and len(outer.seen) == sum(expected)
    with pytest.raises(ValueError, match="warmup_steps"):
        _object_api(problem, "exact", warmup_steps=-1)


@pytest.mark.parametrize("method", METHODS)
def test_step_reports_the_direct_and_mixed_terms_and_keeps_h(gated_problem, method):
    """direct = grad_A Lval(W', A) with W' held constant (the first-order oracle), mixed = h - direct."""
    problem = gated_problem()
    model, inner, outer, opt = _object_api(problem, method)
    opt.fd_radius = 1e-4
    stats = opt.step(problem.train_batch, problem.val_batch)
    h = _explicit_one_step(problem, 0.3, method)
    direct = _explicit_one_step(problem, 0.3, "first_order")
    norm = lambda ts: torch.sqrt(sum(t.pow(2).sum() for t in ts)).item()
    assert stats["direct_norm"] == pytest.approx(norm(direct), rel=1e-12)
    mixed = norm([a - b for a, b in zip(h, direct)])
    assert stats["mixed_norm"] == pytest.approx(mixed, rel=TOLERANCES[method], abs=1e-15)
    assert (stats["mixed_norm"] > 1e-3 * stats["direct_norm"]) == (method != "first_order")
    for got, want in zip(opt.last_result.hypergrad, outer.seen[0]):
        assert torch.equal(got, want)


def test_finite_difference_passes_run_in_full_precision_under_autocast(gated_problem):
    problem = gated_problem(dtype=torch.float32)
    flags = []

    def train_loss(m, batch):
        flags.append(torch.is_autocast_enabled("cpu"))
        return problem.fit(m.weights(), m.gates(), batch) + problem.regulariser(m.weights(), m.gates())

    model = problem.module()
    opt = hypergrad.BilevelOptimizer(model, torch.optim.SGD(model.weights(), lr=0.3),
                                     torch.optim.SGD(model.gates(), lr=1.0), train_loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        opt.step(problem.train_batch, problem.val_batch)
    assert flags == [True, True, False, False]  # train pass, validation pass, then the two perturbed passes


def _dropout_run(problem, state=None, steps=3):
    model = problem.module()
    extra = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # a free hyper-parameter the loss closes over
    inner = torch.optim.Adam(model.weights(), lr=0.05)
    outer = torch.optim.Adam(model.gates() + [extra], lr=0.05)
    opt = hypergrad.BilevelOptimizer(
        model, inner, outer,
        lambda m, b: problem.fit(m.weights(), m.gates(), b) + problem.regulariser(m.weights(), m.gates())
        + (extra - 0.1).pow(2).sum(),
        lambda m, b: problem.fit(m.weights(), m.gates(), b) + extra.sum() ** 2, method="exact", meta_every=2)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        with torch.no_grad():
            extra.copy_(state["extra"])
    return model, extra, opt


def test_state_dict_round_trip_continues_identically(gated_problem):
    problem = gated_problem(dropout=0.2)
    model, extra, opt = _dropout_run(problem)
    torch.manual_seed(0)
    for _ in range(3):
        opt.step(problem.train_batch, problem.val_batch)
    state = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "extra": extra.detach()})
    torch.manual_seed(1)
    reference = [opt.step(problem.train_batch, problem.val_batch) for _ in range(3)]
    resumed_model, resumed_extra, resumed = _dropout_run(problem, state)
    assert resumed.num_steps == 3
    torch.manual_seed(1)
    continued = [resumed.step(problem.train_batch, problem.val_batch) for _ in range(3)]
    assert continued == reference
    assert [s["meta_step"] for s in continued] == [True, False, True]
    for a, b in zip(resumed_model.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(resumed_extra, extra)


def _learned_weight_decay(method, outer_lr, steps=150):
    """Linear regression, 30 training points, 12 features of which 4 matter; per-feature decay exp(log_decay)."""
    g = torch.Generator().manual_seed(0)
    d = 12
    w_true = torch.zeros(d, dtype=torch.float64)
    w_true[:4] = 2 * torch.randn(4, generator=g, dtype=torch.float64)

    def data(m):
        x = torch.randn(m, d, generator=g, dtype=torch.float64)
        return x, x @ w_true + torch.randn(m, generator=g, dtype=torch.float64)

    train, val = data(20), data(200)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    log_decay = torch.full((d,), -3.0, dtype=torch.float64, requires_grad=True)

    def mse(m, batch):
        return (m(batch[0]).squeeze(-1) - batch[1]).pow(2).mean()

    opt = hypergrad.BilevelOptimizer(
        model, torch.optim.SGD(model.parameters(), lr=0.02), torch.optim.Adam([log_decay], lr=outer_lr),
        lambda m, b: mse(m, b) + 0.5 * (torch.exp(log_decay) * m.weight.squeeze(0).pow(2)).sum(), mse, method=method)
    for _ in range(steps):
        opt.step(train, val)
    with torch.no_grad():
        return mse(model, val).item(), torch.exp(log_decay)


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_learned_weight_decay_lowers_validation_loss(method):
    fixed_loss, _ = _learned_weight_decay(method, outer_lr=0.0)
    learned_loss, decay = _learned_weight_decay(method, outer_lr=0.05)
    assert learned_loss < 0.8 * fixed_loss
    assert decay[4:].mean() > 10 * decay[:4].mean()  # useless features are decayed harder than useful ones


def test_first_order_cannot_learn_a_decay_that_only_enters_the_training_loss():
    _, decay = _learned_weight_decay("first_order", outer_lr=0.05, steps=5)
    torch.testing.assert_close(decay, torch.full((12,), torch.exp(torch.tensor(-3.0)).item(), dtype=torch.float64))


@pytest.mark.parametrize("method", METHODS)
def test_step_inner_false_leaves_g_in_grad_for_the_callers_optimizer(gated_problem, method):
    """A training loop that owns the inner optimizer (transformers.Trainer) steps it itself: the meta step is the
    same h as the explicit-update oracle, the weights stay put with .grad = grad_W Ltr (added to what was there)."""
    problem = gated_problem()
    unused = problem.unused.detach().clone().requires_grad_()
    model, inner, outer, opt = _object_api(problem, method, unused=unused)
    opt.fd_radius = 1e-4
    before = [w.detach().clone() for w in model.weights()]
    model.weights()[0].grad = torch.ones_like(model.weights()[0])
    opt.step(problem.train_batch, problem.val_batch, step_inner=False)
    for got, want in zip(outer.seen[0], _explicit_one_step(problem, 0.3, method)):
        torch.testing.assert_close(got, want, rtol=TOLERANCES[method], atol=1e-15)
    assert inner.seen == []
    train_grads = torch.autograd.grad(problem.train_loss(problem.params, problem.hparams), problem.params)
    for i, (w, b, g) in enumerate(zip(model.weights(), before, train_grads)):
        assert torch.equal(w.detach(), b)
        torch.testing.assert_close(w.grad, g + (1.0 if i == 0 else 0.0), rtol=1e-13, atol=1e-15)
    inner.step()
    for w, p, g in zip(model.weights()[1:], problem.params[1:], train_grads[1:]):
        torch.testing.assert_close(w.detach(), p.detach() - 0.3 * g, rtol=1e-13, atol=1e-15)
