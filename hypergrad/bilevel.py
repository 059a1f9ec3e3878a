"""Object API: one call of :meth:`BilevelOptimizer.step` = one real inner step on the weights W plus, every
``meta_every`` calls, one meta step on the hyper-parameters A with the one-step hypergradient of
:func:`~hypergrad.unrolled.one_step_hypergrad` (the same code as the functional API)."""
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._validation import (check_choice, check_count, check_real, check_scalar_loss, val_only_mask,
                          NonFiniteHypergradError)
from .inner_updates import AdamWUpdate, InnerUpdate, SGDUpdate
from .products import training_gradients
from .rng import capture_rng_state
from .tensor_tuples import Tensors, global_norm
from .unrolled import UNROLLED_METHODS, OneStepHypergrad, one_step_hypergrad

ModelLoss = Callable[[nn.Module, Any], Tensor]
LOOKAHEADS = ("sgd", "adam")


class _BoundLoss(nn.Module):
    """forward(batch) = loss_fn(model, batch); lets torch.func.functional_call substitute the model's weights."""

    def __init__(self, model: nn.Module, loss_fn: ModelLoss):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


def _optimized_tensors(optimizer: torch.optim.Optimizer) -> Tensors:
    """The tensors of all parameter groups that require grad, in order, each once."""
    seen, tensors = set(), []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                tensors.append(p)
    return tuple(tensors)


class BilevelOptimizer:
    """Alternating bilevel optimisation of weights W (inner) and hyper-parameters A (outer).

    Each :meth:`step` computes g = grad_W Ltr(W, A) on the training batch. Meta steps are due on every
    ``meta_every``-th step after the first ``warmup_steps`` steps (which train W alone). When one is due it forms the
    lookahead W' (reusing g, no extra training pass), evaluates Lval(W', A) on the validation batch with the
    weights substituted through ``torch.func.functional_call``, computes the hypergradient h = d Lval(W', A)/dA by
    ``method`` ("finite_difference" | "exact" | "first_order", see :mod:`hypergrad.unrolled`) at the pre-step W and
    A, then lets ``inner_optimizer`` step W with gradient g and ``outer_optimizer`` step A with gradient h.

    W = the tensors of ``inner_optimizer`` that require grad (all must be parameters of ``model``); A = those of
    ``outer_optimizer`` (module parameters or free tensors the loss callables close over).

    ``lookahead`` models the inner optimizer's step (:mod:`hypergrad.inner_updates`): "sgd" is W' = W - eta * g
    (AutoLoRA Eq. 4), eta = ``lr`` or, if None, the current ``inner_optimizer.param_groups[0]["lr"]``; "adam" is
    the step a torch.optim.AdamW ``inner_optimizer`` is about to take, W' = W (1 - lr wd) - lr P(g), read from each
    weight's parameter group and optimizer state before the optimizer steps (``lr``, if given, replaces every
    group's learning rate).

    The finite-difference passes run in float32: the weights and the float16/bfloat16 parameters and buffers of
    ``model`` are replaced by float32 copies for them (their difference quotient would otherwise divide each
    pass's rounding by 2 e).

    Gradients are written to ``.grad`` only for the optimizer step that consumes them and cleared after it. Buffers
    (e.g. BatchNorm statistics) are those of ``model`` in every pass.

    Every weight must reach the training loss on every step, and every hyper-parameter on meta steps (ValueError
    before anything is stepped, e.g. for adapters merged into the base weights), except the hyper-parameters
    listed in ``val_only_hparams``: those that legitimately enter only the validation loss (zero mixed term,
    h = grad_A Lval(W', A)).
    """

    def __init__(self, model: nn.Module, inner_optimizer: torch.optim.Optimizer,
                 outer_optimizer: torch.optim.Optimizer, train_loss: ModelLoss, val_loss: Optional[ModelLoss] = None,
                 *, method: str = "finite_difference", lr: Optional[float] = None, fd_radius: float = 0.01,
                 meta_every: int = 1, val_only_hparams: Sequence[Tensor] = (), lookahead: str = "sgd",
                 warmup_steps: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, opt in (("inner_optimizer", inner_optimizer), ("outer_optimizer", outer_optimizer)):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"{name} must be a torch.optim.Optimizer, got {type(opt).__name__}")
        val_loss = train_loss if val_loss is None else val_loss
        for name, fn in (("train_loss", train_loss), ("val_loss", val_loss)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable as {name}(model, batch)")
        self.method = check_choice("method", method, UNROLLED_METHODS)
        self.lookahead = check_choice("lookahead", lookahead, LOOKAHEADS)
        self.lr = None if lr is None else check_real("lr", lr, positive=False)
        self.fd_radius = check_real("fd_radius", fd_radius, positive=True)
        self.meta_every = check_count("meta_every", meta_every)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.last_result: Optional[OneStepHypergrad] = None
        self.inner_optimizer, self.outer_optimizer = inner_optimizer, outer_optimizer
        self.num_steps = 0
        self._weights = _optimized_tensors(inner_optimizer)
        self._hparams = _optimized_tensors(outer_optimizer)
        if not self._weights:
            raise ValueError("inner_optimizer holds no tensor that requires grad")
        if not self._hparams:
            raise ValueError("outer_optimizer holds no tensor that requires grad")
        overlap = {id(p) for p in self._weights} & {id(a) for a in self._hparams}
        if overlap:
            raise ValueError(f"{len(overlap)} tensor(s) are in both inner_optimizer and outer_optimizer; "
                             "weights and hyper-parameters must be disjoint")
        names = {id(p): f"model.{name}" for name, p in model.named_parameters()}
        missing = [i for i, p in enumerate(self._weights) if id(p) not in names]
        if missing:
            raise ValueError(f"inner_optimizer tensors at positions {missing} are not parameters of model; the inner "
                             "optimizer must hold model parameters only")
        self._weight_names = tuple(names[id(p)] for p in self._weights)
        self._hparam_names = tuple(names.get(id(a), f"outer_optimizer tensor {i}") for i, a in enumerate(self._hparams))
        val_only_mask(self._hparams, val_only_hparams)
        self.val_only_hparams = tuple(val_only_hparams)
        if self.lookahead == "adam":
            AdamWUpdate.from_optimizer(inner_optimizer, self._weights)  # refuses optimizers it cannot model
        self._train_module = _BoundLoss(model, train_loss)
        self._val_module = _BoundLoss(model, val_loss)

    def _loss_at(self, module: _BoundLoss, batch: Any, *, full_precision: bool = False):
        """(W, A) -> loss_fn(model with W substituted, batch); A are the live tensors the loss already uses.

        ``full_precision`` also substitutes float32 copies for the model's float16/bfloat16 parameters and buffers
        (the finite-difference passes: their difference quotient divides the rounding of each pass by 2 e); the
        copies are made once and serve both passes."""
        frozen = _float32_copies(module, self._hparams) if full_precision else {}

        def loss(weights: Tensors, hparams: Tensors) -> Tensor:
            substituted = dict(zip(self._weight_names, weights))
            if full_precision:
                substituted = {**frozen, **_float32(substituted)}
            return functional_call(module, substituted, (batch,))
        return loss

    def _inner_update(self) -> InnerUpdate:
        """The lookahead's model of the step ``inner_optimizer`` is about to take."""
        if self.lookahead == "adam":
            return AdamWUpdate.from_optimizer(self.inner_optimizer, self._weights, lr=self.lr)
        return SGDUpdate(float(self.inner_optimizer.param_groups[0]["lr"] if self.lr is None else self.lr))

    def _meta_due(self) -> bool:
        after_warmup = self.num_steps - self.warmup_steps
        return after_warmup >= 0 and (after_warmup + 1) % self.meta_every == 0

    def step(self, train_batch: Any, val_batch: Any = None, *, step_inner: bool = True) -> dict:
        """One inner step on ``train_batch``, plus a meta step on ``val_batch`` every ``meta_every`` calls.

        ``step_inner=False`` leaves the inner step to the caller: g is added to the weights' ``.grad`` (which then
        hold it, not cleared) and ``inner_optimizer`` is not stepped, so that a training loop that owns the inner
        optimizer (clipping, schedulers, e.g. transformers.Trainer) steps it afterwards. The meta step still uses the
        lookahead of ``inner_optimizer``'s state as it is before that step.

        Returns {"train_loss": float, "meta_step": bool} and, after a meta step, "val_loss" (Lval at W'),
        "hypergrad_norm" (global 2-norm of h), "direct_norm" and "mixed_norm" (global 2-norms of its direct and
        mixed terms); h and its two terms are kept as :attr:`last_result` (a :class:`~hypergrad.OneStepHypergrad`)."""
        meta = self._meta_due()
        if meta and val_batch is None:
            raise ValueError("a meta step is due on this call; pass val_batch")
        train_fn = self._loss_at(self._train_module, train_batch)
        replayed = meta and self.method == "finite_difference"
        rng_state = capture_rng_state(t.device for t in self._weights + self._hparams) if replayed else None
        loss = check_scalar_loss("train_loss", train_fn(self._weights, self._hparams))
        if not bool(torch.isfinite(loss)):
            raise NonFiniteHypergradError(f"train_loss is {loss.item()}; lower the learning rate or check the data")
        grads = training_gradients(loss, self._weights, self._hparams if meta else (),
                                   create_graph=meta and self.method == "exact",
                                   val_only_hparams=self.val_only_hparams if meta else (),
                                   param_names=self._weight_names, hparam_names=self._hparam_names)
        stats = {"train_loss": loss.item(), "meta_step": meta}
        if meta:
            fd_train_fn = self._loss_at(self._train_module, train_batch, full_precision=replayed)
            result = one_step_hypergrad(fd_train_fn, self._loss_at(self._val_module, val_batch), self._weights,
                                        self._hparams, grads, method=self.method, fd_radius=self.fd_radius,
                                        rng_state=rng_state, val_only_hparams=self.val_only_hparams,
                                        inner_update=self._inner_update())
            self.last_result = result
            hypergrads = result.hypergrad
            stats.update(val_loss=result.val_loss.item(), hypergrad_norm=global_norm(hypergrads).item(),
                         direct_norm=global_norm(result.direct).item(), mixed_norm=global_norm(result.mixed).item())
        if step_inner:
            _apply(self.inner_optimizer, self._weights, grads)
        else:
            _accumulate(self._weights, grads)
        if meta:
            _apply(self.outer_optimizer, self._hparams, hypergrads)
        self.num_steps += 1
        return stats

    def state_dict(self) -> dict:
        """Both optimizers' states and the step counter (enough, with the model's state, for an exact resume)."""
        return {"inner_optimizer": self.inner_optimizer.state_dict(),
                "outer_optimizer": self.outer_optimizer.state_dict(), "num_steps": self.num_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        missing = {"inner_optimizer", "outer_optimizer", "num_steps"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}; pass what BilevelOptimizer.state_dict() returned")
        self.inner_optimizer.load_state_dict(state_dict["inner_optimizer"])
        self.outer_optimizer.load_state_dict(state_dict["outer_optimizer"])
        num_steps = state_dict["num_steps"]
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"state_dict['num_steps'] must be an int >= 0, got {num_steps!r}")
        self.num_steps = num_steps


_HALF = (torch.float16, torch.bfloat16)


def _float32(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The float16/bfloat16 entries cast to float32, the others unchanged."""
    return {name: t.float() if t.dtype in _HALF else t for name, t in tensors.items()}


def _float32_copies(module: nn.Module, keep: Tensors) -> dict[str, Tensor]:
    """{name: float32 copy} of every float16/bfloat16 parameter and buffer of ``module`` except those in ``keep``
    (the hyper-parameters, which the passes differentiate)."""
    kept = {id(t) for t in keep}
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return _float32({name: t.detach() for name, t in tensors if t.dtype in _HALF and id(t) not in kept})


def _apply(optimizer: torch.optim.Optimizer, tensors: Tensors, grads: Tensors) -> None:
    """Set .grad = grads, take one optimizer step, clear the .grad again."""
    for t, g in zip(tensors, grads):
        t.grad = g.detach()
    optimizer.step()
    for t in tensors:
        t.grad = None


def _accumulate(tensors: Tensors, grads: Tensors) -> None:
    """Add grads to each tensor's .grad (set it where there is none)."""
    for t, g in zip(tensors, grads):
        t.grad = g.detach().clone() if t.grad is None else t.grad + g.detach()
