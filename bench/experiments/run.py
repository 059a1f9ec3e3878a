"""The suite's one command: run every (task, method, seed) cell that has no cached result yet.

    python -m bench.experiments.run [--filter task=...,method=...,seed=...] [--seeds 0 1 ...] [--max-minutes M]
                                    [--results DIR] [--list]

Cells run in this order: the headline methods (AutoLoRA, uniform r=4, shuffled, EVA, AdaLoRA) on every task and
seed first, seed by seed, then the context rows (on the low-data tasks; uniform r=2 and r=8 on every task).
``--filter`` keeps the cells whose task, method and seed are among the listed values (a key given several times
accepts any of its values: ``method=eva,method=uniform_r4``). ``--seeds`` replaces the default seeds (5 for headline
methods, 3 for the others). A cell whose result file exists is skipped, so an interrupted or partial run resumes
where it stopped; a finished cell's JSON is written atomically. After ``--max-minutes`` no new cell is started (the
one in flight finishes). A cell that fails is reported with its traceback, the others still run, and the exit
status is 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from importlib import metadata
from typing import Sequence

import torch

import autolora
from bench.hardware import cpu_model

from . import cache, methods, tasks

FILTER_KEYS = ("task", "method", "seed")
PACKAGES = ("torch", "transformers", "peft", "numpy", "scipy", "datasets")
SOURCE_DIRS = ("autolora", "hypergrad", "csrc")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_filter(text: str | None) -> dict[str, set[str]]:
    """``"task=a,method=b,method=c"`` -> {"task": {"a"}, "method": {"b", "c"}}; values are checked against the
    suite's tasks and methods, seeds must be integers."""
    selected: dict[str, set[str]] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in FILTER_KEYS or not value:
            raise ValueError(f"--filter entry {item!r}: expected key=value with key one of {FILTER_KEYS}")
        if key == "task":
            tasks.task_spec(value)
        elif key == "method":
            methods.method_spec(value)
        elif not value.isdigit():
            raise ValueError(f"--filter seed={value!r}: seeds are non-negative integers")
        selected.setdefault(key, set()).add(str(int(value)) if key == "seed" else value)
    return selected


def plan(selected: dict[str, set[str]], seeds: Sequence[int] | None = None) -> list[tuple[str, str, int]]:
    """The (task, method, seed) cells in run order, restricted by ``selected`` (see :func:`parse_filter`)."""
    cells = []
    for tier in (True, False):
        chosen = [m for m in methods.METHODS.values() if m.headline == tier]
        for task in tasks.TASKS:
            for seed in sorted({s for m in chosen for s in (seeds if seeds is not None else m.seeds)}):
                for method in chosen:
                    if task not in method.task_names or (seeds is None and seed not in method.seeds):
                        continue
                    cell = {"task": task, "method": method.name, "seed": str(seed)}
                    if all(cell[key] in values for key, values in selected.items()):
                        cells.append((task, method.name, seed))
    return cells


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def environment() -> dict:
    """Package versions, the git commit and the uncommitted changes to the library's sources, the machine and its
    1-minute load average (other processes on a shared machine lengthen the wall times)."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "versions": versions,
        "git_commit": git("rev-parse", "HEAD").strip() or None,
        "uncommitted_source_files": sorted(line[3:] for line in git("status", "--porcelain", "--", *SOURCE_DIRS)
                                           .splitlines()),
        "hardware": f"{cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads",
        "load_average_1min": os.getloadavg()[0],
        "autolora_ops_backend": autolora.ops.backend(),
    }


class Loaded:
    """The tokenizer and the last tokenised (task, seed), loaded once for consecutive cells that share them."""

    def __init__(self):
        self.key = None
        self.data = None
        self.tokenizer = None

    def task(self, task: str, seed: int, max_length: int):
        if self.tokenizer is None:
            self.tokenizer = tasks.load_tokenizer()
        if self.key != (task, seed, max_length):
            self.data = tasks.load_task(tasks.task_spec(task), self.tokenizer, seed, max_length)
            self.key = (task, seed, max_length)
        return self.data


def run_cell(task: str, method: str, seed: int, *, recipe: methods.Recipe, results_root: str,
             loaded: Loaded | None = None) -> dict:
    """Run one cell (allocation, retraining, evaluation on the test split) and return its result record; the task's
    recipe changes (``TaskSpec.recipe``) apply to ``recipe``."""
    spec, chosen = tasks.task_spec(task), methods.method_spec(method)
    recipe = spec.recipe(recipe)
    loaded = loaded or Loaded()
    data = loaded.task(task, seed, recipe.max_length)
    training_only = dataclasses.replace(data, validation=None, test=None)  # methods never see the held-out splits
    cell = methods.Cell(spec, seed, training_only, loaded.tokenizer, recipe, results_root)
    outcome = chosen.run(cell)
    with cell.phase("eval"):
        test = autolora.evaluate(outcome.model, data.test, task_type=data.task_type, label_names=data.label_names,
                                 tokenizer=cell.tokenizer)
    reference = methods.reference_parameter_count(cell.shapes, recipe.reference_rank)
    lora = methods.lora_parameter_count(outcome.model)
    seconds = {phase: cell.seconds.get(phase, 0.0) for phase in ("allocation", "retrain", "eval")}
    return {
        "task": task, "method": method, "seed": seed,
        "metric": spec.metric, "test": test,
        "ranks": outcome.ranks,
        "lora_parameters": lora,
        "reference_lora_parameters": reference,
        "budget_ratio": lora / reference,
        "budget_matched": chosen.budget_matched,
        "trainable_parameters": methods.trainable_parameter_count(outcome.model),
        "examples": {"train": len(data.train), "test": len(data.test)},
        "wall_seconds": {**seconds, "total": sum(seconds.values())},
        "search": outcome.search,
        "recipe": recipe.as_dict(),
        "environment": environment(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def check_budget(record: dict) -> str | None:
    """A warning when a budget-matched method's LoRA parameters differ from the reference by more than 5%."""
    if record["budget_matched"] and abs(record["budget_ratio"] - 1.0) > methods.BUDGET_TOLERANCE:
        return (f"{record['method']} trains {record['lora_parameters']} LoRA parameters, "
                f"{record['budget_ratio']:.3f} x the reference {record['reference_lora_parameters']}")
    return None


def run(cells: Sequence[tuple[str, str, int]], *, results_root: str, max_minutes: float | None,
        recipe: methods.Recipe = methods.RECIPE, command: str = "", out=sys.stdout) -> dict[str, list]:
    """Run the cells without a cached result, in order, until ``max_minutes`` have passed; print and return what
    was run, skipped, failed and not started. ``command`` (the command line) is recorded in every result."""
    deadline = None if max_minutes is None else time.monotonic() + 60.0 * max_minutes
    loaded = Loaded()
    summary = {"ran": [], "skipped": [], "failed": [], "not_started": []}
    for index, (task, method, seed) in enumerate(cells):
        name = f"{task}/{method}/seed{seed}"
        if cache.read_result(results_root, task, method, seed) is not None:
            summary["skipped"].append(name)
            print(f"skip  {name}: cached", file=out, flush=True)
            continue
        if deadline is not None and time.monotonic() >= deadline:
            summary["not_started"] = [f"{t}/{m}/seed{s}" for t, m, s in cells[index:]
                                      if cache.read_result(results_root, t, m, s) is None]
            print(f"stop: --max-minutes {max_minutes:g} reached; {len(summary['not_started'])} cells not started",
                  file=out, flush=True)
            break
        try:
            record = run_cell(task, method, seed, recipe=recipe, results_root=results_root, loaded=loaded)
        except methods.MissingInput as err:
            summary["skipped"].append(name)
            print(f"skip  {name}: {err}", file=out, flush=True)
            continue
        except Exception:
            summary["failed"].append(name)
            print(f"FAIL  {name}:\n{traceback.format_exc()}", file=out, flush=True)
            continue
        path = cache.write_result(results_root, {**record, "command": command})
        summary["ran"].append(name)
        seconds = record["wall_seconds"]
        print(f"ran   {name}: {record['metric']} {record['test'][record['metric']]:.4f}, "
              f"{seconds['total']:.1f} s (allocation {seconds['allocation']:.1f}, retrain {seconds['retrain']:.1f}, "
              f"eval {seconds['eval']:.1f}) -> {os.path.relpath(path)}", file=out, flush=True)
        warning = check_budget(record)
        if warning:
            print(f"WARNING budget: {warning}", file=out, flush=True)
    print(f"done: {len(summary['ran'])} ran, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed, "
          f"{len(summary['not_started'])} not started", file=out, flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.run",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", help="comma-separated key=value with key task, method or seed")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds for every method (default 5 headline, 3 others)")
    parser.add_argument("--max-minutes", type=float, help="start no new cell after this many minutes")
    parser.add_argument("--results", default=cache.RESULTS_ROOT, help="results folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--list", action="store_true", help="print the selected cells and whether they are cached")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cells = plan(parse_filter(args.filter), args.seeds)
    except ValueError as err:
        parser.error(str(err))
    if args.seeds is not None and min(args.seeds) < 0:
        parser.error("--seeds must be non-negative")
    if args.max_minutes is not None and args.max_minutes < 0:
        parser.error("--max-minutes must be >= 0")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if not cells:
        parser.error(f"--filter {args.filter!r} selects no cell "
                     f"(most context rows run on {', '.join(methods.CONTEXT_TASKS)} only)")
    if args.list:
        for task, method, seed in cells:
            cached = cache.read_result(args.results, task, method, seed) is not None
            print(f"{'cached ' if cached else 'pending'} {task}/{method}/seed{seed}")
        return 0
    command = shlex.join(["python", "-m", "bench.experiments.run", *(sys.argv[1:] if argv is None else argv)])
    summary = run(cells, results_root=args.results, max_minutes=args.max_minutes, command=command)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
