"""Differentiable models of one step of the inner optimiser: the lookahead of the one-step hypergradient.

An update maps the weights W and their training gradient g = grad_W Ltr(W, A) to the lookahead

    W' = U(W, g)

and gives the vector-Jacobian product u = (dW'/dg)^T v. Only g depends on A (W is the current iterate), so

    h = d Lval(W', A) / dA = grad_A Lval(W', A) + [d^2 Ltr / dA dW](W, A) . u,      v = grad_W' Lval(W', A).

* :class:`SGDUpdate`:   W' = W - lr g,  u = -lr v  (AutoLoRA Eq. 4; exact for plain SGD).
* :class:`AdamWUpdate`: torch.optim.AdamW's step from the optimiser state before the step,
  W' = W (1 - lr wd) - lr P(g),  u = -lr J_P^T v  with the diagonal Jacobian J_P = dP/dg given there.
"""
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ._validation import check_real
from .tensor_tuples import Tensors


class InnerUpdate(ABC):
    """W' = U(W, g) and u = (dW'/dg)^T v for one inner step; subclasses define both for their optimiser."""

    @abstractmethod
    def lookahead(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensors:
        """The weights after the step, W' = U(W, g), detached."""

    @abstractmethod
    def vjp(self, params: Sequence[Tensor], grads: Sequence[Tensor], vector: Sequence[Tensor]) -> Tensors:
        """u = (dW'/dg)^T v at (W, g), detached."""


class SGDUpdate(InnerUpdate):
    """Plain SGD: W' = W - lr g, so dW'/dg = -lr I and u = -lr v."""

    def __init__(self, lr: float):
        self.lr = check_real("lr", lr, positive=False)

    def lookahead(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensors:
        return tuple(p.detach() - self.lr * g.detach() for p, g in zip(params, grads))

    def vjp(self, params: Sequence[Tensor], grads: Sequence[Tensor], vector: Sequence[Tensor]) -> Tensors:
        return tuple(-self.lr * v.detach() for v in vector)


@dataclass(frozen=True)
class AdamWState:
    """The AdamW settings of one weight tensor and its optimiser state before the step: ``step`` steps taken so
    far, first and second moments ``exp_avg``, ``exp_avg_sq`` (None with ``step`` 0: zeros, the first step)."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    step: int = 0
    exp_avg: Optional[Tensor] = None
    exp_avg_sq: Optional[Tensor] = None

    def __post_init__(self):
        check_real("lr", self.lr, positive=False)
        check_real("eps", self.eps, positive=True)
        check_real("weight_decay", self.weight_decay, positive=False)
        if len(self.betas) != 2 or not all(0 <= float(b) < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 0:
            raise ValueError(f"step must be an int >= 0 (steps taken before this one), got {self.step!r}")
        if self.step > 0 and (self.exp_avg is None or self.exp_avg_sq is None):
            raise ValueError(f"step={self.step} needs exp_avg and exp_avg_sq (the optimizer state); only the "
                             "first step (step=0) may leave them out")


class AdamWUpdate(InnerUpdate):
    """torch.optim.AdamW's step (amsgrad=False, maximize=False), per weight tensor with its own :class:`AdamWState`:

        t = step + 1,   m = b1 m_prev + (1 - b1) g,   s = b2 s_prev + (1 - b2) g^2,
        c1 = 1 - b1^t,  c2 = 1 - b2^t,  r = sqrt(s / c2),  P(g) = (m / c1) / (r + eps),
        W' = W (1 - lr wd) - lr P(g).

    P depends on g through both m and s; its Jacobian is diagonal,

        J_P = dP/dg = (1 - b1) / (c1 (r + eps))  -  (m / c1) (1 - b2) g / (c2 r (r + eps)^2)

    (second term 0 where r = 0), and u = (dW'/dg)^T v = -lr J_P v. At the first step (m_prev = s_prev = 0)
    P(g) = g / (|g| + eps) ~ sign(g) and J_P = eps / (|g| + eps)^2 ~ 0."""

    def __init__(self, states: Sequence[AdamWState]):
        self.states = tuple(states)
        for i, state in enumerate(self.states):
            if not isinstance(state, AdamWState):
                raise TypeError(f"states[{i}] must be an AdamWState, got {type(state).__name__}")

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer, params: Sequence[Tensor], *,
                       lr: Optional[float] = None) -> "AdamWUpdate":
        """The update ``optimizer`` (torch.optim.AdamW, or Adam without weight decay) is about to apply to
        ``params``, read from its parameter groups and state; call it before the optimizer steps. ``lr``, if given,
        replaces every group's learning rate."""
        if not isinstance(optimizer, torch.optim.Adam):
            raise TypeError(f"the Adam lookahead models torch.optim.Adam or AdamW, got {type(optimizer).__name__}")
        groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        states = []
        for i, p in enumerate(params):
            if id(p) not in groups:
                raise ValueError(f"params[{i}] is not a parameter of the optimizer")
            states.append(_adamw_state(groups[id(p)], optimizer.state.get(p, {}), lr))
        return cls(states)

    def _states_for(self, params: Sequence[Tensor]) -> tuple[AdamWState, ...]:
        if len(self.states) != len(params):
            raise ValueError(f"the Adam update has {len(self.states)} states for {len(params)} weights")
        for i, (state, p) in enumerate(zip(self.states, params)):
            for name in ("exp_avg", "exp_avg_sq"):
                moment = getattr(state, name)
                if moment is not None and moment.shape != p.shape:
                    raise ValueError(f"{name} of weight {i} has shape {tuple(moment.shape)} but the weight has "
                                     f"{tuple(p.shape)}; pass the optimizer state of the same tensors, in order")
        return self.states

    def lookahead(self, params: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensors:
        """W' = W (1 - lr wd) - lr P(g), in the operation order of torch.optim.AdamW."""
        stepped = []
        for state, p, g in zip(self._states_for(params), params, grads):
            m, r, c1, _ = _moments(state, g.detach())
            decayed = p.detach() * (1 - state.lr * state.weight_decay)
            stepped.append(torch.addcdiv(decayed, m, r + state.eps, value=-state.lr / c1))
        return tuple(stepped)

    def vjp(self, params: Sequence[Tensor], grads: Sequence[Tensor], vector: Sequence[Tensor]) -> Tensors:
        """u = -lr J_P v, J_P the diagonal Jacobian of the class docstring."""
        out = []
        for state, g, v in zip(self._states_for(params), grads, vector):
            g = g.detach()
            m, r, c1, c2 = _moments(state, g)
            b1, b2 = state.betas
            denom = r + state.eps
            through_s = torch.where(r > 0, (m / c1) * (1 - b2) * g / (c2 * r * denom ** 2), torch.zeros_like(r))
            out.append(-state.lr * ((1 - b1) / (c1 * denom) - through_s) * v.detach())
        return tuple(out)


def _moments(state: AdamWState, g: Tensor) -> tuple[Tensor, Tensor, float, float]:
    """(m, r, c1, c2) after the step: m = b1 m_prev + (1 - b1) g, r = sqrt(s / c2) with s = b2 s_prev + (1 - b2) g^2,
    computed as torch.optim.AdamW does (lerp, addcmul, sqrt(s) / sqrt(c2))."""
    b1, b2 = state.betas
    t = state.step + 1
    m_prev = torch.zeros_like(g) if state.exp_avg is None else state.exp_avg.detach()
    s_prev = torch.zeros_like(g) if state.exp_avg_sq is None else state.exp_avg_sq.detach()
    m = torch.lerp(m_prev, g, 1 - b1)
    s = torch.addcmul(s_prev * b2, g, g, value=1 - b2)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    return m, s.sqrt() / c2 ** 0.5, c1, c2


def _adamw_state(group: dict, state: dict, lr: Optional[float]) -> AdamWState:
    """One tensor's :class:`AdamWState` from its torch.optim.Adam(W) parameter group and state."""
    for flag in ("amsgrad", "maximize"):
        if group.get(flag, False):
            raise ValueError(f"the Adam lookahead models AdamW with {flag}=False; this optimizer has {flag}=True")
    if group["weight_decay"] != 0 and not group.get("decoupled_weight_decay", False):
        raise ValueError("the Adam lookahead models decoupled weight decay (AdamW); this optimizer uses coupled L2 "
                         "decay (torch.optim.Adam with weight_decay > 0): use torch.optim.AdamW")
    return AdamWState(lr=float(group["lr"] if lr is None else lr), betas=tuple(float(b) for b in group["betas"]),
                      eps=float(group["eps"]), weight_decay=float(group["weight_decay"]),
                      step=int(state.get("step", 0)), exp_avg=state.get("exp_avg"),
                      exp_avg_sq=state.get("exp_avg_sq"))
