"""Shared fixtures: a small nonlinear bilevel problem with softmax-gated hidden units."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def gated_forward(w1, w2, logits, x, dropout=0.0):
    """y = ((tanh(x W1^T) * h * softmax(logits)) dropped out) W2^T, h = #hidden units."""
    gates = torch.softmax(logits, dim=0) * logits.numel()
    hidden = F.dropout(torch.tanh(x @ w1.T) * gates, p=dropout, training=dropout > 0)
    return hidden @ w2.T


class GatedNet(nn.Module):
    """The gated problem as a module: weights w1, w2 and hyper-parameters logits, log_decay."""

    def __init__(self, params, hparams):
        super().__init__()
        self.w1, self.w2 = (nn.Parameter(p.detach().clone()) for p in params)
        self.logits, self.log_decay = (nn.Parameter(a.detach().clone()) for a in hparams)

    def weights(self):
        return [self.w1, self.w2]

    def gates(self):
        return [self.logits, self.log_decay]


def make_gated_problem(seed=0, dtype=torch.float64, n=12, d=4, hidden=5, dropout=0.0):
    """Ltr(W, A) = fit(W, A, train) + regulariser(W, A),  Lval(W, A) = fit(W, A, val),
    fit = mean (f(x; W, beta) - y)^2,  regulariser = exp(log_decay) ||W||^2 / 2,
    W = (W1, W2), A = (beta, log_decay); ``module()`` builds a :class:`GatedNet` at these values. ``unused`` is a
    tensor that enters neither loss (passing it as a hyper-parameter raises unless it is declared in
    ``val_only_hparams``)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    x, y, x_val, y_val = randn(n, d), randn(n, 1), randn(n, d), randn(n, 1)
    params = [randn(hidden, d).requires_grad_(), (0.5 * randn(1, hidden)).requires_grad_()]
    hparams = [randn(hidden).requires_grad_(), torch.tensor(-2.0, dtype=dtype).requires_grad_()]
    unused = randn(3).requires_grad_()

    def fit(p, a, batch):
        inputs, targets = batch
        return (gated_forward(p[0], p[1], a[0], inputs, dropout) - targets).pow(2).mean()

    def regulariser(p, a):
        return 0.5 * torch.exp(a[1]) * sum(w.pow(2).sum() for w in p)

    def train_loss(p, a):
        return fit(p, a, (x, y)) + regulariser(p, a)

    def val_loss(p, a):
        return fit(p, a, (x_val, y_val))

    return SimpleNamespace(train_loss=train_loss, val_loss=val_loss, fit=fit, regulariser=regulariser,
                           params=params, hparams=hparams, unused=unused, train_batch=(x, y),
                           val_batch=(x_val, y_val), module=lambda: GatedNet(params, hparams))


@pytest.fixture
def gated_problem():
    """Factory for :func:`make_gated_problem` (float64 by default)."""
    return make_gated_problem
