"""AutoLoRA rank search: paper Algorithm 1, the settings that decide whether it learns, and its diagnostics.

The training set is split 1:1 into D_tr and D_val (paper §5.2). Each of ``steps`` steps:

1. W <- inner step (AdamW) on g = grad_W Ltr(W, beta) on a D_tr batch      (LoRA factors + task head)
2. after ``warmup_steps`` steps, every ``meta_every``-th step: beta <- outer step on the hypergradient
   h = d/dbeta Lval(W', beta) on a D_val batch, W' the lookahead of step 1 (selection logits)

computed by :class:`hypergrad.BilevelOptimizer`. ``method`` picks how the mixed second-order term of h is formed
("finite_difference" | "exact") or drops it ("first_order": h = grad_beta Lval(W', beta), W' held constant).
``lookahead`` models step 1: "sgd" is the paper's W' = W - eta g; "adam" is the AdamW step the inner optimiser is
about to take. ``eta=0`` is the paper's "AutoLoRA eta = 0" ablation (W' = W, h = grad_beta Lval(W, beta)).

The validation loss is evaluated with dropout off (eval mode): it is the loss of the model as it will be used, and
dropout noise on D_val only adds variance to h. ``val_dropout=True`` evaluates it in train mode instead. The
training passes (including the finite-difference passes, which replay the step's random state) keep dropout.

Presets (:data:`PRESETS`): "paper" is paper §5.1 (weights lr 1e-4, selection lr 1e-3, no warm-up, SGD lookahead,
AdamW on the logits, finite-difference mixed term); "default" (weights lr 1e-2, selection lr 1e-2, 50 warm-up steps,
SGD lookahead, AdamW on the logits, first order) is the one setting whose recovery of planted ranks was positive on
every seed in docs/planted_ranks.md (see docs/search.md for how weak that is); the mixed term is under 2% of h at
these settings and buys no accuracy that the measurements can see, so the default drops it, at about half the
meta-step cost (docs/search.md, "Defaults"). Explicit arguments override the preset. Weight decay is 0.01 on the
weights and 0 on the logits (decay pulls beta to 0, alpha to uniform).

Afterwards the rank of layer l is #{j : alpha_lj >= threshold} (paper §4.4); :class:`SearchResult` also carries
each component's margin and the budget readout (:mod:`autolora.readout`).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

import hypergrad

from .checkpoint import load_trainable_state, trainable_state
from .data import model_inputs, split_in_two
from .model import (adapter_branches, alphas as read_alphas, energies as read_energies, ranks as read_ranks,
                    stored_config)
from .readout import (DEFAULT_BUDGET_SCORE, alpha_separation, budget_ranks, check_score, component_margins,
                      separation_verdict)
from .training import batch_stream, model_loss, run_resumable, to_device, weight_parameters

METHODS = hypergrad.UNROLLED_METHODS
LOOKAHEADS = ("sgd", "adam")
SELECTION_OPTIMIZERS = ("adamw", "sgd")
# A search whose training loss over its last 20 steps is above this fraction of its first 20 steps' "barely trained".
BARELY_TRAINED = 0.9
# A search that gave back more than this share of what its training loss had gained "lost its fit".
LOST_FIT = 0.25
LOSS_WINDOW = 20


@dataclass(frozen=True)
class SearchSettings:
    """The settings a preset fixes: weights and selection learning rates, inner steps before the first meta step,
    the lookahead model of the inner step, the optimiser of the selection logits, and how the hypergradient's mixed
    term is formed."""
    weight_lr: float
    selection_lr: float
    warmup_steps: int
    lookahead: str
    selection_optimizer: str
    method: str


PRESETS = {
    "paper": SearchSettings(weight_lr=1e-4, selection_lr=1e-3, warmup_steps=0, lookahead="sgd",
                            selection_optimizer="adamw", method="finite_difference"),
    "default": SearchSettings(weight_lr=1e-2, selection_lr=1e-2, warmup_steps=50, lookahead="sgd",
                              selection_optimizer="adamw", method="first_order"),
}


@dataclass
class SearchResult:
    """Outcome of :func:`search`.

    ranks: module name -> rank read by the paper's per-layer threshold. alphas: module name -> final alpha (k,).
    history: {"steps": [s_0, s_1, ...], "alphas": {module name: tensor (len(steps), k)}}, alpha recorded before the
    first step (s_0 = 0), every ``record_every`` steps and after the last step.
    train_losses: Ltr per step. val_losses: Lval(W') per meta step.
    diagnostics: per meta step "step", "val_loss", "hypergrad_norm" {module: [...]} (norm of h over the module's
    logits), "direct_norm" and "mixed_norm" (global norms of the two terms of h); see :meth:`summary`.
    selection: the selection mode (its threshold defines the margins).
    energies: module name -> singular values of the searched update B diag(s alpha) A at the end of the search
    (:func:`autolora.readout.component_energies`), the scores of the energy budget readout.
    """
    ranks: dict[str, int]
    alphas: dict[str, torch.Tensor]
    history: dict
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)
    selection: str = "softmax"
    energies: dict[str, torch.Tensor] = field(default_factory=dict)

    def margins(self, tail: float = 0.5) -> dict[str, torch.Tensor]:
        """Per module the margin of every component (:func:`autolora.readout.component_margins`)."""
        return {name: component_margins(h, self.selection, tail=tail) for name, h in self.history["alphas"].items()}

    def budget_ranks(self, budget: int, score: str = DEFAULT_BUDGET_SCORE) -> dict[str, int]:
        """Ranks of the ``budget`` best-scored components over all modules, at least one per module; ``score`` is
        "energy" (the default: the singular values of each module's searched update) or "margin" (each component's
        margin); see :mod:`autolora.readout`."""
        check_score(score)
        if score == "energy" and not self.energies:
            raise ValueError("this result has no update energies (it was not made by RankSearcher.result)")
        return budget_ranks(self.margins() if score == "margin" else self.energies, budget)

    def summary(self) -> dict:
        """Plain-type summary: ranks, per-module alpha separation, every component's margin and each module's weakest,
        the update energies, the verdict (none with fewer than 3 alpha records), the losses at the start and end of
        the search, and the mixed term's share ||mixed|| / (||direct|| + ||mixed||).

        The verdict also says when the searched model did not learn the task or did not keep it
        (:func:`training_verdict`): its alphas then rank components of a model that has not learned the task."""
        records = len(self.history["steps"])
        margins = self.margins() if records >= 3 else {}
        verdict = separation_verdict(margins) if margins else {
            "weakest_margin": {}, "separated_share": None,
            "verdict": f"no verdict: {records} alpha records, margins need at least 3 (search longer)"}
        first, last = _mean_of(self.train_losses[:LOSS_WINDOW]), _mean_of(self.train_losses[-LOSS_WINDOW:])
        verdict["verdict"] += training_verdict(self.train_losses)
        diag = self.diagnostics
        direct, mixed = diag.get("direct_norm", []), diag.get("mixed_norm", [])
        shares = [m / (d + m) for d, m in zip(direct, mixed) if d + m > 0]
        return {"ranks": dict(self.ranks), "total_rank": sum(self.ranks.values()),
                "alpha_separation": {n: alpha_separation(a, self.selection) for n, a in self.alphas.items()},
                "margins": {n: m.tolist() for n, m in margins.items()}, **verdict,
                "energies": {n: e.tolist() for n, e in self.energies.items()},
                "train_loss_first": first, "train_loss_last": last, "val_loss_last": _mean_of(self.val_losses[-20:]),
                "mixed_share_mean": _mean_of(shares), "meta_steps": len(diag.get("step", []))}


def training_verdict(losses: list[float]) -> str:
    """The verdict's clause on the searched model ("" when it learned and kept its fit, or with fewer than 40 steps).

    With first, lowest and last the mean training losses of the first 20 steps, of the lowest of the consecutive
    20-step blocks and of the last 20 steps: "lost its fit" when the loss fell (lowest < BARELY_TRAINED * first) and
    the search gave back more than LOST_FIT of that gain (last - lowest > LOST_FIT * (first - lowest); e.g. the
    default weights lr 1e-2 searched 600 steps on 250 examples, docs/search_collapse.md); else "barely trained" when
    last > BARELY_TRAINED * first (e.g. the paper's weights lr 1e-4 on MiniLM)."""
    if len(losses) < 2 * LOSS_WINDOW:
        return ""
    first, last = _mean_of(losses[:LOSS_WINDOW]), _mean_of(losses[-LOSS_WINDOW:])
    lowest = min(_mean_of(losses[i:i + LOSS_WINDOW]) for i in range(0, len(losses) - LOSS_WINDOW + 1, LOSS_WINDOW))
    if lowest < BARELY_TRAINED * first and last - lowest > LOST_FIT * (first - lowest):
        return (f"; the searched model learned and lost its fit (training loss {first:.3g} -> {lowest:.3g} -> "
                f"{last:.3g} over the first, lowest and last {LOSS_WINDOW} steps): the later alphas rank components "
                "of a model that no longer fits; search shorter or at a lower weights lr")
    if last > BARELY_TRAINED * first:
        return (f"; the searched model barely trained (training loss {first:.3g} -> {last:.3g} over the first and "
                f"last {LOSS_WINDOW} steps): try another weights lr")
    return ""


def _mean_of(values) -> float | None:
    return float(sum(values) / len(values)) if values else None


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


def resolve_settings(preset: str, **overrides) -> SearchSettings:
    """The preset's settings with every override that is not None applied, checked."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    settings = dataclasses.replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    for name in ("weight_lr", "selection_lr"):
        value = getattr(settings, name)
        if not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(settings.warmup_steps, int) or settings.warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {settings.warmup_steps!r}")
    if settings.lookahead not in LOOKAHEADS:
        raise ValueError(f"lookahead must be one of {LOOKAHEADS}, got {settings.lookahead!r}")
    if settings.selection_optimizer not in SELECTION_OPTIMIZERS:
        raise ValueError(f"selection_optimizer must be one of {SELECTION_OPTIMIZERS}, got "
                         f"{settings.selection_optimizer!r}")
    if settings.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {settings.method!r}")
    return settings


def eval_mode_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """:func:`~autolora.training.model_loss` with the model in eval mode (no dropout), its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        return model_loss(model, batch)
    finally:
        model.train(was_training)


def _selection_optimizer(name: str, betas, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(betas, lr=lr)
    return torch.optim.AdamW(betas, lr=lr, weight_decay=0.0)


def selection_branches(model: torch.nn.Module) -> dict:
    """{name: branch} of the branches with selection logits (ValueError when there are none: nothing to search)."""
    branches = {name: b for name, b in adapter_branches(model).items() if b.beta is not None}
    if not branches:
        raise ValueError("the model has no selection logits: inject it with get_autolora_model(model, "
                         "AutoLoRAConfig(selection='softmax'|'sigmoid'|'none')) before searching")
    return branches


class RankSearcher:
    """The stateful stepper of a search: :meth:`step` is the one place a meta step happens.

    It owns the selection logits' optimiser, the inner optimiser (AdamW on the weights, unless ``inner_optimizer``
    is given, e.g. the one a ``transformers.Trainer`` built), the :class:`hypergrad.BilevelOptimizer` that ties them,
    the alpha history and the diagnostics. :func:`search` drives it with its own batch streams;
    :class:`autolora.SearchTrainer` drives it from ``Trainer.training_step``. Settings as in :func:`search`.
    """

    def __init__(self, model: torch.nn.Module, *, preset: str = "default", method: str | None = None,
                 weight_lr: float | None = None, selection_lr: float | None = None, warmup_steps: int | None = None,
                 lookahead: str | None = None, selection_optimizer: str | None = None, eta: float | None = None,
                 weight_decay: float = 0.01, meta_every: int = 1, fd_radius: float = 0.01, val_dropout: bool = False,
                 record_every: int = 1, inner_optimizer: torch.optim.Optimizer | None = None):
        self.settings = resolve_settings(preset, weight_lr=weight_lr, selection_lr=selection_lr,
                                         warmup_steps=warmup_steps, lookahead=lookahead,
                                         selection_optimizer=selection_optimizer, method=method)
        for name, value in (("meta_every", meta_every), ("record_every", record_every)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.branches = selection_branches(model)
        self.model = model
        self.record_every = record_every
        self.device = next(model.parameters()).device
        betas = [b.beta for b in self.branches.values()]
        self.inner_optimizer = inner_optimizer if inner_optimizer is not None else torch.optim.AdamW(
            weight_parameters(model), lr=self.settings.weight_lr, weight_decay=weight_decay)
        self.outer_optimizer = _selection_optimizer(self.settings.selection_optimizer, betas,
                                                    self.settings.selection_lr)
        self.bilevel = hypergrad.BilevelOptimizer(model, self.inner_optimizer, self.outer_optimizer, model_loss,
                                                  model_loss if val_dropout else eval_mode_loss,
                                                  method=self.settings.method,
                                                  lr=eta, fd_radius=fd_radius, meta_every=meta_every,
                                                  lookahead=self.settings.lookahead,
                                                  warmup_steps=self.settings.warmup_steps)
        self.recorder = AlphaRecorder()
        self.recorder.record(0, model)
        self.train_losses: list[float] = []
        self.val_losses: list[float] = []
        self.diagnostics = {"step": [], "val_loss": [], "direct_norm": [], "mixed_norm": [],
                            "hypergrad_norm": {name: [] for name in self.branches}}

    @property
    def num_steps(self) -> int:
        """Steps taken so far."""
        return self.bilevel.num_steps

    def step(self, train_batch: Mapping[str, torch.Tensor], val_batch: Mapping[str, torch.Tensor] | None, *,
             step_inner: bool = True) -> dict:
        """One search step: the inner step on ``train_batch`` (a D_tr batch) and, when one is due, the meta step on
        ``val_batch`` (a D_val batch); batches are moved to the model's device. ``step_inner=False`` leaves the
        inner optimiser's step to the caller (the weights' ``.grad`` hold g; see
        :meth:`hypergrad.BilevelOptimizer.step`). Returns the step's stats (train_loss, meta_step, and after a meta
        step val_loss and the hypergradient norms)."""
        self.model.train()
        val_batch = None if val_batch is None else to_device(val_batch, self.device)
        stats = self.bilevel.step(to_device(train_batch, self.device), val_batch, step_inner=step_inner)
        done = self.num_steps
        self.train_losses.append(stats["train_loss"])
        if stats["meta_step"]:
            self.val_losses.append(stats["val_loss"])
            self.diagnostics["step"].append(done)
            for key in ("val_loss", "direct_norm", "mixed_norm"):
                self.diagnostics[key].append(stats[key])
            for name, h in zip(self.branches, self.bilevel.last_result.hypergrad):
                self.diagnostics["hypergrad_norm"][name].append(float(h.norm()))
        if done % self.record_every == 0:
            self.recorder.record(done, self.model)
        return stats

    def result(self) -> SearchResult:
        """The search so far: ranks and alphas now, the alpha history (including the current step), losses and
        diagnostics."""
        self.recorder.record(self.num_steps, self.model)
        return SearchResult(ranks=read_ranks(self.model),
                            alphas={n: a.detach().cpu() for n, a in read_alphas(self.model).items()},
                            history=self.recorder.as_history(), train_losses=list(self.train_losses),
                            val_losses=list(self.val_losses), diagnostics=copy.deepcopy(self.diagnostics),
                            selection=stored_config(self.model).selection,
                            energies=read_energies(self.model))

    def state_dict(self) -> dict:
        """Everything :meth:`step` mutates besides the model's parameters: both optimisers, the step counter, the
        alpha history, the losses and the diagnostics."""
        return {"bilevel": self.bilevel.state_dict(), "recorder": self.recorder.state_dict(),
                "train_losses": list(self.train_losses), "val_losses": list(self.val_losses),
                "diagnostics": copy.deepcopy(self.diagnostics)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (the model's parameters are restored separately)."""
        self.bilevel.load_state_dict(state["bilevel"])
        self.recorder.load_state_dict(state["recorder"])
        self.train_losses[:] = state["train_losses"]
        self.val_losses[:] = state["val_losses"]
        self.diagnostics.clear()
        self.diagnostics.update(copy.deepcopy(state["diagnostics"]))


def search(model: torch.nn.Module, train_dataset, *, steps: int, preset: str = "default",
           method: str | None = None, weight_lr: float | None = None, selection_lr: float | None = None,
           warmup_steps: int | None = None, lookahead: str | None = None, selection_optimizer: str | None = None,
           eta: float | None = None, batch_size: int = 16, weight_decay: float = 0.01, meta_every: int = 1,
           fd_radius: float = 0.01, val_dropout: bool = False, seed: int = 0, record_every: int = 1, tokenizer=None,
           data_collator=None, text_column: str | tuple[str, str] | None = None, max_length: int = 128,
           checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int = 50, resume: bool = False,
           callback: Callable[[int, dict], None] | None = None, progress: bool = False) -> SearchResult:
    """Learn the selection logits of an AutoLoRA model (``get_autolora_model``) and read off per-layer ranks.

    ``train_dataset`` is the whole training set; it is split 1:1 into D_tr/D_val with ``seed``; D_tr batches are
    drawn with ``seed``, D_val batches with ``seed + 1``, dropout from ``seed`` (the caller's random state is left
    untouched). ``preset`` gives ``weight_lr``, ``selection_lr``, ``warmup_steps``, ``lookahead``,
    ``selection_optimizer`` and ``method`` unless they are passed. ``eta`` is the SGD lookahead's step size (None:
    the weights' learning rate; 0: the paper's eta = 0 ablation; with ``lookahead="adam"`` it replaces the Adam
    step's lr).
    With ``checkpoint_path`` the search checkpoints every ``checkpoint_every`` steps and on Ctrl-C, and
    ``resume=True`` continues to the identical result. Each step is one :meth:`RankSearcher.step`.

    ``train_dataset`` is a tokenised ``datasets.Dataset`` (columns other than the model's are ignored, ``label`` is
    renamed ``labels``), an untokenised one with ``tokenizer`` (``text_column``, or the first of text, sentence,
    sentence1/sentence2, ... present, tokenised with truncation to ``max_length``), a torch Dataset of dict items,
    or a DataLoader (:func:`autolora.data.model_inputs`). ``data_collator`` (e.g.
    ``transformers.DataCollatorWithPadding``) collates the rows of a dataset instead of the built-in padding.
    A DataLoader's batches are used as they come (``batch_size`` unused) and alternate between the halves: D_tr,
    D_val, D_tr, ... (1:1 at batch level, not a split of the examples: with a shuffling loader, or an odd number of
    batches per epoch, an example serves in both halves over the epochs). Checkpointing with a DataLoader needs
    one whose order comes from its ``generator`` (see :func:`autolora.training.batch_stream`).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    searcher = RankSearcher(model, preset=preset, method=method, weight_lr=weight_lr, selection_lr=selection_lr,
                            warmup_steps=warmup_steps, lookahead=lookahead, selection_optimizer=selection_optimizer,
                            eta=eta, weight_decay=weight_decay, meta_every=meta_every, fd_radius=fd_radius,
                            val_dropout=val_dropout, record_every=record_every)
    rows = model_inputs(train_dataset, tokenizer=tokenizer, text_column=text_column, max_length=max_length)
    streams = dict(tokenizer=tokenizer, data_collator=data_collator, checkpointed=checkpoint_path is not None or resume)
    if isinstance(rows, torch.utils.data.DataLoader):  # one stream drawn in turn: D_tr, D_val, D_tr, ...
        train_stream = val_stream = batch_stream(model, rows, batch_size, seed=seed, **streams)
    else:
        d_tr, d_val = split_in_two(rows, seed)
        train_stream = batch_stream(model, d_tr, batch_size, seed=seed, **streams)
        val_stream = batch_stream(model, d_val, batch_size, seed=seed + 1, **streams)

    def get_state() -> dict:
        return {"trainable": trainable_state(model), "searcher": searcher.state_dict(),
                "train_stream": train_stream.state_dict(), "val_stream": val_stream.state_dict()}

    def set_state(state: dict) -> None:
        load_trainable_state(model, state["trainable"])
        searcher.load_state_dict(state["searcher"])
        train_stream.load_state_dict(state["train_stream"])
        val_stream.load_state_dict(state["val_stream"])

    run_resumable(lambda t: searcher.step(next(train_stream), next(val_stream)), steps, seed=seed,
                  get_state=get_state, set_state=set_state, checkpoint_path=checkpoint_path,
                  checkpoint_every=checkpoint_every, resume=resume, callback=callback, progress=progress,
                  description="search")
    return searcher.result()
