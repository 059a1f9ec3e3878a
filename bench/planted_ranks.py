"""Does the rank search recover planted ranks? The lever table of docs/search.md.

A tiny random BERT (hidden 32, 4 layers, 16 regression outputs) is the frozen base; the teacher adds updates of
known rank to its query/value projections (autolora.data.planted, sigma = 1); the student searches k = 8
components per module on the teacher's outputs. Each configuration (the paper's settings and one lever at a time)
runs for every seed; a run's result is cached as JSON under bench/results/planted/<config>/seed<k>.json (skipped
when present), and ``--report`` prints the markdown table from the cached results only.

Every configuration forms the hypergradient by finite differences unless it names ``first_order`` (the default
preset's method when the table was first run; the default preset now drops the mixed term, the row marked "the
shipped default").

Readouts scored against the planted ranks (Spearman over the 8 modules): the paper's per-layer threshold, the
budget readout (largest margins, at least one per module) at the planted total (ranks 0 counted as 1), and the
energy budget readout at the same total (largest singular values of the searched updates B diag(s alpha) A). Each
cached run keeps its alpha history and its update energies (runs cached before energies were recorded have none),
and the report recomputes margins and both budget readouts from them.

    python bench/planted_ranks.py [--configs paper lr ...] [--seeds 0 1] [--steps 300]
    python bench/planted_ranks.py --report
"""
import argparse
import json
import os
import sys
import time

import torch
from scipy.stats import spearmanr
from transformers import BertConfig, BertForSequenceClassification

from autolora import AutoLoRAConfig, get_autolora_model, search
from autolora.data import planted_rank_dataset
from autolora.readout import budget_ranks, component_margins, separation_verdict
from hardware import cpu_model

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "planted")
PLANTED = [0, 8, 1, 4, 2, 0, 4, 1]
MODULES = [f"bert.encoder.layer.{layer}.attention.self.{m}" for layer in range(4) for m in ("query", "value")]
BUDGET = sum(max(r, 1) for r in PLANTED)
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


def base_model(seed=0):
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=16, problem_type="regression",
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(config).eval()


def spearman(found):
    value = spearmanr(PLANTED, [found[m] for m in MODULES])[0]
    return None if value != value else float(value)  # NaN (constant ranks) -> None


def run(config: str, seed: int, steps: int) -> dict:
    data = planted_rank_dataset(base_model(), dict(zip(MODULES, PLANTED)), num_examples=512, seq_len=8, sigma=1.0,
                                seed=0)
    options = {"steps": steps, "method": "finite_difference", **CONFIGS[config]}
    selection = options.pop("selection", "softmax")
    lora_alpha = options.pop("lora_alpha", AutoLoRAConfig.lora_alpha)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = get_autolora_model(base_model(), AutoLoRAConfig(max_rank=8, modules_to_save=[], selection=selection,
                                                                lora_alpha=lora_alpha))
    start = time.perf_counter()
    result = search(model, data, seed=seed, **options)
    summary = result.summary()
    return {"config": config, "seed": seed, "options": options, "selection": selection, "lora_alpha": lora_alpha,
            "seconds": time.perf_counter() - start, "planted": dict(zip(MODULES, PLANTED)),
            "threshold_ranks": result.ranks, "spearman_threshold": spearman(result.ranks),
            "train_loss_first": summary["train_loss_first"], "train_loss_last": summary["train_loss_last"],
            "mixed_share_mean": summary["mixed_share_mean"], "energies": summary["energies"],
            "alpha_history": {n: h.tolist() for n, h in result.history["alphas"].items()},
            "hardware": f"{cpu_model()}, {os.cpu_count()} cores", "torch": torch.__version__}


def readouts(record: dict) -> dict:
    """Margins (current definition) from the cached alpha history: the budget readout, its Spearman, the share of
    modules whose every component is separated; and the energy budget readout's Spearman (None for runs cached
    without energies)."""
    selection = record.get("selection", "softmax")
    margins = {n: component_margins(torch.tensor(h), selection) for n, h in record["alpha_history"].items()}
    verdict = separation_verdict(margins)
    energies = {n: torch.tensor(e) for n, e in record.get("energies", {}).items()}
    return {"spearman_budget": spearman(budget_ranks(margins, BUDGET)), "separated_share": verdict["separated_share"],
            "spearman_energy": spearman(budget_ranks(energies, BUDGET)) if energies else None}


def cached(config: str, seed: int) -> str:
    return os.path.join(RESULTS, config, f"seed{seed}.json")


def report() -> str:
    """docs/planted_ranks.md: the setup, then one row per configuration (means over the cached seeds)."""
    runs_all = [json.load(open(os.path.join(RESULTS, c, f))) for c in os.listdir(RESULTS) if os.path.isdir(
        os.path.join(RESULTS, c)) for f in os.listdir(os.path.join(RESULTS, c))] if os.path.isdir(RESULTS) else []
    header = ["# Planted-rank recovery", "",
              "Generated by `python bench/planted_ranks.py --report > docs/planted_ranks.md` from the cached runs in",
              "`bench/results/planted/` (produced by `python bench/planted_ranks.py`); do not edit by hand.", "",
              f"Planted ranks per module (layers 0-3, query then value): `{PLANTED}`; k = 8 components per module; "
              f"both budget readouts at {BUDGET} components (margins; energies, the singular values of the searched "
              "updates). Spearman is between the planted and the read ranks over the "
              "8 modules (1 = same order), averaged over seeds ('not recorded': run cached before energies were "
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
        runs = [json.load(open(cached(config, s))) for s in range(100) if os.path.exists(cached(config, s))]
        runs = [{**r, **readouts(r)} for r in runs]
        if not runs:
            rows.append(f"| {config} | not run yet | | | | | | | |")
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=300, help="search steps of the configurations that do not "
                                                                  "set their own")
    parser.add_argument("--report", action="store_true", help="print the table from the cached results and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(report(), end="")
        return
    for config in args.configs:
        for seed in args.seeds:
            path = cached(config, seed)
            if os.path.exists(path):
                print(f"{config} seed {seed}: cached", flush=True)
                continue
            record = run(config, seed, args.steps)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".part", "w") as f:
                json.dump(record, f, indent=1)
            os.replace(path + ".part", path)
            scores = readouts(record)
            print(f"{config} seed {seed}: threshold {record['spearman_threshold']} budget {scores['spearman_budget']} "
                  f"energy {scores['spearman_energy']} separated {scores['separated_share']:.2f} "
                  f"({record['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
