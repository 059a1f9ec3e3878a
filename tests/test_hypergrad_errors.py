"""Bad input fails early with ValueError/TypeError naming the fix; non-finite results raise instead of returning."""
import math

import pytest
import torch
from torch import nn

import hypergrad


def _quadratic():
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    a = torch.ones(3, dtype=torch.float64, requires_grad=True)
    train = lambda p, h: 0.5 * ((p[0] - h[0]) ** 2).sum()
    val = lambda p, h: 0.5 * (p[0] ** 2).sum()
    return train, val, w, a


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(method="newton"), ValueError, "unknown method 'newton'"),
    (dict(steps=0), ValueError, "steps must be >= 1"),
    (dict(steps=2.0), TypeError, "steps must be an int"),
    (dict(method="finite_difference", steps=2), ValueError, "steps=1 only"),
    (dict(fd_radius=0.0), ValueError, "fd_radius must be finite and > 0"),
    (dict(lr=-0.1), ValueError, "lr must be finite and >= 0"),
    (dict(lr=math.nan), ValueError, "lr must be finite"),
    (dict(lr="0.1"), TypeError, "lr must be a real number"),
])
def test_unrolled_rejects_bad_options(kwargs, error, match):
    train, val, w, a = _quadratic()
    options = dict(lr=0.1) | kwargs
    with pytest.raises(error, match=match):
        hypergrad.unrolled_hypergrad(train, val, [w], [a], **options)


def test_unrolled_rejects_bad_tensor_sequences():
    train, val, w, a = _quadratic()
    with pytest.raises(TypeError, match=r"pass \[tensor\]"):
        hypergrad.unrolled_hypergrad(train, val, w, [a], lr=0.1)
    with pytest.raises(ValueError, match="hparams is empty"):
        hypergrad.unrolled_hypergrad(train, val, [w], [], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] must be a torch.Tensor"):
        hypergrad.unrolled_hypergrad(train, val, [1.0], [a], lr=0.1)
    with pytest.raises(TypeError, match="floating-point"):
        hypergrad.unrolled_hypergrad(train, val, [torch.ones(3, dtype=torch.long)], [a], lr=0.1)
    with pytest.raises(ValueError, match=r"hparams\[0\] does not require grad"):
        hypergrad.unrolled_hypergrad(train, val, [w], [a.detach()], lr=0.1)


def test_non_scalar_and_non_tensor_losses_are_rejected():
    train, val, w, a = _quadratic()
    with pytest.raises(ValueError, match="val_loss must return a scalar"):
        hypergrad.unrolled_hypergrad(train, lambda p, h: p[0] ** 2, [w], [a], lr=0.1)
    with pytest.raises(TypeError, match="train_loss must return a torch.Tensor"):
        hypergrad.implicit_hypergrad(lambda p, h: 1.0, val, [w], [a])


@pytest.mark.parametrize("method", ["exact", "finite_difference", "first_order"])
def test_non_finite_hypergradient_raises(method):
    train, _, w, a = _quadratic()
    val = lambda p, h: (p[0] * h[0]).sum() * torch.tensor(math.inf, dtype=torch.float64)
    with pytest.raises(hypergrad.NonFiniteHypergradError, match="NaN or Inf"):
        hypergrad.unrolled_hypergrad(train, val, [w], [a], lr=0.1, method=method)
    assert issubclass(hypergrad.NonFiniteHypergradError, ValueError)


def test_products_reject_mismatched_vectors():
    train, _, w, a = _quadratic()
    grads = torch.autograd.grad(train([w], [a]), [w], create_graph=True)
    with pytest.raises(ValueError, match="vector has 2 tensors but grads has 1"):
        hypergrad.hvp(grads, [w], [torch.ones(3), torch.ones(3)])
    with pytest.raises(ValueError, match=r"vector\[0\] has shape \(2,\)"):
        hypergrad.mixed_vp(grads, [a], [torch.ones(2)])
    with pytest.raises(ValueError, match="grads has 1 tensors but params has 2"):
        hypergrad.hvp(grads, [w, a], [torch.ones(3)])
    with pytest.raises(ValueError, match="vector has 2 tensors but params has 1"):
        hypergrad.mixed_vp_fd(train, [w], [a], [torch.ones(3), torch.ones(3)])


def test_implicit_and_solvers_reject_bad_options():
    train, val, w, a = _quadratic()
    with pytest.raises(ValueError, match="unknown method 'lbfgs'"):
        hypergrad.implicit_hypergrad(train, val, [w], [a], method="lbfgs")
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        hypergrad.implicit_hypergrad(train, val, [w], [a], iterations=0)
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        hypergrad.neumann_series(lambda v: v, [torch.ones(2)], alpha=-1.0)


def _module_setup():
    model = nn.Linear(2, 1)
    hparam = torch.zeros(1, requires_grad=True)
    loss = lambda m, b: (m(b) + hparam).pow(2).mean()
    return model, hparam, loss


def test_bilevel_optimizer_rejects_bad_construction():
    model, hparam, loss = _module_setup()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="in both inner_optimizer and outer_optimizer"):
        hypergrad.BilevelOptimizer(model, inner, torch.optim.SGD([model.bias, hparam], lr=0.1), loss)
    with pytest.raises(ValueError, match="not parameters of model"):
        hypergrad.BilevelOptimizer(model, torch.optim.SGD([hparam], lr=0.1),
                                   torch.optim.SGD(model.parameters(), lr=0.1), loss)
    with pytest.raises(ValueError, match="unknown method 'darts'"):
        hypergrad.BilevelOptimizer(model, inner, torch.optim.SGD([hparam], lr=0.1), loss, method="darts")
    with pytest.raises(ValueError, match="meta_every must be >= 1"):
        hypergrad.BilevelOptimizer(model, inner, torch.optim.SGD([hparam], lr=0.1), loss, meta_every=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        hypergrad.BilevelOptimizer(lambda x: x, inner, torch.optim.SGD([hparam], lr=0.1), loss)
    with pytest.raises(TypeError, match="outer_optimizer must be a torch.optim.Optimizer"):
        hypergrad.BilevelOptimizer(model, inner, [hparam], loss)
    with pytest.raises(TypeError, match="train_loss must be callable"):
        hypergrad.BilevelOptimizer(model, inner, torch.optim.SGD([hparam], lr=0.1), None)
    frozen = torch.zeros(1)
    with pytest.raises(ValueError, match="outer_optimizer holds no tensor that requires grad"):
        hypergrad.BilevelOptimizer(model, inner, torch.optim.SGD([frozen], lr=0.1), loss)


def test_bilevel_optimizer_rejects_bad_losses_and_state():
    model, hparam, loss = _module_setup()
    opt = hypergrad.BilevelOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                     torch.optim.SGD([hparam], lr=0.1), lambda m, b: m(b))
    with pytest.raises(ValueError, match="train_loss must return a scalar"):
        opt.step(torch.ones(4, 2), torch.ones(4, 2))
    opt = hypergrad.BilevelOptimizer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                     torch.optim.SGD([hparam], lr=0.1), lambda m, b: m(b).sum() * math.inf)
    with pytest.raises(hypergrad.NonFiniteHypergradError, match="train_loss is"):
        opt.step(torch.ones(4, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match="state_dict lacks"):
        opt.load_state_dict({"num_steps": 0})
