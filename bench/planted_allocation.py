"""Does a searched allocation pay off where allocation matters? Retraining at one budget on the planted-rank tasks.

The planted-rank tasks of bench/planted_ranks.py (``--task tiny``: a tiny random BERT, 8 query/value modules;
``--task minilm``: pretrained all-MiniLM-L6-v2, 12) are the tasks here on which the right allocation is known and
matters by construction: a module of planted rank r needs r components, so uniform LoRA at the same total cannot fit
the rank-8 and rank-4 modules. Every allocation below holds N = 3 M rank-1 components (uniform r = 3 over the M
modules), except the planted ranks themselves (rank 0 counted as 1), and is retrained with one recipe (plain LoRA
from a fresh start, ``autolora.train``: AdamW, ``RETRAIN_STEPS`` steps, batch 16, the seed's initialisation and batch
order) on the searches' 512 training examples. The learning rate is the one of ``LR_GRID`` at which uniform r = 3,
the control, reaches the lowest validation MSE (mean over the seeds): tuned for the control, then used for all. The
score is the mean squared error on 512 test examples drawn from the same teacher that no search, retraining or
tuning sees.

The searched allocations are read from the cached searches of bench/planted_ranks.py (seed s's search for seed s's
retraining), by the budget readout at N: by energy (the singular values of the searched updates, ``--budget``'s
default) or by margin. Controls: uniform r = 3; the ranks of the default search run 1000 steps (energy readout)
shuffled across modules with the seed (``autolora.readout.shuffled_ranks``: the same histogram, the allocation
destroyed); plain LoRA's own energies (that search with the selection frozen at alpha = 1/k, read by the same
energy readout). Peers, through PEFT at the same N: EVA (r = 3, rho 2, from the SVD of the modules' inputs) and
AdaLoRA (init_r 8, target_r 3, 1000 steps at the tuned learning rate); a module they leave at rank 0 is not adapted
in the retraining. Each (allocation, seed) result is cached as JSON under bench/results/planted_allocation/
(planted_allocation_minilm/ for MiniLM); ``--report`` prints the task's table from the cache only.

    PYTHONPATH=. python bench/planted_allocation.py [--task tiny|minilm] [--allocations NAME ...] [--seeds 0 1 2]
    PYTHONPATH=. python bench/planted_allocation.py --report > docs/planted_allocation.md
    PYTHONPATH=. python bench/planted_allocation.py --task minilm --report > docs/planted_allocation_minilm.md
"""
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from autolora import AutoLoRAConfig
from autolora.data import make_loader, model_inputs
from autolora.readout import budget_ranks, shuffled_ranks
from autolora.retrain import build_retrain_model, train
from autolora.training import batch_stream
from experiments.methods import adalora_counts, eva_counts, fit_batches, peft_adalora, peft_eva, peft_ranks
from experiments.stats import paired_difference, spearman
from hardware import cpu_model
from planted_ranks import RESULTS, TASKS, PlantedTask, component_scores, load_or_run, repo_path, task_parser

UNIFORM_RANK = 3
SPLITS = {"train": range(0, 512), "validation": range(512, 1024), "test": range(1024, 1536)}
RETRAIN_STEPS = 1000
ADALORA_STEPS = 1000
BATCH_SIZE = 16
LR_GRID = (1e-2, 3e-3, 1e-3)
SEEDS = (0, 1, 2, 3, 4)
REFERENCE = "uniform r=3"
SIGMOID_1000 = "default, sigmoid, 1000 steps, first_order"
SOFTMAX_1000 = "default, 1000 steps, first_order"
SHIPPED = "default, first_order (the shipped default)"
FROZEN = "default, 1000 steps, first_order, selection frozen"
FROZEN_SIGMOID = "default, sigmoid, 1000 steps, first_order, selection frozen, scale x2"


@dataclass(frozen=True)
class Context:
    """What an allocation may use: the task, the seed, the task's splits and the tuned learning rate."""

    task: PlantedTask
    seed: int
    data: dict
    lr: float

    @property
    def budget(self) -> int:
        return UNIFORM_RANK * len(self.task.modules)


def planted_data(task: PlantedTask) -> dict:
    """{split: dataset}: 1536 examples of the task's teacher; its first 512 are the examples the cached searches
    trained on (the same generator, drawn further)."""
    data = task.dataset(1536)
    return {name: data.select(rows) for name, rows in SPLITS.items()}


def searched(config: str, score: str):
    """The ranks of ``config``'s cached search of the seed, read at N by ``score`` ("margin" or "energy")."""
    def allocate(context: Context) -> dict[str, int]:
        path = context.task.cached(config, context.seed)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no cached search {path}; run python bench/planted_ranks.py --task "
                                    f"{context.task.name} --configs '{config}' --seeds {context.seed}")
        return budget_ranks(component_scores(json.load(open(path)))[score], context.budget)
    return allocate


def shuffled(allocate):
    return lambda context: shuffled_ranks(allocate(context), context.seed)


def eva(context: Context) -> dict[str, int]:
    """PEFT's EVA allocation (r = 3, rho 2: N components, at most 6 per module) from the SVD of the target modules'
    inputs over shuffled training batches of 16."""
    task = context.task
    loader = make_loader(context.data["train"], BATCH_SIZE, shuffle=True, seed=context.seed)
    _, state = peft_eva(task.base_model(), list(task.modules), rank=UNIFORM_RANK, rho=2.0, task_type=None,
                        loader=loader)
    return peft_ranks(task.modules, eva_counts(state))


def adalora(context: Context) -> dict[str, int]:
    """PEFT's AdaLoRA allocation (init_r 8, target_r 3: N triplets) after ADALORA_STEPS steps of AdamW at the
    retraining's learning rate on the training batches, ``update_and_allocate`` after every step."""
    task = context.task
    with torch.random.fork_rng():
        torch.manual_seed(context.seed)
        model = peft_adalora(task.base_model(), list(task.modules), init_r=8, target_r=UNIFORM_RANK,
                             steps=ADALORA_STEPS, task_type=None)
    batches = batch_stream(model, model_inputs(context.data["train"]), BATCH_SIZE, seed=context.seed)
    fit_batches(model, batches, steps=ADALORA_STEPS, lr=context.lr, weight_decay=0.01, seed=context.seed,
                after_step=model.base_model.update_and_allocate)
    return peft_ranks(task.modules, adalora_counts(model))


SHUFFLED = "the default search's ranks (1000 steps, energy readout) shuffled across modules"
FROZEN_ENERGY = "plain LoRA (softmax selection frozen), 1000 steps; energy readout"
FROZEN_SIGMOID_ENERGY = "plain LoRA (sigmoid selection frozen, twice the scale), 1000 steps; energy readout"
EVA = "EVA (PEFT, r 3, rho 2)"
ADALORA = "AdaLoRA (PEFT, init_r 8, target_r 3, 1000 steps)"
SEARCHES = {  # the AutoLoRA rows
    "AutoLoRA default, 1000 steps; energy readout (the default readout)": searched(SOFTMAX_1000, "energy"),
    "AutoLoRA default, 1000 steps, meta step every 2nd step; energy readout": searched(
        "default, 1000 steps, first_order, meta every 2", "energy"),
    "AutoLoRA sigmoid, 1000 steps, first order; energy readout": searched(SIGMOID_1000, "energy"),
    "AutoLoRA sigmoid, 1000 steps, first order; margin readout": searched(SIGMOID_1000, "margin"),
    "AutoLoRA sigmoid, weights lr 1e-3, 1000 steps, first order; energy readout": searched(
        "default, sigmoid, weights lr 1e-3, 1000 steps, first_order", "energy"),
    "AutoLoRA shipped default (300 steps); margin readout": searched(SHIPPED, "margin"),
    "AutoLoRA shipped default (300 steps); energy readout": searched(SHIPPED, "energy"),
    "AutoLoRA paper preset; margin readout": searched("paper", "margin"),
}
ROW_PAIRS = [  # (row, row it is compared with), paired by seed
    *((f"AutoLoRA {search}; energy readout", f"AutoLoRA {search}; margin readout")
      for search in ("sigmoid, 1000 steps, first order", "shipped default (300 steps)")),
    ("AutoLoRA default, 1000 steps, meta step every 2nd step; energy readout",
     "AutoLoRA default, 1000 steps; energy readout (the default readout)"),
]
COLUMNS = {REFERENCE: "uniform r=3", SHUFFLED: "shuffled", FROZEN_ENERGY: "plain LoRA energies (1/k)",
           FROZEN_SIGMOID_ENERGY: "plain LoRA energies (sigmoid scale)", EVA: "EVA",
           ADALORA: "AdaLoRA"}  # the controls' short names in the paired table
CONTROLS = {  # what every AutoLoRA row is compared with, seed by seed
    REFERENCE: lambda context: dict.fromkeys(context.task.modules, UNIFORM_RANK),
    SHUFFLED: shuffled(searched(SOFTMAX_1000, "energy")),
    FROZEN_ENERGY: searched(FROZEN, "energy"),
    FROZEN_SIGMOID_ENERGY: searched(FROZEN_SIGMOID, "energy"),
    EVA: eva,
    ADALORA: adalora,
}
PLANTED_RANKS = "planted ranks (rank 0 as 1)"
ALLOCATIONS = {PLANTED_RANKS: lambda context: {m: max(r, 1) for m, r in zip(context.task.modules,
                                                                             context.task.planted)},
               **SEARCHES, **CONTROLS}


def mse(model: torch.nn.Module, dataset) -> float:
    """Mean over examples and outputs of (model output - teacher output)^2."""
    model.eval()
    ids = torch.tensor(dataset["input_ids"])
    with torch.no_grad():
        outputs = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return float(((outputs - torch.tensor(dataset["labels"])) ** 2).mean())


def retrain(ranks: dict[str, int], context: Context) -> dict:
    """The recipe (see the module docstring) on ``ranks`` (modules left out stay unadapted); validation and test
    MSE and the final training loss."""
    with torch.random.fork_rng():
        torch.manual_seed(context.seed)
        model = build_retrain_model(context.task.base_model(),
                                    AutoLoRAConfig(target_modules=list(ranks), modules_to_save=[]), ranks)
    start = time.perf_counter()
    losses = train(model, context.data["train"], steps=RETRAIN_STEPS, batch_size=BATCH_SIZE, lr=context.lr,
                   seed=context.seed).losses
    return {"validation_mse": mse(model, context.data["validation"]), "test_mse": mse(model, context.data["test"]),
            "train_loss_last": statistics.fmean(losses[-50:]), "seconds": time.perf_counter() - start}


def cache_path(task: PlantedTask, *parts: str) -> str:
    folder = "planted_allocation" if task.name == "tiny" else f"planted_allocation_{task.name}"
    return os.path.join(RESULTS, folder, *parts)


def tuned_lr(task: PlantedTask, data: dict, seeds) -> float:
    """The learning rate of LR_GRID with the lowest mean validation MSE of the reference (uniform r = 3), over
    ``seeds`` and every seed already tuned (so that a run on fewer seeds keeps the learning rate of the cache)."""
    folder = cache_path(task, "lr_tuning", f"lr{LR_GRID[0]:g}")
    tuned = {int(f[4:-5]) for f in os.listdir(folder) if f.endswith(".json")} if os.path.isdir(folder) else set()
    seeds = sorted(set(seeds) | tuned)
    scores = {}
    for lr in LR_GRID:
        runs = [tuning_run(Context(task, seed, data, lr)) for seed in seeds]
        scores[lr] = statistics.fmean(run["validation_mse"] for run in runs)
        print(f"tuning: lr {lr:g} validation MSE {scores[lr]:.6f}", flush=True)
    return min(scores, key=scores.get)


def tuning_run(context: Context) -> dict:
    """The reference's retraining at the context's learning rate (cached with the learning-rate tuning)."""
    return load_or_run(cache_path(context.task, "lr_tuning", f"lr{context.lr:g}", f"seed{context.seed}.json"),
                       lambda: retrain(ALLOCATIONS[REFERENCE](context), context))


def run_allocation(name: str, context: Context) -> dict:
    """The record of allocation ``name`` retrained in ``context`` (the reference's is its tuning run at that lr)."""
    ranks = {module: rank for module, rank in ALLOCATIONS[name](context).items() if rank > 0}
    outcome = tuning_run(context) if name == REFERENCE else retrain(ranks, context)
    return {"allocation": name, "seed": context.seed, "ranks": ranks, "lr": context.lr,
            "retrain_steps": RETRAIN_STEPS, "batch_size": BATCH_SIZE, **outcome,
            "hardware": f"{cpu_model()}, {os.cpu_count()} cores", "torch": torch.__version__}


def results(task: PlantedTask) -> dict[str, dict[int, dict]]:
    """{allocation: {seed: cached record}} of every allocation with a cached result."""
    found = {}
    for name in ALLOCATIONS:
        folder = cache_path(task, name)
        if os.path.isdir(folder):
            records = [json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
                       if f.endswith(".json")]
            found[name] = {record["seed"]: record for record in records}
    return found


def interval(difference, decimals: int) -> str:
    """'mean [low, high]' of a paired difference, and whether the interval lies below 0, above 0 or contains it."""
    if difference is None:
        return "not run yet"
    if difference.low is None:
        return f"{difference.mean:+.{decimals}f} (one seed)"
    verdict = "within noise" if difference.within_noise else ("lower" if difference.high < 0 else "higher")
    return (f"{difference.mean:+.{decimals}f} [{difference.low:+.{decimals}f}, {difference.high:+.{decimals}f}] "
            f"{verdict}")


def report(task: PlantedTask) -> str:
    runs = results(task)
    tuning = {lr: [json.load(open(cache_path(task, "lr_tuning", f"lr{lr:g}", f)))["validation_mse"]
                   for f in sorted(os.listdir(cache_path(task, "lr_tuning", f"lr{lr:g}")))]
              for lr in LR_GRID if os.path.isdir(cache_path(task, "lr_tuning", f"lr{lr:g}"))}
    flag = task.flag
    budget = UNIFORM_RANK * len(task.modules)
    folder = repo_path(cache_path(task))
    searches = task.doc("planted_ranks")
    lines = [f"# Retraining searched allocations on the planted-rank task: {task.description}", "",
             f"Generated by `PYTHONPATH=. python bench/planted_allocation.py{flag} --report > "
             f"{task.doc('planted_allocation')}` "
             f"from the cached runs in", f"`{folder}/` (produced by `PYTHONPATH=. python "
             f"bench/planted_allocation.py{flag}`); do not edit by hand.", "",
             f"Planted ranks per module (layers 0-{len(task.modules) // 2 - 1}, query then value, sigma = "
             f"{task.sigma:g}): `{list(task.planted)}`. Every allocation holds {budget} rank-1 components (uniform "
             f"r = {UNIFORM_RANK}) except the planted ranks ({task.budget}: rank 0 counted as 1). Each is "
             f"retrained from a fresh start with one recipe ({RETRAIN_STEPS} AdamW steps, batch {BATCH_SIZE}, the "
             "seed's initialisation and batch order) on the search's 512 training examples; the score is the mean "
             "squared error against the teacher on 512 held-out test examples (lower is better; the frozen base "
             "model without adapters is the starting point). The searched allocations are the budget readouts of "
             f"the cached searches of {searches}, seed s's search for seed s's retraining. Paired "
             "differences are per seed, with a 95% paired-t interval: 'lower' (better) or 'higher' when it "
             "excludes 0, 'within noise' when it contains 0.", ""]
    scores = {name: {s: r["test_mse"] for s, r in by_seed.items()} for name, by_seed in runs.items()}
    # three significant digits of the reference's test MSE
    decimals = 2 - math.floor(math.log10(statistics.fmean(scores[REFERENCE].values()))) if REFERENCE in scores else 5
    if tuning:
        chosen = min(tuning, key=lambda lr: statistics.fmean(tuning[lr]))
        lines += ["Learning rate, tuned for the control (uniform r = 3) on 512 validation examples, mean over seeds: "
                  + ", ".join(f"{lr:g}: {statistics.fmean(v):.{decimals}f}" for lr, v in tuning.items())
                  + f"; chosen {chosen:g}, used for every allocation.", ""]
    if runs:
        first = next(iter(next(iter(runs.values())).values()))
        lines += [f"Machine: {first['hardware']}; torch {first['torch']}.", ""]
    lines += ["| allocation | components | test MSE | Spearman with planted ranks | seeds |", "|---|---|---|---|---|"]
    for name in ALLOCATIONS:
        if name not in runs:
            lines.append(f"| {name} | not run yet | | | |")
            continue
        values = list(scores[name].values())
        sd = f" ± {statistics.stdev(values):.{decimals}f}" if len(values) > 1 else ""
        totals = sorted({sum(r["ranks"].values()) for r in runs[name].values()})
        rhos = [spearman(task.planted, [r["ranks"].get(m, 0) for m in task.modules]) for r in runs[name].values()]
        rhos = [rho for rho in rhos if rho is not None]
        rho = f"{statistics.fmean(rhos):.2f}" if rhos else "n/a (constant ranks)"
        lines.append(f"| {name} | {'-'.join(map(str, totals))} | {statistics.fmean(values):.{decimals}f}{sd} | {rho} | "
                     f"{len(values)} |")
    lines += ["", "Paired test-MSE differences, AutoLoRA row minus control (negative: AutoLoRA's allocation retrains "
              "to a lower error):", "", "| AutoLoRA row | " + " | ".join(COLUMNS[c] for c in CONTROLS) + " |",
              "|---|" + "---|" * len(CONTROLS)]
    for name in SEARCHES:
        cells = [interval(paired_difference(scores[name], scores[control]), decimals)
                 if name in scores and control in scores else "not run yet" for control in CONTROLS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "AutoLoRA rows against each other: the two budget readouts of the same searches, and one lever "
              "against the search without it:", "", "| row | minus row | difference |", "|---|---|---|"]
    for row, other in ROW_PAIRS:
        cell = (interval(paired_difference(scores[row], scores[other]), decimals)
                if row in scores and other in scores else "not run yet")
        lines.append(f"| {row} | {other} | {cell} |")
    lines += ["", f"Ranks per module (layers 0-{len(task.modules) // 2 - 1}, query then value) by seed:", ""]
    for name, by_seed in runs.items():
        lines.append(f"- {name}: " + "; ".join(f"{s}: `{[r['ranks'].get(m, 0) for m in task.modules]}`"
                                                for s, r in sorted(by_seed.items())))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = task_parser(__doc__.splitlines()[0], seeds=SEEDS)
    parser.add_argument("--allocations", nargs="+", default=list(ALLOCATIONS), choices=list(ALLOCATIONS))
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    if args.report:
        print(report(task), end="")
        return
    data = planted_data(task)
    lr = tuned_lr(task, data, args.seeds)
    for name in args.allocations:
        for seed in args.seeds:
            context = Context(task, seed, data, lr)
            record = load_or_run(cache_path(task, name, f"seed{seed}.json"), lambda: run_allocation(name, context))
            print(f"{name} seed {seed}: test MSE {record['test_mse']:.6f} ranks "
                  f"{[record['ranks'].get(m, 0) for m in task.modules]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
