"""The AutoLoRA hypergradient on a real (tiny) transformer against an independent finite-difference oracle.

F(beta) = Lval(W - eta * grad_W Ltr(W, beta), beta) is built from ``torch.func.functional_call`` and a plain
``torch.autograd.grad`` for the inner gradient only; its float64 central differences are compared with
``hypergrad.unrolled_hypergrad`` and with one :class:`hypergrad.BilevelOptimizer` meta step.
"""
import pytest
import torch
from torch.func import functional_call

import hypergrad
from autolora.config import AutoLoRAConfig
from autolora.model import get_autolora_model, selection_parameters
from autolora.training import weight_parameters
from tiny_models import tiny_batch, tiny_bert

ETA = 0.5  # large enough that the second-order term is far above the tolerance
FD_STEP = 1e-5


def tiny_problem():
    """float64 tiny BERT (eval mode: no dropout) with random LoRA factors, logits and head, plus two batches."""
    base = tiny_bert(num_labels=3, seed=0, dtype=torch.float64)
    base.set_attn_implementation("eager")  # SDPA's CPU kernel has no double backward, which "exact" needs
    model = get_autolora_model(base, AutoLoRAConfig(max_rank=3))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in weight_parameters(model) + selection_parameters(model):
            p.copy_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    train_batch = dict(tiny_batch(batch_size=4, seq_len=6, seed=2), labels=torch.tensor([0, 1, 2, 1]))
    val_batch = dict(tiny_batch(batch_size=4, seq_len=6, seed=3), labels=torch.tensor([2, 2, 0, 1]))
    return model, train_batch, val_batch


def names_of(model, tensors):
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [by_id[id(t)] for t in tensors]


def loss_with(model, weight_names, beta_names, weights, betas, batch):
    values = dict(zip(weight_names, weights)) | dict(zip(beta_names, betas))
    return functional_call(model, values, args=(), kwargs=batch).loss


def composite_objective(model, train_batch, val_batch):
    """F(beta) with W fixed at the model's current weights."""
    weights, betas = weight_parameters(model), selection_parameters(model)
    w_names, b_names = names_of(model, weights), names_of(model, betas)
    w0 = [w.detach() for w in weights]

    def objective(flat_beta):
        beta = list(torch.split(flat_beta, [b.numel() for b in betas]))
        w = [t.clone().requires_grad_() for t in w0]
        grads = torch.autograd.grad(loss_with(model, w_names, b_names, w, beta, train_batch), w)
        stepped = [t.detach() - ETA * g for t, g in zip(w, grads)]
        return loss_with(model, w_names, b_names, stepped, beta, val_batch).detach()
    return objective


def central_differences(fn, x):
    grad = torch.empty_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = FD_STEP
        grad[i] = (fn(x + e) - fn(x - e)) / (2 * FD_STEP)
    return grad


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.fixture(scope="module")
def oracle():
    model, train_batch, val_batch = tiny_problem()
    beta0 = flat([b.detach() for b in selection_parameters(model)])
    return central_differences(composite_objective(model, train_batch, val_batch), beta0)


def assert_close_relative(actual, expected, rtol):
    error = (actual - expected).norm() / expected.norm()
    assert error < rtol, f"relative error {error:.3e} >= {rtol}"


def level_losses(model, train_batch, val_batch):
    """(W, beta, Ltr(w, b), Lval(w, b)) with the losses as functions of substituted tensor lists."""
    weights, betas = weight_parameters(model), selection_parameters(model)
    w_names, b_names = names_of(model, weights), names_of(model, betas)
    return (weights, betas, lambda w, b: loss_with(model, w_names, b_names, w, b, train_batch),
            lambda w, b: loss_with(model, w_names, b_names, w, b, val_batch))


def test_oracle_has_a_significant_second_order_term(oracle):
    """The first-order answer grad_beta Lval(W', beta) misses the oracle by far more than the tolerance below."""
    weights, betas, train_fn, val_fn = level_losses(*tiny_problem())
    first_order = hypergrad.unrolled_hypergrad(train_fn, val_fn, weights, betas, lr=ETA, method="first_order")
    assert (flat(first_order) - oracle).norm() / oracle.norm() > 1e-3


def test_unrolled_exact_hypergrad_matches_finite_differences(oracle):
    weights, betas, train_fn, val_fn = level_losses(*tiny_problem())
    h = hypergrad.unrolled_hypergrad(train_fn, val_fn, weights, betas, lr=ETA, method="exact")
    assert_close_relative(flat(h), oracle, 1e-6)


@pytest.mark.parametrize("method, fd_radius", [("exact", 0.01), ("finite_difference", 1e-4)])
def test_bilevel_meta_step_matches_finite_differences(oracle, method, fd_radius):
    """With SGD at both levels (outer lr 1) one step moves beta by exactly -h and W by -eta grad_W Ltr(W, beta)."""
    model, train_batch, val_batch = tiny_problem()
    weights, betas, train_fn, _ = level_losses(model, train_batch, val_batch)
    beta0 = [b.detach().clone() for b in betas]
    w0 = [w.detach().clone().requires_grad_() for w in weights]
    expected_w = [w.detach() - ETA * g for w, g in zip(w0, torch.autograd.grad(train_fn(w0, beta0), w0))]
    opt = hypergrad.BilevelOptimizer(model, torch.optim.SGD(weights, lr=ETA), torch.optim.SGD(betas, lr=1.0),
                                     lambda m, batch: m(**batch).loss, method=method, fd_radius=fd_radius)
    assert opt.step(train_batch, val_batch)["meta_step"]
    assert_close_relative(flat(beta0) - flat([b.detach() for b in betas]), oracle, 1e-6)
    for w, expected in zip(weights, expected_w):
        torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-12)
