"""AutoLoRA rank search, paper Algorithm 1.

The training set is split 1:1 into D_tr and D_val (paper §5.2). Each step:

1. W <- AdamW step on grad_W Ltr(W, beta)                                   (LoRA factors + task head, on D_tr)
2. beta <- AdamW step on d/dbeta Lval(W - eta grad_W Ltr(W, beta), beta)   (selection logits, on D_val)

with the hypergradient of step 2 computed by :class:`hypergrad.BilevelOptimizer` (``method`` finite_difference,
exact or first_order; eta defaults to the weights' learning rate, and to 0 for first_order). Afterwards the rank
of layer l is #{j : alpha_lj >= threshold} (paper §4.4), read by :func:`autolora.ranks`.

Defaults follow paper §5.1: weights lr 1e-4, selection lr 1e-3, batch 16. Weight decay (not stated in the paper) is
0.01 on the weights and 0 on the selection logits: decay would pull beta towards 0, i.e. alpha towards uniform, and so
bias every layer towards the full rank k.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

import hypergrad

from .checkpoint import load_trainable_state, run_resumable, trainable_state
from .data import split_in_two
from .model import alphas as read_alphas, ranks as read_ranks, selection_parameters
from .training import batch_stream, model_loss, to_device, weight_parameters

METHODS = ("finite_difference", "exact", "first_order")


@dataclass
class SearchResult:
    """Outcome of :func:`search`.

    ranks: module name -> searched rank. alphas: module name -> final selection variables (k,).
    history: {"steps": [s_0, s_1, ...], "alphas": {module name: tensor (len(steps), k)}}, alpha recorded before the
    first step (s_0 = 0), every ``record_every`` steps and after the last step.
    train_losses: Ltr per step. val_losses: Lval(W') per meta step.
    """
    ranks: dict[str, int]
    alphas: dict[str, torch.Tensor]
    history: dict
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)


class AlphaRecorder:
    """Collects snapshots of every module's alpha; :meth:`as_history` stacks them into the documented format."""

    def __init__(self):
        self.steps: list[int] = []
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def record(self, step: int, model: torch.nn.Module) -> None:
        if self.steps and self.steps[-1] == step:
            return
        self.steps.append(step)
        self.snapshots.append({name: a.detach().cpu().clone() for name, a in read_alphas(model).items()})

    def as_history(self) -> dict:
        names = self.snapshots[0].keys() if self.snapshots else ()
        return {"steps": list(self.steps),
                "alphas": {name: torch.stack([snap[name] for snap in self.snapshots]) for name in names}}

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "snapshots": list(self.snapshots)}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.snapshots = list(state["steps"]), list(state["snapshots"])


def search(model: torch.nn.Module, train_dataset, *, steps: int, method: str = "finite_difference",
           batch_size: int = 16, weight_lr: float = 1e-4, selection_lr: float = 1e-3, weight_decay: float = 0.01,
           eta: float | None = None, meta_every: int = 1, fd_radius: float = 0.01, seed: int = 0,
           record_every: int = 1, tokenizer=None, checkpoint_path: str | os.PathLike | None = None,
           checkpoint_every: int = 50, resume: bool = False, callback: Callable[[int, dict], None] | None = None,
           progress: bool = False) -> SearchResult:
    """Learn the selection logits of an AutoLoRA model (``get_autolora_model``) and read off per-layer ranks.

    ``train_dataset`` is the whole training set; it is split 1:1 into D_tr/D_val with ``seed``; D_tr batches are
    drawn by ``make_loader(..., seed=seed)``, D_val batches with ``seed + 1``. ``eta`` is the unrolled step size
    (None: ``weight_lr``, or 0 for ``method="first_order"``: the paper's "eta = 0" ablation,
    h = dLval(W, beta)/dbeta). A fresh search seeds torch's global RNG (dropout) with ``seed``. With
    ``checkpoint_path`` the search checkpoints every ``checkpoint_every`` steps and on Ctrl-C, and ``resume=True``
    continues to the identical result.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    for name, value in (("batch_size", batch_size), ("meta_every", meta_every), ("record_every", record_every)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    betas = list(selection_parameters(model))
    if not betas:
        raise ValueError("the model has no selection logits: inject it with get_autolora_model(model, "
                         "AutoLoRAConfig(selection='softmax'|'sigmoid'|'none')) before searching")
    weights = weight_parameters(model)
    d_tr, d_val = split_in_two(train_dataset, seed)
    device = next(model.parameters()).device
    train_stream = batch_stream(model, d_tr, batch_size, seed=seed, tokenizer=tokenizer)
    val_stream = batch_stream(model, d_val, batch_size, seed=seed + 1, tokenizer=tokenizer)
    inner = torch.optim.AdamW(weights, lr=weight_lr, weight_decay=weight_decay)
    outer = torch.optim.AdamW(betas, lr=selection_lr, weight_decay=0.0)
    if eta is None:
        eta = 0.0 if method == "first_order" else weight_lr
    bilevel = hypergrad.BilevelOptimizer(model, inner, outer, model_loss, model_loss, method=method, lr=eta,
                                         fd_radius=fd_radius, meta_every=meta_every)
    recorder = AlphaRecorder()
    train_losses: list[float] = []
    val_losses: list[float] = []

    def step(t: int) -> dict:
        model.train()
        stats = bilevel.step(to_device(next(train_stream), device), to_device(next(val_stream), device))
        train_losses.append(stats["train_loss"])
        if stats["meta_step"]:
            val_losses.append(stats["val_loss"])
        if (t + 1) % record_every == 0 or t + 1 == steps:
            recorder.record(t + 1, model)
        return stats

    def get_state() -> dict:
        return {"trainable": trainable_state(model), "bilevel": bilevel.state_dict(),
                "train_stream": train_stream.state_dict(), "val_stream": val_stream.state_dict(),
                "recorder": recorder.state_dict(), "train_losses": list(train_losses),
                "val_losses": list(val_losses)}

    def set_state(state: dict) -> None:
        load_trainable_state(model, state["trainable"])
        bilevel.load_state_dict(state["bilevel"])
        train_stream.load_state_dict(state["train_stream"])
        val_stream.load_state_dict(state["val_stream"])
        recorder.load_state_dict(state["recorder"])
        train_losses[:] = state["train_losses"]
        val_losses[:] = state["val_losses"]

    if not resume:
        recorder.record(0, model)
    run_resumable(step, steps, seed=seed, get_state=get_state, set_state=set_state, checkpoint_path=checkpoint_path,
                  checkpoint_every=checkpoint_every, resume=resume, callback=callback, progress=progress,
                  description="search")
    return SearchResult(ranks=read_ranks(model), alphas={n: a.detach().cpu() for n, a in read_alphas(model).items()},
                        history=recorder.as_history(), train_losses=train_losses, val_losses=val_losses)
