"""No silent zeros: second-order products refuse gradients that carry no autograd graph, and every weight and every
hyper-parameter must reach the training loss (hyper-parameters declared in ``val_only_hparams`` excepted)."""
import math

import pytest
import torch
from torch import nn

import hypergrad

f64 = dict(dtype=torch.float64)
METHODS = hypergrad.UNROLLED_METHODS
METHOD_STEPS = [("exact", 1), ("exact", 2), ("finite_difference", 1), ("first_order", 1), ("first_order", 2)]


def _darts_toy():
    """Liu et al. 2019, appendix: Ltr = w^2 - 2 a w + a^2, Lval = a w - 2a + 1; one step h = w' - 2 + 2 eta a."""
    train = lambda p, hp: p[0] ** 2 - 2 * hp[0] * p[0] + hp[0] ** 2
    val = lambda p, hp: hp[0] * p[0] - 2 * hp[0] + 1
    w, a = torch.tensor(0.7, **f64, requires_grad=True), torch.tensor(1.6, **f64, requires_grad=True)
    return train, val, w, a


def test_exact_one_step_refuses_training_gradients_without_graph():
    train, val, w, a = _darts_toy()
    flat = torch.autograd.grad(train([w], [a]), [w])  # no create_graph: the mixed term cannot be formed
    with pytest.raises(ValueError, match="create_graph=True"):
        hypergrad.one_step_hypergrad(train, val, (w,), (a,), flat, lr=0.1, method="exact")
    graphed = torch.autograd.grad(train([w], [a]), [w], create_graph=True)
    (h,), *_ = hypergrad.one_step_hypergrad(train, val, (w,), (a,), graphed, lr=0.1, method="exact")
    w_next = 0.7 - 0.1 * (2 * 0.7 - 2 * 1.6)
    assert h.item() == pytest.approx(w_next - 2 + 2 * 0.1 * 1.6, rel=1e-12)  # -0.8, not the first-order -1.12


@pytest.mark.parametrize("product", [hypergrad.hvp, hypergrad.mixed_vp])
def test_products_refuse_gradients_without_graph(product):
    train, _, w, a = _darts_toy()
    flat = torch.autograd.grad(train([w], [a]), [w])
    with pytest.raises(ValueError, match="create_graph=True"):
        product(flat, [w] if product is hypergrad.hvp else [a], [torch.ones((), **f64)])


def test_neumann_series_over_hvp_refuses_gradients_without_graph():
    train, _, w, a = _darts_toy()
    flat = torch.autograd.grad(train([w], [a]), [w])
    with pytest.raises(ValueError, match="create_graph=True"):  # was alpha (J + 1) b, silently
        hypergrad.neumann_series(lambda x: hypergrad.hvp(flat, [w], x), [torch.ones((), **f64)], alpha=0.1)


def _with_dead_weight():
    """Ltr = 0.5 ||w - a||^2 ignores ``dead``; Lval = 0.5 ||w + dead||^2."""
    w = torch.ones(3, **f64, requires_grad=True)
    dead = torch.zeros(3, **f64, requires_grad=True)
    a = torch.full((3,), 0.5, **f64, requires_grad=True)
    train = lambda p, h: 0.5 * (p[0] - h[0]).pow(2).sum()
    val = lambda p, h: 0.5 * (p[0] + p[1]).pow(2).sum()
    return train, val, w, dead, a


@pytest.mark.parametrize("method,steps", METHOD_STEPS)
def test_weight_without_path_to_training_loss_raises(method, steps):
    train, val, w, dead, a = _with_dead_weight()
    with pytest.raises(ValueError, match=r"params\[1\] has no path to the training loss"):
        hypergrad.unrolled_hypergrad(train, val, [w, dead], [a], lr=0.1, method=method, steps=steps)


def test_implicit_weight_without_path_to_training_loss_raises():
    train, val, w, dead, a = _with_dead_weight()
    with pytest.raises(ValueError, match=r"params\[1\] has no path to the training loss"):
        hypergrad.implicit_hypergrad(train, val, [w, dead], [a])


@pytest.mark.parametrize("method,steps", METHOD_STEPS)
def test_unused_hparam_raises_unless_declared_and_then_gets_zeros(gated_problem, method, steps):
    problem = gated_problem()
    args = (problem.train_loss, problem.val_loss, problem.params, problem.hparams + [problem.unused])
    with pytest.raises(ValueError, match=r"hparams\[2\] has no path to the training loss.*val_only_hparams"):
        hypergrad.unrolled_hypergrad(*args, lr=0.3, method=method, steps=steps)
    h = hypergrad.unrolled_hypergrad(*args, lr=0.3, method=method, steps=steps, val_only_hparams=[problem.unused])
    assert torch.equal(h[2], torch.zeros(3, **f64))
    assert bool(h[0].abs().sum() > 0)


def _val_only_temperature():
    """Ltr = 0.5 ||w - a||^2, Lval = exp(t) 0.5 ||w - c||^2: t enters only Lval.
    w' = w - eta (w - a), dLval(w')/dt = exp(t) 0.5 ||w' - c||^2, dLval(w')/da = eta exp(t) (w' - c)."""
    g = torch.Generator().manual_seed(0)
    w, a, c = (torch.randn(4, generator=g, **f64) for _ in range(3))
    t = torch.tensor(0.3, **f64, requires_grad=True)
    train = lambda p, h: 0.5 * (p[0] - h[0]).pow(2).sum()
    val = lambda p, h: torch.exp(h[1]) * 0.5 * (p[0] - c).pow(2).sum()
    return train, val, w.requires_grad_(), a.requires_grad_(), t, c


@pytest.mark.parametrize("method", METHODS)
def test_val_only_hparam_gets_its_direct_term(method):
    train, val, w, a, t, c = _val_only_temperature()
    eta = 0.2
    with pytest.raises(ValueError, match=r"hparams\[1\] has no path to the training loss"):
        hypergrad.unrolled_hypergrad(train, val, [w], [a, t], lr=eta, method=method)
    h_a, h_t = hypergrad.unrolled_hypergrad(train, val, [w], [a, t], lr=eta, method=method, val_only_hparams=[t])
    w_next = w.detach() - eta * (w.detach() - a.detach())
    scale = math.exp(0.3)
    assert h_t.item() == pytest.approx(scale * 0.5 * (w_next - c).pow(2).sum().item(), rel=1e-12)
    expected_a = torch.zeros(4, **f64) if method == "first_order" else eta * scale * (w_next - c)
    torch.testing.assert_close(h_a, expected_a, rtol=1e-8, atol=1e-12)  # Ltr is quadratic: FD is exact too


@pytest.mark.parametrize("method", ["cg", "neumann"])
def test_implicit_val_only_hparam_raises_unless_declared(method):
    # At w: H = I, d^2 Ltr/da dw = -I, so h_a = exp(t) (w - c) and h_t = exp(t) 0.5 ||w - c||^2.
    train, val, w, a, t, c = _val_only_temperature()
    with pytest.raises(ValueError, match=r"hparams\[1\] has no path to the training loss"):
        hypergrad.implicit_hypergrad(train, val, [w], [a, t], method=method)
    h_a, h_t = hypergrad.implicit_hypergrad(train, val, [w], [a, t], method=method, val_only_hparams=[t])
    scale = math.exp(0.3)
    torch.testing.assert_close(h_a, scale * (w.detach() - c), rtol=1e-12, atol=1e-14)
    assert h_t.item() == pytest.approx(scale * 0.5 * (w.detach() - c).pow(2).sum().item(), rel=1e-12)


def test_val_only_hparams_must_be_hparams():
    train, val, w, a, t, _ = _val_only_temperature()
    with pytest.raises(ValueError, match=r"val_only_hparams\[0\] is not one of the hyper-parameters"):
        hypergrad.unrolled_hypergrad(train, val, [w], [a], lr=0.1, val_only_hparams=[t])


def test_mixed_vp_fd_refuses_hparam_without_path_unless_declared():
    train, _, w, a, t, _ = _val_only_temperature()
    v = [torch.ones(4, **f64)]
    with pytest.raises(ValueError, match=r"hparams\[1\] has no path to the training loss"):
        hypergrad.mixed_vp_fd(train, [w], [a, t], v)
    _, mixed_t = hypergrad.mixed_vp_fd(train, [w], [a, t], v, val_only_hparams=[t])
    assert mixed_t.item() == 0.0


class _MergedNet(nn.Module):
    """A linear model whose gate was merged into the weight: the gate no longer enters the forward pass."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1).double()
        self.gate = nn.Parameter(torch.zeros(1, **f64))
        self.spare = nn.Linear(2, 1).double()

    def forward(self, x):
        return self.linear(x)


def _mse(model, batch):
    return (model(batch) - 1.0).pow(2).mean()


@pytest.mark.parametrize("method", METHODS)
def test_bilevel_optimizer_refuses_hparam_without_path_to_training_loss(method):
    model = _MergedNet()
    before = [p.detach().clone() for p in model.parameters()]
    opt = hypergrad.BilevelOptimizer(model, torch.optim.SGD(model.linear.parameters(), lr=0.1),
                                     torch.optim.SGD([model.gate], lr=0.1), _mse, method=method)
    batch = torch.ones(4, 2, **f64)
    with pytest.raises(ValueError, match=r"model\.gate has no path to the training loss.*val_only_hparams"):
        opt.step(batch, batch)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # nothing was stepped
    declared = hypergrad.BilevelOptimizer(model, torch.optim.SGD(model.linear.parameters(), lr=0.1),
                                          torch.optim.SGD([model.gate], lr=0.1), _mse, method=method,
                                          val_only_hparams=[model.gate])
    assert declared.step(batch, batch)["hypergrad_norm"] == 0.0


def test_bilevel_optimizer_refuses_weight_without_path_to_training_loss():
    model = _MergedNet()
    opt = hypergrad.BilevelOptimizer(model, torch.optim.SGD(list(model.linear.parameters())
                                                            + list(model.spare.parameters()), lr=0.1),
                                     torch.optim.SGD([model.gate], lr=0.1), _mse, val_only_hparams=[model.gate])
    with pytest.raises(ValueError, match=r"model\.spare\.weight has no path to the training loss"):
        opt.step(torch.ones(4, 2, **f64), torch.ones(4, 2, **f64))
