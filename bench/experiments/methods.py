"""The suite's methods: each one allocates ranks over the target modules, then every allocation is retrained with the
same recipe (:data:`RECIPE`: same steps, learning rate, batches and seed; ``autolora.build_retrain_model`` +
``autolora.train``) and evaluated once on the test split.

Budget. The reference is uniform LoRA r = 4 on the default targets (query and value of MiniLM's 6 layers, M = 12
modules): P_ref = sum_m 4 (d_in,m + d_out,m) trainable LoRA parameters (36,864 on MiniLM). The budget-matched methods
hold 4 M rank-1 components in all, so with equal module shapes P = P_ref; each result records P / P_ref, and
``budget_matched`` methods must keep it within 5%.

* ``uniform_r{1,2,4,8}``: rank r on every module.
* ``autolora``, ``autolora_paper``: :func:`search_allocation` (``autolora.search`` with preset "default" or
  "paper"), ranks by the budget readout (``SearchResult.budget_ranks``) with N = 4 M components. Every AutoLoRA row
  forms the hypergradient by finite differences unless it says otherwise (the default preset's method when the suite
  started; the default preset now drops the mixed term, which is the ``autolora_first_order`` row). Context rows with
  one setting changed from ``autolora``: ``autolora_sigmoid`` (sigmoid selection), ``autolora_sigmoid_lr1e-3``
  (the same at weights lr 1e-3), and the paper's ablations ``autolora_eta0`` (eta = 0, W' = W), ``autolora_none``
  (no constraint on alpha) and ``autolora_exact`` (the exact hypergradient, on eager attention); and
  ``autolora_first_order`` (the first-order hypergradient: h without the mixed term, one pass fewer per meta step
  than finite differences); ``autolora_sigmoid_energy`` reads its ranks by the energy budget readout (the singular
  values of each module's searched update, ``autolora.readout.component_energies``) after a first-order sigmoid
  search at weights lr 1e-3; ``autolora_energy`` is the default as ``autolora run --budget N`` ships it (first order,
  energy readout; also on ``roget``, a task where rank may matter); ``autolora_long_energy`` is the default as it
  ships (first order) searched 6 times as long (900 steps) and read by the energy budget readout (on
  ``rotten_tomatoes_500`` only: its cells there took over 15 min each).
* ``value_only``, ``query_only`` (context, on ``roget``): a fixed placement, every one of the 4 M components on
  the value (query) projections (r = 8 each on MiniLM), none on the others: how far a placement alone can move the
  score, at the budget, on a task where rank matters.
* ``shuffled``: AutoLoRA's ranks of the same task and seed (read from its cached result), permuted across modules
  with the seed (``autolora.readout.shuffled_ranks``): the same histogram, the allocation destroyed.
* ``eva``: PEFT's EVA (``get_eva_state_dict``, rho 2, r = 4, no label mask) on training batches; its per-module
  component counts are the ranks. ``eva_init`` (context) trains the PEFT EVA model itself, with EVA's SVD
  initialisation of lora_A, on the same batches, steps and learning rate.
* ``adalora``: PEFT's AdaLoRA (init_r 8, target_r 4) trained for ``search_steps`` steps with ``update_and_allocate``
  after every optimiser step (cubic budget schedule, 10% warm-up, final 20% at the target budget); the kept
  triplets of its final ``rank_pattern`` are the ranks.
* ``full_ft`` (context): every weight trained, AdamW at ``full_ft_lr``.
* ``head_only`` (context): the task head alone trained (no LoRA, every other weight frozen), AdamW at ``lr``: what
  the tasks score without any adapter, the ceiling on what an allocation of adapter rank can change.

A module allocated rank 0 (possible with EVA and AdaLoRA) is left unadapted in the retraining.
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

import autolora
from autolora.checkpoint import isolated_rng, seed_rng
from autolora.config import AutoLoRAConfig
from autolora.data import TaskData, make_loader
from autolora.loading import use_eager_attention
from autolora.model import find_heads, find_target_modules, is_within
from autolora.plots import layer_and_projection
from autolora.readout import shuffled_ranks
from autolora.training import batch_stream, model_loss

from . import cache, tasks

LORA_FACTOR = re.compile(r"(^|\.)lora_[AB](\.|$)")
BUDGET_TOLERANCE = 0.05
HEADLINE_SEEDS = (0, 1, 2, 3, 4)
CONTEXT_SEEDS = (0, 1, 2)
CONTEXT_TASKS = tuple(name for name, spec in tasks.TASKS.items() if spec.max_train_examples is not None)
ALL_TASKS = tuple(tasks.TASKS)
PEFT_TASK_TYPES = {"classification": "SEQ_CLS", "token-classification": "TOKEN_CLS"}


@dataclass(frozen=True)
class Recipe:
    """Everything a cell's numbers depend on besides the task, method and seed (recorded in every result).

    One retraining step is AdamW(lr, weight_decay) on a shuffled batch of ``batch_size`` training examples of at
    most ``max_length`` tokens. ``search_steps`` is the length of AutoLoRA's search and of AdaLoRA's allocation run.
    """

    max_length: int = 64
    batch_size: int = 16
    retrain_steps: int = 300
    lr: float = 1e-3
    weight_decay: float = 0.01
    search_steps: int = 150
    search_max_rank: int = 8
    reference_rank: int = 4
    full_ft_lr: float = 5e-5
    eva_rho: float = 2.0
    adalora_init_r: int = 8

    def as_dict(self) -> dict:
        return asdict(self)


RECIPE = Recipe()


class MissingInput(Exception):
    """A cell that needs another cell's cached result (the shuffled control needs AutoLoRA's ranks)."""


@dataclass
class Cell:
    """What a method needs to run one (task, seed): the data, the recipe, the cache, and a clock of its phases."""

    task: tasks.TaskSpec
    seed: int
    data: TaskData
    tokenizer: object
    recipe: Recipe
    results_root: str
    seconds: dict[str, float] = field(default_factory=dict)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Add the block's wall time to ``seconds[name]``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def base_model(self) -> torch.nn.Module:
        """A fresh pretrained model with the task head drawn from the seed; records the target modules' shapes."""
        model = tasks.load_model(self.data, self.seed)
        if not self.shapes:
            self.shapes = target_shapes(model)
        return model

    def loader(self):
        """A DataLoader of shuffled training batches in the recipe's order (the order ``autolora.train`` draws
        them in)."""
        return make_loader(self.data.train, self.recipe.batch_size, shuffle=True, seed=self.seed,
                           tokenizer=self.tokenizer)


@dataclass
class Outcome:
    """A method's trained model (evaluated by the runner), its per-module ranks (None without LoRA) and search
    diagnostics."""

    model: torch.nn.Module
    ranks: dict[str, int] | None
    search: dict | None = None


@dataclass(frozen=True)
class Method:
    """A row of the suite. ``headline``: 5 seeds on every task, run first (the other rows: 3 seeds);
    ``budget_matched``: must train P_ref +- 5%; ``allocates``: its ranks differ across modules (rank stability and
    heatmaps); ``on_tasks``: the tasks the row runs on, with ``tasks_reason`` saying why, where that is not the
    default (every task for a headline row, the low-data tasks :data:`CONTEXT_TASKS` for the others, which keeps
    the suite's wall time down)."""

    name: str
    run: Callable[[Cell], Outcome]
    headline: bool
    budget_matched: bool
    allocates: bool
    description: str
    on_tasks: tuple[str, ...] | None = None
    tasks_reason: str = ""

    def __post_init__(self):
        unknown = sorted(set(self.on_tasks or ()) - set(tasks.TASKS))
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown tasks {unknown}; "
                             f"the suite's tasks: {', '.join(tasks.TASKS)}")

    @property
    def seeds(self) -> tuple[int, ...]:
        return HEADLINE_SEEDS if self.headline else CONTEXT_SEEDS

    @property
    def task_names(self) -> tuple[str, ...]:
        """The tasks the suite runs this row on, in the suite's order."""
        if self.on_tasks is not None:
            return tuple(name for name in tasks.TASKS if name in self.on_tasks)
        return ALL_TASKS if self.headline else CONTEXT_TASKS


def target_names(model: torch.nn.Module) -> list[str]:
    """The default LoRA targets of ``model`` (query/value for BERT), as autolora names them."""
    targets = AutoLoRAConfig().resolved_target_modules(model.config.model_type)
    return find_target_modules(model, targets, find_heads(model, None))


def target_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """{target module: (d_in, d_out)} of a model without adapters."""
    return {name: (model.get_submodule(name).in_features, model.get_submodule(name).out_features)
            for name in target_names(model)}


def lora_parameter_count(model: torch.nn.Module) -> int:
    """Number of trainable entries of the LoRA factors (``lora_A``/``lora_B``, autolora's or PEFT's)."""
    return sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and LORA_FACTOR.search(name))


def trainable_parameter_count(model: torch.nn.Module) -> int:
    """Number of trainable entries of every parameter (LoRA factors, task head, or all weights)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def reference_parameter_count(shapes: dict[str, tuple[int, int]], rank: int) -> int:
    """P_ref = sum_m rank * (d_in,m + d_out,m)."""
    return sum(rank * (d_in + d_out) for d_in, d_out in shapes.values())


def retrain(cell: Cell, ranks: dict[str, int], base: torch.nn.Module | None = None) -> torch.nn.Module:
    """The recipe: plain LoRA with ``ranks`` on a fresh base model (modules of rank 0 left out), trained by
    ``autolora.train`` for ``retrain_steps`` steps on the whole training split with the cell's seed."""
    kept = {name: rank for name, rank in ranks.items() if rank > 0}
    model = autolora.build_retrain_model(base if base is not None else cell.base_model(),
                                         AutoLoRAConfig(target_modules=list(kept)), kept)
    recipe = cell.recipe
    with cell.phase("retrain"):
        autolora.train(model, cell.data.train, steps=recipe.retrain_steps, batch_size=recipe.batch_size,
                       lr=recipe.lr, weight_decay=recipe.weight_decay, seed=cell.seed, tokenizer=cell.tokenizer)
    return model


def fit(cell: Cell, model: torch.nn.Module, *, steps: int, lr: float,
        after_step: Callable[[int], None] | None = None) -> None:
    """:func:`fit_batches` on the recipe's batches with the recipe's weight decay and the cell's seed, for models
    ``autolora.train`` does not handle (PEFT models, full fine-tuning)."""
    stream = batch_stream(model, cell.data.train, cell.recipe.batch_size, seed=cell.seed, tokenizer=cell.tokenizer)
    fit_batches(model, stream, steps=steps, lr=lr, weight_decay=cell.recipe.weight_decay, seed=cell.seed,
                after_step=after_step)


def fit_batches(model: torch.nn.Module, batches, *, steps: int, lr: float, weight_decay: float, seed: int,
                after_step: Callable[[int], None] | None = None) -> None:
    """``steps`` AdamW(lr, weight_decay) steps on every parameter with requires_grad, one batch of the iterator
    ``batches`` each, with the global RNG seeded from ``seed`` (as ``autolora.train`` does). ``after_step(t)`` runs
    after the optimiser step of step t, before the gradients are cleared (AdaLoRA's ``update_and_allocate``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    with isolated_rng():
        seed_rng(seed)
        model.train()
        for t in range(steps):
            loss = model_loss(model, next(batches))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {t}; lower the learning rate")
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(t)
            optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------------- AutoLoRA

def search_allocation(cell: Cell, preset: str, selection: str = "softmax", score: str = "margin", length: int = 1,
                      **options) -> tuple[dict[str, int], dict]:
    """AutoLoRA's allocation: ``autolora.search`` with ``preset`` ("default" or "paper"), ``selection``
    ("softmax" as in the paper, "sigmoid" or "none") and the other search ``options`` (``weight_lr``, ``eta``,
    ``method``; the exact method runs on eager attention) for ``length`` * ``search_steps`` steps (k =
    ``search_max_rank`` components per module), then the budget readout of N = reference_rank * M components by
    ``score`` ("margin" or "energy"; ``SearchResult.budget_ranks``). The one place the suite calls the search."""
    base = cell.base_model()
    if options.get("method") == "exact":
        use_eager_attention(base)
    model = autolora.get_autolora_model(base, AutoLoRAConfig(max_rank=cell.recipe.search_max_rank,
                                                             selection=selection))
    with cell.phase("allocation"):
        result = autolora.search(model, cell.data.train, steps=length * cell.recipe.search_steps, preset=preset,
                                 batch_size=cell.recipe.batch_size, seed=cell.seed, tokenizer=cell.tokenizer,
                                 **options)
        ranks = result.budget_ranks(cell.recipe.reference_rank * len(result.alphas), score)
    return ranks, {**search_diagnostics(result, preset), "selection": selection, "options": options,
                   "budget_score": score, "search_steps": length * cell.recipe.search_steps}


def window_means(values: list[float], windows: int = 10) -> list[float]:
    """Means of ``values`` over ``windows`` consecutive, nearly equal parts (fewer when there are fewer values)."""
    parts = torch.tensor(values, dtype=torch.float64).tensor_split(min(windows, len(values)))
    return [float(part.mean()) for part in parts]


def search_diagnostics(result: autolora.SearchResult, preset: str) -> dict:
    """What the search learned: ``SearchResult.summary()`` (the paper's threshold ranks, alpha separation, margins
    and verdict, losses, the mixed term's share of h) and the loss curves as window means."""
    return {"preset": preset, **result.summary(),
            "train_loss_curve": window_means(result.train_losses),
            "val_loss_curve": window_means(result.val_losses) if result.val_losses else []}


def autolora_method(preset: str, selection: str = "softmax", score: str = "margin", length: int = 1,
                    **options) -> Callable[[Cell], Outcome]:
    """An AutoLoRA row: search with ``preset``, ``selection`` and ``options`` (finite differences unless ``options``
    name a method) for ``length`` times the recipe's search steps, then the recipe's retraining of the budget ranks
    by ``score``."""
    options = {"method": "finite_difference", **options}

    def run(cell: Cell) -> Outcome:
        ranks, diagnostics = search_allocation(cell, preset, selection, score, length, **options)
        return Outcome(retrain(cell, ranks), ranks, diagnostics)
    return run


def run_shuffled(cell: Cell) -> Outcome:
    """AutoLoRA's cached ranks of this task and seed, permuted across modules with the seed."""
    source = cache.read_result(cell.results_root, cell.task.name, "autolora", cell.seed)
    if source is None:
        raise MissingInput(f"needs {cache.result_path(cell.results_root, cell.task.name, 'autolora', cell.seed)}; "
                           "run method=autolora for this task and seed first")
    ranks = shuffled_ranks(source["ranks"], cell.seed)
    return Outcome(retrain(cell, ranks), ranks, {"source_ranks": source["ranks"]})


# ------------------------------------------------------------------------------- fixed allocations: uniform, placement

def fixed_method(allocate: Callable[[Cell], dict[str, int]]) -> Callable[[Cell], Outcome]:
    """A row whose ranks do not depend on data: ``allocate(cell)`` -> {target module: rank} (after the base model
    is loaded, which records ``cell.shapes``), then the recipe's retraining."""
    def run(cell: Cell) -> Outcome:
        base = cell.base_model()
        ranks = allocate(cell)
        return Outcome(retrain(cell, ranks, base), ranks)
    return run


def uniform_method(rank: int) -> Callable[[Cell], Outcome]:
    return fixed_method(lambda cell: dict.fromkeys(cell.shapes, rank))


def placement_method(projection: str) -> Callable[[Cell], Outcome]:
    """A fixed placement: the budget's reference_rank * M components spread evenly over the target modules whose
    projection is ``projection`` (rank reference_rank * M / M_projection each), rank 0 on the others."""
    def allocate(cell: Cell) -> dict[str, int]:
        chosen = [name for name in cell.shapes if layer_and_projection(name)[1] == projection]
        budget = cell.recipe.reference_rank * len(cell.shapes)
        if not chosen or budget % len(chosen):
            raise ValueError(f"{budget} components do not spread evenly over the {len(chosen)} {projection!r} "
                             f"modules of {list(cell.shapes)}")
        return {name: budget // len(chosen) if name in chosen else 0 for name in cell.shapes}
    return fixed_method(allocate)


# ----------------------------------------------------------------------------------------------- PEFT: EVA, AdaLoRA

def peft_task_type(cell: Cell) -> str:
    return PEFT_TASK_TYPES[cell.data.task_type]


def eva_model(cell: Cell) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """:func:`peft_eva` on the cell's base model, targets and batches (r = reference_rank, the recipe's rho)."""
    base = cell.base_model()
    with cell.phase("allocation"):
        return peft_eva(base, list(cell.shapes), rank=cell.recipe.reference_rank, rho=cell.recipe.eva_rho,
                        task_type=peft_task_type(cell), loader=cell.loader())


def peft_eva(base: torch.nn.Module, targets: list[str], *, rank: int, rho: float, task_type: str,
             loader) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A PEFT LoRA model of ``base`` (r = ``rank`` on ``targets``, EVA init, no label mask) and its EVA state dict
    {PEFT module name: the first components of the SVD of the module's inputs, one row per allocated rank} from
    ``loader``'s batches."""
    from peft import EvaConfig, LoraConfig, get_eva_state_dict, get_peft_model
    config = LoraConfig(r=rank, lora_alpha=AutoLoRAConfig().lora_alpha, target_modules=targets,
                        init_lora_weights="eva", task_type=task_type,
                        eva_config=EvaConfig(rho=rho, use_label_mask=False))
    model = get_peft_model(base, config)
    return model, get_eva_state_dict(model, loader, show_progress_bar=False)


def eva_counts(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """{PEFT module name: components EVA allocates} of an EVA state dict."""
    return {name: u.shape[0] for name, u in state.items()}


def peft_ranks(targets, counts: dict[str, int]) -> dict[str, int]:
    """{target module: rank} over the module names ``targets`` from PEFT's {name with any ``base_model.model.``
    prefix or adapter suffix: count}; a target PEFT does not list gets rank 0."""
    ranks = dict.fromkeys(targets, 0)
    for name, count in counts.items():
        owner = [target for target in ranks if f".{target}." in f".{name}."]
        if len(owner) != 1:
            raise ValueError(f"PEFT module {name!r} matches {len(owner)} target modules of {list(ranks)}")
        ranks[owner[0]] = int(count)
    return ranks


def run_eva(cell: Cell) -> Outcome:
    _, state = eva_model(cell)
    ranks = peft_ranks(cell.shapes, eva_counts(state))
    return Outcome(retrain(cell, ranks), ranks)


def run_eva_init(cell: Cell) -> Outcome:
    from peft import initialize_lora_eva_weights
    model, state = eva_model(cell)
    ranks = peft_ranks(cell.shapes, eva_counts(state))
    initialize_lora_eva_weights(model, eva_state_dict=state, show_progress_bar=False)
    with cell.phase("retrain"):
        fit(cell, model, steps=cell.recipe.retrain_steps, lr=cell.recipe.lr)
    return Outcome(model, ranks)


def run_adalora(cell: Cell) -> Outcome:
    recipe = cell.recipe
    steps = recipe.search_steps
    model = peft_adalora(cell.base_model(), list(cell.shapes), init_r=recipe.adalora_init_r,
                         target_r=recipe.reference_rank, steps=steps, task_type=peft_task_type(cell))
    with cell.phase("allocation"):
        fit(cell, model, steps=steps, lr=recipe.lr, after_step=model.base_model.update_and_allocate)
    ranks = peft_ranks(cell.shapes, adalora_counts(model))
    return Outcome(retrain(cell, ranks), ranks, {"allocation_steps": steps})


def peft_adalora(base: torch.nn.Module, targets: list[str], *, init_r: int, target_r: int, steps: int,
                 task_type: str) -> torch.nn.Module:
    """A PEFT AdaLoRA model of ``base`` (``init_r`` -> an average of ``target_r`` triplets per module over
    ``steps`` steps: 10% warm-up, cubic budget schedule, final 20% at the target, a reallocation every step)."""
    from peft import AdaLoraConfig, get_peft_model
    config = AdaLoraConfig(init_r=init_r, target_r=target_r, lora_alpha=AutoLoRAConfig().lora_alpha,
                           target_modules=targets, total_step=steps, tinit=steps // 10, tfinal=max(1, steps // 5),
                           deltaT=1, task_type=task_type)
    return get_peft_model(base, config)


def adalora_counts(model: torch.nn.Module) -> dict[str, int]:
    """{PEFT module name: triplets kept} of a trained AdaLoRA model's final ``rank_pattern``."""
    return {name: int(sum(mask)) for name, mask in model.peft_config["default"].rank_pattern.items()}


# ------------------------------------------------------------------------------------------ full weights, head only

def run_head_only(cell: Cell) -> Outcome:
    """The task head alone trained (every other weight frozen, no LoRA), AdamW at the recipe's lr on its batches:
    the part of a score that needs no adapter at all."""
    model = cell.base_model()
    heads = find_heads(model, None)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(is_within(name, head) for head in heads))
    with cell.phase("retrain"):
        fit(cell, model, steps=cell.recipe.retrain_steps, lr=cell.recipe.lr)
    return Outcome(model, None)


def run_full_ft(cell: Cell) -> Outcome:
    model = cell.base_model()
    with cell.phase("retrain"):
        fit(cell, model, steps=cell.recipe.retrain_steps, lr=cell.recipe.full_ft_lr)
    return Outcome(model, None)


METHODS = {method.name: method for method in (
    # name, run, headline, budget_matched, allocates, description[, on_tasks, tasks_reason]
    Method("autolora", autolora_method("default"), True, True, True,
           "AutoLoRA search (default preset, finite-difference hypergradient), budget readout"),
    Method("uniform_r4", uniform_method(4), True, True, False, "uniform LoRA r=4 (the reference budget)"),
    Method("shuffled", run_shuffled, True, True, True, "AutoLoRA's rank histogram shuffled across modules"),
    Method("eva", run_eva, True, True, True, "EVA's allocation (PEFT, rho 2), our retraining"),
    Method("adalora", run_adalora, True, True, True,
           "AdaLoRA's allocation (PEFT, init_r 8, target_r 4), our retraining"),
    Method("autolora_paper", autolora_method("paper"), False, True, True,
           "AutoLoRA search, paper preset, budget readout"),
    Method("autolora_sigmoid", autolora_method("default", "sigmoid"), False, True, True,
           "as autolora with sigmoid selection (no per-layer sum)"),
    Method("autolora_sigmoid_lr1e-3", autolora_method("default", "sigmoid", weight_lr=1e-3), False, True, True,
           "as autolora_sigmoid with weights lr 1e-3 during the search (at 1e-2 its search loss climbs back to "
           "chance after the warm-up)"),
    Method("autolora_eta0", autolora_method("default", eta=0.0), False, True, True,
           "as autolora with the paper's eta = 0 ablation (W' = W)"),
    Method("autolora_none", autolora_method("default", "none"), False, True, True,
           "as autolora with no constraint on alpha (selection none)"),
    Method("autolora_exact", autolora_method("default", method="exact"), False, True, True,
           "as autolora with the exact hypergradient (eager attention)"),
    Method("autolora_first_order", autolora_method("default", method="first_order"), False, True, True,
           "AutoLoRA search, the default preset as it ships (first-order hypergradient: no mixed term), budget "
           "readout"),
    Method("autolora_sigmoid_energy", autolora_method("default", "sigmoid", "energy", weight_lr=1e-3,
                                                      method="first_order"), False, True, True,
           "sigmoid selection at weights lr 1e-3, first order, ranks by the energy budget readout (the singular "
           "values of the searched updates; the readout that recovers planted ranks)"),
    Method("autolora_long_energy", autolora_method("default", score="energy", length=6, method="first_order"),
           False, True, True,
           "the default as it ships (first order) searched 6 times as long (900 steps), ranks by the energy budget "
           "readout (the lever that pays off on the planted task, docs/planted_allocation.md)",
           on_tasks=("rotten_tomatoes_500",),
           tasks_reason="its cells took 15.7-17.5 min each at 1 thread, over the suite's 15-min part"),
    Method("autolora_energy", autolora_method("default", score="energy", method="first_order"), False, True, True,
           "the default as `autolora run --budget N` ships it: first-order hypergradient, ranks by the energy budget "
           "readout", on_tasks=CONTEXT_TASKS + ("roget",),
           tasks_reason="also on roget, a task where rank may matter"),
    Method("eva_init", run_eva_init, False, True, True, "EVA as PEFT runs it (its SVD initialisation)"),
    Method("uniform_r1", uniform_method(1), False, False, False, "uniform LoRA r=1"),
    Method("uniform_r2", uniform_method(2), False, False, False, "uniform LoRA r=2", on_tasks=ALL_TASKS,
           tasks_reason="whether rank matters at all"),
    Method("uniform_r8", uniform_method(8), False, False, False, "uniform LoRA r=8", on_tasks=ALL_TASKS,
           tasks_reason="whether rank matters at all"),
    Method("value_only", placement_method("value"), False, True, False,
           "every component on the value projections (r=8), none on query: a fixed placement at the budget",
           on_tasks=("roget",), tasks_reason="how far placement alone moves the score where rank matters"),
    Method("query_only", placement_method("query"), False, True, False,
           "every component on the query projections (r=8), none on value: a fixed placement at the budget",
           on_tasks=("roget",), tasks_reason="how far placement alone moves the score where rank matters"),
    Method("full_ft", run_full_ft, False, False, False, "full fine-tuning"),
    Method("head_only", run_head_only, False, False, False,
           "the task head alone trained, no LoRA (what the tasks score without any adapter)"),
)}


def method_spec(name: str) -> Method:
    """The method called ``name`` (ValueError listing the suite's methods otherwise)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; the suite's methods: {', '.join(METHODS)}")
    return METHODS[name]
