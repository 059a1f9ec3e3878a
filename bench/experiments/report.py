"""docs/results.md and its figures, generated only from the cached results of the suite.

    python -m bench.experiments.report [--results DIR] [--output docs/results.md] [--figures docs/figures]

Tables: test score mean +- std per (task, method); per control the paired difference AutoLoRA - control over the
seeds both have, with its 95% paired-t interval ("within noise" when the interval contains 0); the parameter
budget of every method; rank stability (mean Spearman between seeds), also of the margin and energy budget
readouts of the same searches; cost (wall time per method over uniform LoRA r=4, with a 16-configuration rank grid
extrapolated as 16 uniform runs); AutoLoRA's search diagnostics; and a reading per task (the paired intervals,
whether rank matters at all there, whether placement alone does, the search's separation and rank stability, first
order against finite differences) ending with the tasks, if any, where AutoLoRA is above every control. Rows
without results say "not run yet", or "not planned" where the plan runs that method on other tasks only (the
context rows run on the low-data tasks); the per-task paired, cost and diagnostics tables list the planned rows
only.
"""
from __future__ import annotations

import argparse
import functools
import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from autolora.plots import layer_and_projection  # noqa: E402
from autolora.readout import BUDGET_SCORES, budget_ranks  # noqa: E402

from . import cache, methods, run, stats, tasks  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "docs", "results.md")
DEFAULT_FIGURES = os.path.join(REPO_ROOT, "docs", "figures")
SUBJECT = "autolora"
REFERENCE = "uniform_r4"
CONTROLS = ("uniform_r4", "shuffled", "eva", "adalora")
GRID_CONFIGURATIONS = 16
NOT_RUN = "not run yet"
NOT_PLANNED = "not planned"  # the plan runs this method on other tasks only (context rows: the low-data tasks)


class Results:
    """The cached results indexed by (task, method) -> {seed: record}."""

    def __init__(self, records: Sequence[dict]):
        self.records = list(records)
        self.cells: dict[tuple[str, str], dict[int, dict]] = {}
        for record in self.records:
            self.cells.setdefault((record["task"], record["method"]), {})[record["seed"]] = record

    def seeds(self, task: str, method: str) -> dict[int, dict]:
        return self.cells.get((task, method), {})

    def scores(self, task: str, method: str) -> dict[int, float]:
        """{seed: primary test metric}."""
        return {seed: r["test"][r["metric"]] for seed, r in self.seeds(task, method).items()}

    def missing(self, task: str, method: str) -> str:
        """What a cell of the tables says for a (task, method) without results: not run yet, or not planned."""
        return NOT_RUN if (task, method) in planned_pairs() else NOT_PLANNED

    def mean_of(self, task: str, method: str, value) -> float | None:
        """Mean over seeds of ``value(record)``, None without results."""
        return mean_or_none(value(r) for r in self.seeds(task, method).values())


def task_exceptions() -> str:
    """The rows that run on other tasks than their default, each with its tasks and the reason."""
    def where(method: methods.Method) -> str:
        return "every task" if method.task_names == methods.ALL_TASKS else ", ".join(method.task_names)

    return "; ".join(f"{method.name} on {where(method)} ({method.tasks_reason})"
                     for method in methods.METHODS.values() if method.on_tasks is not None)


@functools.cache
def planned_cells() -> tuple[tuple[str, str, int], ...]:
    """The suite's planned (task, method, seed) cells in run order (:func:`run.plan` without a filter)."""
    return tuple(run.plan({}))


@functools.cache
def planned_pairs() -> frozenset[tuple[str, str]]:
    """The (task, method) pairs the suite's plan has cells for."""
    return frozenset((task, method) for task, method, _ in planned_cells())


def beyond_plan(results: Results) -> dict[tuple[str, str], list[int]]:
    """The cached cells outside the plan (seeds run with ``--seeds`` beyond a row's planned ones): {(task, method):
    sorted seeds}."""
    planned = set(planned_cells())
    extra: dict[tuple[str, str], list[int]] = {}
    for record in results.records:
        if (record["task"], record["method"], record["seed"]) not in planned:
            extra.setdefault((record["task"], record["method"]), []).append(record["seed"])
    return {pair: sorted(seeds) for pair, seeds in sorted(extra.items())}


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def signed(value: float) -> str:
    return f"{value:+.4f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def score_cell(results: Results, task: str, method: str) -> str:
    scores = list(results.scores(task, method).values())
    if not scores:
        return results.missing(task, method)
    mean, std = stats.mean_std(scores)
    return f"{mean:.4f} ± {fmt(std)} (n={len(scores)})"


def reading(difference: stats.PairedDifference | None, subject: str = "AutoLoRA") -> str:
    """How a paired difference subject - control reads: within noise when its interval contains 0."""
    if difference is None:
        return NOT_RUN
    if difference.low is None:
        return "n/a (one seed)"
    if difference.within_noise:
        return "within noise"
    return f"{subject} higher" if difference.low > 0 else f"{subject} lower"


def difference_text(results: Results, task: str, subject: str, control: str, label: str = "AutoLoRA") -> str:
    """"mean [low, high], n=…, reading" of the paired difference subject − control on ``task``."""
    difference = stats.paired_difference(results.scores(task, subject), results.scores(task, control))
    if difference is None:
        return NOT_RUN
    if difference.low is None:
        return f"{signed(difference.mean)} (one seed, no interval)"
    return (f"{signed(difference.mean)} [{signed(difference.low)}, {signed(difference.high)}], n={difference.n}, "
            f"{reading(difference, label)}")


def difference_row(results: Results, task: str, control: str, subject: str = SUBJECT,
                   label: str = "AutoLoRA") -> list[str]:
    """[control, n, mean d, 95% interval, reading] of d = subject − control over the seeds both have; the reading
    names the subject as ``label``."""
    difference = stats.paired_difference(results.scores(task, subject), results.scores(task, control))
    if difference is None:
        return [control, "0", NOT_RUN, NOT_RUN, NOT_RUN]
    interval = "n/a" if difference.low is None else f"[{signed(difference.low)}, {signed(difference.high)}]"
    return [control, str(difference.n), signed(difference.mean), interval, reading(difference, label)]


def settings_section(results: Results) -> list[str]:
    """Each other AutoLoRA setting (context rows) against uniform r=4 and against ``autolora`` (the search it changes
    one setting of: the paper's ablations read this way), paired as the headline differences."""
    subjects = [name for name in methods.METHODS if name.startswith(SUBJECT + "_")]
    rows = [[subject, task] + difference_row(results, task, REFERENCE, subject, subject)[1:]
            + difference_row(results, task, SUBJECT, subject, subject)[1:]
            for subject in subjects for task in tasks.TASKS if results.seeds(task, subject)]
    header = ["setting", "task"] + [f"{column} (− {control})" for control in (REFERENCE, SUBJECT)
                                    for column in ("n", "mean d", "95% interval", "reading")]
    return ["## Paired differences: other AutoLoRA settings − uniform r=4 and − autolora", "",
            "The context rows that search with other settings (paper preset, sigmoid selection, the paper's "
            "ablations), each against uniform r=4 and against `autolora` (the suite's default search, which each "
            "of them changes), on the seeds both have; tasks without a run are left out.", ""] \
        + (table(header, rows) if rows else [NOT_RUN]) + [""]


def suite_hours(results: Results) -> tuple[float, int, float]:
    """(wall hours of the cells run, number of planned cells not run, their extrapolated hours): a pending cell
    counts its method's mean wall time over the cells run (over every task), or the mean of all cells run when its
    method has none."""
    totals = {name: [r["wall_seconds"]["total"] for r in results.records if r["method"] == name]
              for name in methods.METHODS}
    every = [t for values in totals.values() for t in values]
    pending = [method for task, method, seed in planned_cells() if seed not in results.seeds(task, method)]
    estimate = {name: float(np.mean(values or every or [0.0])) for name, values in totals.items()}
    return sum(every) / 3600, len(pending), sum(estimate[name] for name in pending) / 3600


def setup_section(results: Results, figures_link: str) -> list[str]:
    records = results.records
    planned = len(planned_cells())
    extra = beyond_plan(results)
    extra_count = sum(map(len, extra.values()))
    lines = ["## How these numbers were made", ""]
    commands = sorted({r.get("command") for r in records if r.get("command")})
    lines += ["* Suite: `python -m bench.experiments.run` runs every (task, method, seed) cell without a cached result "
              "(`--filter task=...,method=...,seed=...` runs a part, `--max-minutes M` stops starting cells); "
              "`python -m bench.experiments.report` writes this page. Results: `bench/experiments/results/`."]
    lines += [f"* Commands that produced the cached results: {', '.join(f'`{c}`' for c in commands) or NOT_RUN}."]
    lines += [f"* Seeds: {', '.join(map(str, methods.HEADLINE_SEEDS))} for the headline rows (AutoLoRA, uniform "
              f"r=4, shuffled, EVA, AdaLoRA) on every task, {', '.join(map(str, methods.CONTEXT_SEEDS))} for the "
              f"others, which run on the low-data tasks ({', '.join(methods.CONTEXT_TASKS)}) only, except "
              f"{task_exceptions()}. Planned cells run: {len(records) - extra_count} of {planned}."]
    if extra:
        listed = "; ".join(f"{task} {method} seeds {', '.join(map(str, seeds))}" for (task, method), seeds in
                           extra.items())
        lines[-1] += (f" Run beyond the plan with `--seeds` ({extra_count} cells, included in every table and "
                      f"interval): {listed}.")
    run_hours, pending, pending_hours = suite_hours(results)
    lines += [f"* Wall time: the cells run took {run_hours:.1f} h (one after another, 1 torch thread each); the "
              f"{pending} cells not run yet would take about {pending_hours:.1f} h more (extrapolated from each "
              "method's mean over the cells run)."]
    lines += ["* Model: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), LoRA on query/value of every layer (12 "
              "modules). Tasks: Rotten Tomatoes (accuracy) and WNUT-16 (entity F1), each split 80/10/10 with the "
              f"seed; `_500` keeps {tasks.LOW_DATA_EXAMPLES} training examples; `roget`: the Roget's thesaurus "
              "category of a word or phrase (accuracy, 71 classes, 18,990 training terms), trained and searched "
              "longer (the recipe below), added as a task where rank may matter (the reading says whether it does). "
              "The test split is used only for the final evaluation."]
    if records:
        dates = sorted(r["finished"][:10] for r in records)
        hardware = sorted({r["environment"]["hardware"] for r in records})
        commits = sorted({(r["environment"]["git_commit"] or "unknown")[:10] for r in records})
        dirty = sorted({f for r in records for f in r["environment"]["uncommitted_source_files"]})
        recipes: dict[tuple, set[str]] = {}
        for r in records:
            recipes.setdefault(tuple(sorted(r["recipe"].items())), set()).add(r["task"])
        mixed = sorted(task for task in {r["task"] for r in records}
                       if sum(task in names for names in recipes.values()) > 1)
        lines += [f"* Dates: {dates[0]} to {dates[-1]}.", f"* Hardware: {'; '.join(hardware)}."]
        loads = [r["environment"]["load_average_1min"] for r in records if "load_average_1min" in r["environment"]]
        if loads:
            lines += [f"* Machine load (1-minute load average at the end of a cell, {len(loads)} of {len(records)} "
                      f"cells recorded): {min(loads):.1f} to {max(loads):.1f}; wall times grow with it."]
        lines += [f"* Code: commit(s) {', '.join(commits)}"
                  + (f"; uncommitted library changes while running: {', '.join(dirty)}." if dirty else ".")]
        lines += ["* Recipe (one per task" + (f"; DIFFERENT recipes within {', '.join(mixed)}" if mixed else "")
                  + "): " + "; ".join(f"{', '.join(sorted(names))}: " + ", ".join(f"{k}={v}" for k, v in recipe)
                                      for recipe, names in sorted(recipes.items())) + "."]
    lines += [f"* Figures: `{figures_link}/`.", ""]
    return lines


def scores_section(results: Results) -> list[str]:
    header = ["method"] + [f"{name} ({spec.metric})" for name, spec in tasks.TASKS.items()]
    rows = [[f"{m.name}: {m.description}"] + [score_cell(results, task, m.name) for task in tasks.TASKS]
            for m in methods.METHODS.values()]
    return ["## Test scores", "", "Mean ± standard deviation over seeds of the primary test metric (\"not planned\": "
            "the plan runs this row on other tasks only).", ""] \
        + table(header, rows) + [""]


def differences_section(results: Results) -> list[str]:
    lines = ["## Paired differences: AutoLoRA − control", "",
             "Per seed d = AutoLoRA − control (same seed, same split, same retraining); mean and 95% paired-t "
             "interval over the seeds both have. \"within noise\": the interval contains 0. Each interval holds "
             f"at 95% on its own: of the {len(CONTROLS) * len(tasks.TASKS)} headline comparisons "
             f"({len(CONTROLS)} controls, "
             f"{len(tasks.TASKS)} tasks) about {0.05 * len(CONTROLS) * len(tasks.TASKS):.1f} would exclude 0 by "
             "chance alone with no true difference, and an interval over n = 2 seeds rests on one degree of freedom.",
             ""]
    controls = [m for m in methods.METHODS if m != SUBJECT]
    for task in tasks.TASKS:
        lines += [f"### {task}", ""]
        lines += table(["control", "n", "mean d", "95% interval", "reading"],
                       [difference_row(results, task, control) for control in controls
                        if (task, control) in planned_pairs()]) + [""]
    return lines


def budget_section(results: Results) -> list[str]:
    rows = []
    for m in methods.METHODS.values():
        records = [r for task in tasks.TASKS for r in results.seeds(task, m.name).values()]
        if not records:
            rows.append([m.name, NOT_RUN, NOT_RUN, NOT_RUN])
            continue
        ratios = [r["budget_ratio"] for r in records]
        if not m.budget_matched:
            check = "context row (not matched)"
        elif all(abs(x - 1.0) <= methods.BUDGET_TOLERANCE for x in ratios):
            check = "within ±5%"
        else:
            check = "OUTSIDE ±5%"
        counts = sorted({r["lora_parameters"] for r in records})
        rows.append([m.name, ", ".join(map(str, counts)), f"{min(ratios):.3f}–{max(ratios):.3f}", check])
    return ["## Parameter budget", "",
            "Trainable LoRA parameters (lora_A and lora_B entries; task heads excluded) against uniform r=4 on the "
            "same modules, over all cells run.", ""] \
        + table(["method", "LoRA parameters", "× uniform r=4", "budget"], rows) + [""]


def stability_section(results: Results, figure_links: dict[str, str]) -> list[str]:
    allocating = [m.name for m in methods.METHODS.values() if m.allocates]
    rows = []
    for name in allocating:
        row = [name]
        for task in tasks.TASKS:
            records = results.seeds(task, name)
            if not records:
                row.append(results.missing(task, name))
                continue
            mean, pairs = stats.rank_stability({s: r["ranks"] for s, r in records.items()})
            row.append(f"{fmt(mean, 3)} ({pairs} pairs)")
        rows.append(row)
    lines = ["## Rank stability", "",
             "Mean Spearman correlation between the per-module rank vectors of every pair of seeds (pairs with a "
             "constant rank vector have none and are left out).", ""]
    lines += table(["method"] + list(tasks.TASKS), rows) + [""]
    for task, link in figure_links.items():
        lines += [f"![ranks per seed, {task}]({link})", ""]
    return lines


def readout_ranks(record: dict, score: str) -> dict[str, int] | None:
    """The budget readout by ``score`` ("margin" or "energy") of a cell's recorded search, at the cell's own total
    rank; None when the search did not record that score (cells run before energies were kept)."""
    scores = (record.get("search") or {}).get({"margin": "margins", "energy": "energies"}[score])
    if scores is None:
        return None
    return budget_ranks({name: torch.tensor(values) for name, values in scores.items()}, sum(record["ranks"].values()))


def readouts_section(results: Results) -> list[str]:
    """Rank stability of both budget readouts of the same searches, for every AutoLoRA row and task with at least
    two seeds whose search recorded both scores."""
    rows = []
    for method in (m.name for m in methods.METHODS.values() if m.name.startswith("autolora")):
        for task in tasks.TASKS:
            read = {score: {seed: readout_ranks(r, score) for seed, r in results.seeds(task, method).items()}
                    for score in BUDGET_SCORES}
            both = [seed for seed in read["energy"] if read["energy"][seed] and read["margin"][seed]]
            if len(both) < 2:
                continue
            cells = []
            for score in BUDGET_SCORES:
                mean, pairs = stats.rank_stability({seed: read[score][seed] for seed in both})
                cells.append(f"{fmt(mean, 3)} ({pairs} pairs)")
            used = {r["search"].get("budget_score", "margin") for r in results.seeds(task, method).values()}
            rows.append([method, task, str(len(both)), *cells, ", ".join(sorted(used))])
    lines = ["### The two budget readouts on the same searches", "",
             "Each cell's recorded search read both ways at the cell's own budget (autolora.readout.budget_ranks "
             "over the recorded margins, and over the recorded update energies), and the rank stability of each "
             "readout over the seeds whose search recorded both (cells run before energies were kept are left "
             "out). 'retrained' is the readout whose ranks the cell retrained.", ""]
    if not rows:
        return lines + ["No search has recorded both scores yet.", ""]
    return lines + table(["method", "task", "seeds"] + [f"{score} readout" for score in BUDGET_SCORES]
                         + ["retrained"], rows) + [""]


def cost_section(results: Results) -> list[str]:
    lines = ["## Cost", "",
             "Mean wall time per cell (seconds) of each phase; the total as a multiple of uniform LoRA r=4's on the "
             "same task, and as a multiple of the cell's own retraining and evaluation (one LoRA run at the same "
             "retrain budget, timed in the same process under the same machine load, so less sensitive to the load "
             "than the first ratio; mean over cells). The rank-grid row is extrapolated, not measured.", ""]
    for task in tasks.TASKS:
        reference = results.mean_of(task, REFERENCE, lambda r: r["wall_seconds"]["total"])
        rows = []
        for m in methods.METHODS.values():
            phases = [results.mean_of(task, m.name, lambda r, p=p: r["wall_seconds"][p])
                      for p in ("allocation", "retrain", "eval", "total")]
            if phases[-1] is None:
                if (task, m.name) in planned_pairs():
                    rows.append([m.name] + [NOT_RUN] * 6)
                continue
            ratio = f"{phases[-1] / reference:.2f}" if reference else "n/a"
            own = results.mean_of(task, m.name, own_run_ratio)
            rows.append([m.name] + [f"{p:.1f}" for p in phases] + [ratio, fmt(own, 2)])
        grid = [NOT_RUN] * 6 if reference is None else \
            ["", "", "", f"{GRID_CONFIGURATIONS * reference:.1f}", f"{GRID_CONFIGURATIONS:.2f}",
             f"{GRID_CONFIGURATIONS:.2f}"]
        rows.append([f"LoRA + {GRID_CONFIGURATIONS}-configuration rank grid (extrapolated: "
                     f"{GRID_CONFIGURATIONS} × uniform r=4)"] + grid)
        lines += [f"### {task}", ""]
        lines += table(["method", "allocation", "retrain", "eval", "total", "× uniform r=4",
                        "× own retrain + eval"], rows) + [""]
    return lines


def own_run_ratio(record: dict) -> float | None:
    """total / (retrain + eval) of one cell: its cost as a multiple of one LoRA run at the same retrain budget timed
    in the same process (None for a cell without a retraining phase)."""
    seconds = record["wall_seconds"]
    run = seconds["retrain"] + seconds["eval"]
    return seconds["total"] / run if seconds["retrain"] > 0 else None


def mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def diagnostics_section(results: Results) -> list[str]:
    rows = []
    for name in [m for m in methods.METHODS if m == SUBJECT or m.startswith(SUBJECT + "_")]:
        for task in tasks.TASKS:
            searches = [r["search"] for r in results.seeds(task, name).values() if r.get("search")]
            if not searches:
                if (task, name) in planned_pairs():
                    rows.append([name, task] + [NOT_RUN] * 5)
                continue
            first = mean_or_none(s["train_loss_curve"][0] for s in searches)
            last = mean_or_none(s["train_loss_curve"][-1] for s in searches)
            separation = mean_or_none(max(s["alpha_separation"].values()) for s in searches)
            rows.append([name, task, f"{first:.3f} → {last:.3f}", f"{separation:.2e}",
                         fmt(mean_or_none(s["separated_share"] for s in searches), 2),
                         fmt(mean_or_none(s.get("mixed_share_mean") for s in searches), 3), str(len(searches))])
    return ["## Search diagnostics", "",
            "AutoLoRA's search, mean over seeds: training loss in the first and last tenth of the search, the largest "
            "alpha separation max_j |alpha_j − threshold| over modules, the share of modules whose every component "
            "has |margin| ≥ 3 (ranks read off separated alphas rather than noise), and the mixed (second-order) "
            "term's share of the hypergradient ||mixed|| / (||direct|| + ||mixed||).", ""] \
        + table(["method", "task", "train loss first → last", "alpha separation", "separated share",
                 "mixed share of h", "n"], rows) + [""]


def same_seed_rank_agreement(results: Results, task: str, first: str, second: str) -> tuple[float | None, int]:
    """Mean Spearman, over the seeds both methods have, between their per-module rank vectors of the same seed."""
    a, b = results.seeds(task, first), results.seeds(task, second)
    values = [stats.spearman([a[s]["ranks"][m] for m in a[s]["ranks"]], [b[s]["ranks"][m] for m in a[s]["ranks"]])
              for s in sorted(set(a) & set(b))]
    values = [v for v in values if v is not None]
    return mean_or_none(values), len(values)


def projection_share(results: Results, task: str, method: str, projection: str) -> float | None:
    """Mean over seeds of sum of ranks on the modules of ``projection`` / sum of all ranks (None without
    results)."""
    def share(record: dict) -> float:
        ranks = record["ranks"]
        return sum(r for name, r in ranks.items() if layer_and_projection(name)[1] == projection) / sum(ranks.values())
    return results.mean_of(task, method, share)


def task_reading(results: Results, task: str) -> list[str]:
    """The reading of one task: AutoLoRA against each control, whether rank matters at all on the task (uniform
    r=8 − r=2, r=2 − r=1), whether an adapter does (uniform r=4 − the head alone), whether placement alone does (the
    whole budget on value against on query, and each against uniform r=4; the share each allocation puts on value),
    what the search's diagnostics and rank stability say, first order against finite differences, and the cost."""
    lines = [f"* **{task}**, AutoLoRA − " + "; ".join(
        f"{control}: {difference_text(results, task, SUBJECT, control)}" for control in CONTROLS) + "."]
    for high, low in ((8, 2), (2, 1)):
        if results.seeds(task, f"uniform_r{high}") and results.seeds(task, f"uniform_r{low}"):
            lines.append(f"  * Does rank matter on this task? uniform r={high} − uniform r={low}: "
                         f"{difference_text(results, task, f'uniform_r{high}', f'uniform_r{low}', f'r={high}')}.")
    if results.seeds(task, "uniform_r4") and results.seeds(task, "head_only"):
        lines.append(f"  * Does an adapter matter at all? uniform r=4 − the head alone (no LoRA): "
                     f"{difference_text(results, task, 'uniform_r4', 'head_only', 'r=4')}.")
    if results.seeds(task, "value_only") and results.seeds(task, "query_only"):
        label = {"value_only": "value only", "query_only": "query only", REFERENCE: "uniform r=4"}
        lines.append("  * Does placement alone matter on this task? Every component on one projection, at the budget: "
                     + "; ".join(f"{label[subject]} − {label[control]}: "
                                 f"{difference_text(results, task, subject, control, label[subject])}"
                                 for subject, control in (("value_only", "query_only"), ("value_only", REFERENCE),
                                                          ("query_only", REFERENCE)))
                     + ". Share of the components each allocation puts on value, mean over seeds: "
                     + ", ".join(f"{name} {fmt(share, 2)}" for name in (SUBJECT, "autolora_energy") + CONTROLS[1:]
                                 if (share := projection_share(results, task, name, "value")) is not None) + ".")
    searches = [r["search"] for r in results.seeds(task, SUBJECT).values() if r.get("search")]
    stability = {name: stats.rank_stability({s: r["ranks"] for s, r in results.seeds(task, name).items()})[0]
                 for name in (SUBJECT, "eva", "adalora")}
    if searches:
        lines.append(f"  * The search: {fmt(mean_or_none(s['separated_share'] for s in searches), 2)} of modules "
                     "separated on average (every component's |margin| ≥ 3); ranks across seeds agree with mean "
                     "Spearman " + ", ".join(f"{fmt(value, 2)} ({name})" for name, value in stability.items()) + ".")
    if results.seeds(task, "autolora_first_order"):
        agreement, pairs = same_seed_rank_agreement(results, task, SUBJECT, "autolora_first_order")
        lines.append("  * First-order hypergradient (no mixed term) − finite differences: "
                     f"{difference_text(results, task, 'autolora_first_order', SUBJECT, 'first order')}; the two "
                     f"searches' ranks of the same seed agree with mean Spearman {fmt(agreement, 2)} "
                     f"({pairs} seed{'s' if pairs != 1 else ''}); cost, as a multiple of the cell's own retraining "
                     "and evaluation: " + ", ".join(f"{name} {fmt(results.mean_of(task, name, own_run_ratio), 2)}×"
                                                   for name in (SUBJECT, "autolora_first_order")) + ".")
    return lines


def reading_section(results: Results) -> list[str]:
    """Per task the paired comparisons and what explains them, then which tasks (if any) show AutoLoRA above every
    control with an interval that excludes 0."""
    lines = ["## Reading", ""]
    measured = [task for task in tasks.TASKS if results.seeds(task, SUBJECT)]
    if not measured:
        return lines + ["AutoLoRA has no results yet, so no paired comparison can be read: the rows above that say "
                        f"\"{NOT_RUN}\" are still to be run.", ""]
    for task in measured:
        lines += task_reading(results, task)
    wins = [task for task in measured if all(
        (d := stats.paired_difference(results.scores(task, SUBJECT), results.scores(task, control))) is not None
        and d.low is not None and d.low > 0 for control in CONTROLS)]
    single = [task for task in measured if len(results.seeds(task, SUBJECT)) < 2]
    lines += ["", "AutoLoRA is above every control with a 95% interval that excludes 0 on "
              + (", ".join(wins) if wins else f"none of the {len(measured)} tasks run so far")
              + (f" ({', '.join(single)}: one seed so far, no interval yet)" if single else "") + "."]
    return lines + [""]


def scores_figure(results: Results, path: str) -> None:
    """One panel per task: mean test score per method with ± one standard deviation."""
    names = list(methods.METHODS)
    figure, axes = plt.subplots(1, len(tasks.TASKS), figsize=(4.0 * len(tasks.TASKS), 4.0), layout="constrained",
                                squeeze=False)
    for axis, (task, spec) in zip(axes[0], tasks.TASKS.items()):
        for i, name in enumerate(names):
            scores = list(results.scores(task, name).values())
            if scores:
                mean, std = stats.mean_std(scores)
                axis.errorbar([i], [mean], yerr=[std or 0.0], fmt="o", capsize=3)
                axis.plot([i] * len(scores), scores, ".", color="0.6")
        if not any(results.seeds(task, name) for name in names):
            axis.text(0.5, 0.5, NOT_RUN, ha="center", va="center", transform=axis.transAxes)
        axis.set_xticks(range(len(names)), names, rotation=60, ha="right")
        axis.set_title(task)
        axis.set_ylabel(f"test {spec.metric}")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def module_label(name: str) -> str:
    layer, projection = layer_and_projection(name)
    return projection if layer is None else f"L{layer}.{projection}"


def ranks_figure(results: Results, task: str, path: str) -> bool:
    """Per allocating method a heatmap of ranks, one row per seed and one column per module (the paper's
    Figure 3 for every seed); False when the task has no allocating results."""
    panels = [(m.name, results.seeds(task, m.name)) for m in methods.METHODS.values() if m.allocates]
    panels = [(name, records) for name, records in panels if records]
    if not panels:
        return False
    top = max(rank for _, records in panels for r in records.values() for rank in r["ranks"].values())
    figure, axes = plt.subplots(len(panels), 1, figsize=(8.0, 1.2 + 1.0 * len(panels) + 0.25 * sum(
        len(records) for _, records in panels)), layout="constrained", squeeze=False)
    for axis, (name, records) in zip(axes[:, 0], panels):
        seeds = sorted(records)
        modules = list(records[seeds[0]]["ranks"])
        grid = np.array([[records[s]["ranks"].get(m, np.nan) for m in modules] for s in seeds], dtype=float)
        image = axis.imshow(grid, cmap="viridis", vmin=0, vmax=top, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                axis.text(j, i, str(int(value)), ha="center", va="center", color="w" if value < top / 2 else "k",
                          fontsize=8)
        axis.set_yticks(range(len(seeds)), [f"seed {s}" for s in seeds])
        axis.set_xticks(range(len(modules)), [module_label(m) for m in modules], rotation=60, ha="right",
                        fontsize=8)
        axis.set_title(f"{task}: {name}")
        figure.colorbar(image, ax=axis, label="rank")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_report(results_root: str, output: str, figures: str) -> str:
    """Write the results page and its figures from the results under ``results_root``; return the page's text."""
    results = Results(cache.load_results(results_root))
    os.makedirs(figures, exist_ok=True)
    link = os.path.relpath(figures, os.path.dirname(os.path.abspath(output)))
    rank_links = {}
    for task in tasks.TASKS:
        name = f"results_ranks_{task}.png"
        if ranks_figure(results, task, os.path.join(figures, name)):
            rank_links[task] = f"{link}/{name}"
    lines = ["# Experiment results: AutoLoRA against uniform LoRA, a shuffled control, EVA and AdaLoRA", "",
             "Generated by `python -m bench.experiments.report` from the cached results in "
             "`bench/experiments/results/`; do not edit by hand.", ""]
    lines += setup_section(results, link)
    lines += scores_section(results)
    if results.records:
        scores_figure(results, os.path.join(figures, "results_scores.png"))
        lines += [f"![test scores per method]({link}/results_scores.png)", ""]
    lines += differences_section(results) + settings_section(results) + budget_section(results) \
        + stability_section(results, rank_links) + readouts_section(results)
    lines += cost_section(results) + diagnostics_section(results) + reading_section(results)
    text = "\n".join(lines)
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=cache.RESULTS_ROOT)
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    parser.add_argument("--figures", default=DEFAULT_FIGURES)
    args = parser.parse_args(argv)
    write_report(args.results, args.output, args.figures)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
