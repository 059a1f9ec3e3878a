"""The experiment suite (bench/experiments) on a tiny random BERT and tiny synthetic tasks: caching and resume,
filters, atomic results, the statistics against independent oracles, the shuffle control, budget matching, and
the generated report."""
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import types

import numpy as np
import pytest
from scipy import stats as scipy_stats

from autolora.data import RawSplit, RawTask, tokenize_task
from tiny_models import tiny_bert, tiny_bert_token_classifier
from tiny_tokenizer import WORDS, tiny_tokenizer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: bench/

from bench.experiments import cache, methods, report, run, stats, tasks  # noqa: E402

RECIPE = methods.Recipe(max_length=16, batch_size=4, retrain_steps=2, search_steps=4)
WORD_LIST = [w for w in WORDS if w.isalpha()]
TASK = "rotten_tomatoes_500"
BUDGET_MATCHED = [m.name for m in methods.METHODS.values() if m.budget_matched]


def synthetic_task(task_type, seed, tokenizer, max_length):
    """A learnable tiny task: sentiment words decide the class; "paris"/"york" are tagged B-loc."""
    rng = random.Random(seed)

    def split(n):
        texts, labels = [], []
        for _ in range(n):
            words = [rng.choice(WORD_LIST) for _ in range(6)]
            if task_type == "classification":
                texts.append(" ".join(words))
                labels.append(int(any(w in ("good", "great", "love", "fun") for w in words)))
            else:
                texts.append(words)
                labels.append([int(w in ("paris", "york")) for w in words])
        return RawSplit(texts, labels)

    names = ["negative", "positive"] if task_type == "classification" else ["O", "B-loc"]
    raw = RawTask(task_type, 2, names, {"train": split(24), "validation": split(6), "test": split(8)})
    return tokenize_task(raw, tokenizer, max_length=max_length)


def tiny_model(data, seed):
    factory = tiny_bert_token_classifier if data.task_type == "token-classification" else tiny_bert
    return factory(num_labels=data.num_labels, seed=seed)


def patch_loaders(patcher, tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    patcher.setattr(tasks, "load_tokenizer", lambda: tokenizer)
    patcher.setattr(tasks, "load_task", lambda spec, tok, seed, max_length:
                    synthetic_task(spec.task_type, seed, tok, max_length))
    patcher.setattr(tasks, "load_model", tiny_model)


@pytest.fixture
def tiny_suite(monkeypatch, tmp_path):
    """Loaders patched to the tiny model and task; returns a fresh results folder."""
    patch_loaders(monkeypatch, tmp_path)
    return str(tmp_path / "results")


def run_cells(root, filter_text, seeds=(0,), max_minutes=None):
    return run.run(run.plan(run.parse_filter(filter_text), list(seeds)), results_root=root,
                   max_minutes=max_minutes, recipe=RECIPE, command="test")


def files_under(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def target_shapes_from_weights(model):
    """{query/value module: (d_in, d_out)} read off the nn.Linear weights (d_out x d_in) of a model without adapters."""
    return {name: (module.weight.shape[1], module.weight.shape[0]) for name, module in model.named_modules()
            if name.endswith(("attention.self.query", "attention.self.value"))}


def replace_run(monkeypatch, name, function):
    """Make method ``name`` run ``function(cell)`` for the rest of the test."""
    monkeypatch.setitem(methods.METHODS, name, dataclasses.replace(methods.METHODS[name], run=function))


def write_autolora_ranks(root, ranks, seed=0):
    """A cached AutoLoRA result holding only what the shuffled control reads."""
    cache.write_result(root, {"task": TASK, "method": "autolora", "seed": seed, "ranks": ranks})


# ------------------------------------------------------------------------------------------- caching and resume

def test_cell_is_written_once_and_skipped_on_rerun(tiny_suite, monkeypatch):
    first = run_cells(tiny_suite, f"task={TASK},method=uniform_r4")
    assert first["ran"] == [f"{TASK}/uniform_r4/seed0"]
    path = cache.result_path(tiny_suite, TASK, "uniform_r4", 0)
    record = json.loads(open(path).read())
    assert (record["task"], record["method"], record["seed"]) == (TASK, "uniform_r4", 0)
    assert set(record["test"]) == {"accuracy", "f1", "matthews_corrcoef"} and record["metric"] == "accuracy"
    assert set(record["ranks"].values()) == {4} and len(record["ranks"]) == 4
    assert set(record["wall_seconds"]) == {"allocation", "retrain", "eval", "total"}
    assert record["recipe"]["retrain_steps"] == RECIPE.retrain_steps and record["command"] == "test"
    assert {"versions", "git_commit", "hardware", "load_average_1min"} <= set(record["environment"])
    before = open(path).read()

    def must_not_run(cell):
        raise AssertionError("a cached cell was run again")
    replace_run(monkeypatch, "uniform_r4", must_not_run)
    second = run_cells(tiny_suite, f"task={TASK},method=uniform_r4")
    assert second["ran"] == [] and second["skipped"] == [f"{TASK}/uniform_r4/seed0"]
    assert open(path).read() == before


# per task 5 headline rows x 5 seeds + uniform r=2, r=8 x 3; 14 context rows x 3 on the 2 low-data tasks, less
# autolora_long_energy on wnut16_500; autolora_energy, value_only and query_only x 3 on roget
PLANNED_CELLS = len(tasks.TASKS) * (5 * 5 + 2 * 3) + 2 * 14 * 3 - 3 + 3 * 3


def test_filter_selects_cells_in_run_order():
    cells = run.plan(run.parse_filter("task=wnut16_500,method=eva,method=uniform_r4,seed=1,seed=0"))
    assert cells == [("wnut16_500", "uniform_r4", 0), ("wnut16_500", "eva", 0),
                     ("wnut16_500", "uniform_r4", 1), ("wnut16_500", "eva", 1)]
    context = run.plan(run.parse_filter("task=wnut16_500,method=uniform_r8"))
    assert [seed for _, _, seed in context] == [0, 1, 2]
    assert run.plan(run.parse_filter("task=wnut16,method=eva_init")) == []  # context rows: low-data tasks only
    assert [seed for _, _, seed in run.plan(run.parse_filter("task=wnut16,method=uniform_r8"))] == [0, 1, 2]
    headline = run.plan(run.parse_filter("task=wnut16,method=adalora"))
    assert [seed for _, _, seed in headline] == [0, 1, 2, 3, 4]
    assert run.plan(run.parse_filter("method=shuffled"), seeds=[7]) == [(t, "shuffled", 7) for t in tasks.TASKS]
    assert [t for t, _, _ in run.plan(run.parse_filter("method=autolora_energy"))] == \
        ["rotten_tomatoes_500"] * 3 + ["wnut16_500"] * 3 + ["roget"] * 3  # its on_tasks
    assert [t for t, _, _ in run.plan(run.parse_filter("method=autolora_long_energy"))] == ["rotten_tomatoes_500"] * 3
    assert run.plan(run.parse_filter("task=roget,method=autolora_first_order")) == []
    everything = run.plan({})
    assert len(everything) == PLANNED_CELLS
    assert everything.index(("wnut16_500", "adalora", 4)) < everything.index(("rotten_tomatoes_500", "uniform_r2", 0))


@pytest.mark.parametrize("text, message", [("task=sst3", "unknown task"), ("method=lora", "unknown method"),
                                           ("seed=x", "non-negative integers"), ("size=5", "key=value"),
                                           ("task", "key=value")])
def test_filter_rejects_unknown_keys_and_values(text, message):
    with pytest.raises(ValueError, match=message):
        run.parse_filter(text)


def test_a_row_on_an_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown tasks \\['sst3'\\]"):
        methods.Method("x", methods.uniform_method(4), False, True, False, "x", on_tasks=("wnut16", "sst3"))


def test_report_lists_the_rows_on_other_tasks_with_their_reasons():
    listed = report.task_exceptions()
    assert "uniform_r8 on every task (whether rank matters at all)" in listed
    assert "autolora_energy on rotten_tomatoes_500, wnut16_500, roget (" in listed
    assert "autolora_long_energy on rotten_tomatoes_500 (" in listed
    assert "autolora_paper" not in listed  # the default tasks of a context row


def test_filter_that_selects_nothing_is_refused(capsys):
    with pytest.raises(SystemExit):
        run.main(["--filter", "task=rotten_tomatoes,method=full_ft", "--list"])
    assert "selects no cell" in capsys.readouterr().err


def test_interrupted_cell_leaves_no_result(tiny_suite, monkeypatch):
    def interrupted(cell):
        raise KeyboardInterrupt
    replace_run(monkeypatch, "uniform_r2", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_cells(tiny_suite, f"task={TASK},method=uniform_r2")
    assert not os.path.exists(tiny_suite) or files_under(tiny_suite) == []


def test_interrupt_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    root = str(tmp_path)

    def replace_interrupted(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", replace_interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.write_result(root, {"task": TASK, "method": "eva", "seed": 3, "test": {"accuracy": 0.5}})
    assert files_under(root) == []
    assert cache.read_result(root, TASK, "eva", 3) is None


def test_max_minutes_stops_starting_cells(tiny_suite):
    summary = run_cells(tiny_suite, f"task={TASK},method=uniform_r4,method=uniform_r2", max_minutes=0)
    assert summary["ran"] == []
    assert summary["not_started"] == [f"{TASK}/uniform_r4/seed0", f"{TASK}/uniform_r2/seed0"]
    assert not os.path.exists(tiny_suite) or files_under(tiny_suite) == []


def test_result_in_the_wrong_place_is_refused(tmp_path):
    path = cache.write_result(str(tmp_path), {"task": TASK, "method": "eva", "seed": 0})
    os.rename(path, os.path.join(os.path.dirname(path), "seed1.json"))
    with pytest.raises(ValueError, match="belongs at"):
        cache.load_results(str(tmp_path))


# ------------------------------------------------------------------------------------------------ statistics

def test_paired_difference_is_the_paired_t_interval():
    a = {0: 0.81, 1: 0.79, 2: 0.84, 3: 0.80, 4: 0.83, 9: 0.5}
    b = {0: 0.80, 1: 0.80, 2: 0.81, 3: 0.78, 4: 0.80, 7: 0.9}
    d = [a[s] - b[s] for s in range(5)]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    half = scipy_stats.t.ppf(0.975, df=4) * sd / math.sqrt(5)
    result = stats.paired_difference(a, b)
    assert result.n == 5
    assert result.mean == pytest.approx(mean, abs=1e-12)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half), abs=1e-12)
    reference = scipy_stats.ttest_rel([a[s] for s in range(5)], [b[s] for s in range(5)]).confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert result.within_noise == (result.low <= 0 <= result.high)


def test_paired_difference_with_one_seed_has_no_interval():
    result = stats.paired_difference({0: 0.9, 1: 0.7}, {1: 0.6})
    assert (result.n, result.low, result.high, result.within_noise) == (1, None, None, None)
    assert result.mean == pytest.approx(0.1)
    assert report.reading(result) == "n/a (one seed)"
    assert stats.paired_difference({0: 0.9}, {1: 0.6}) is None


def test_rank_stability_hand_example():
    modules = ["m0", "m1", "m2", "m3"]
    seeds = {0: [1, 2, 3, 4], 1: [1, 2, 4, 3], 2: [4, 3, 2, 1], 3: [4, 4, 4, 4]}
    # rho = 1 - 6 sum d^2 / (n (n^2 - 1)): seeds 0-1: d^2 sum 2 -> 0.8; 0-2: -1; 1-2: d = (-3, -1, 2, 2) -> -0.8;
    # seed 3 is constant (no correlation) and enters no pair.
    mean, pairs = stats.rank_stability({s: dict(zip(modules, r)) for s, r in seeds.items()})
    assert pairs == 3
    assert mean == pytest.approx((0.8 - 1.0 - 0.8) / 3, abs=1e-12)


def test_spearman_with_ties_is_pearson_of_average_ranks():
    x, y = [2, 2, 5, 7, 7, 7], [1, 3, 2, 6, 5, 4]
    average_ranks_x = [1.5, 1.5, 3, 5, 5, 5]  # ties share the mean of the ranks they occupy
    assert stats.spearman(x, y) == pytest.approx(np.corrcoef(average_ranks_x, y)[0, 1], abs=1e-12)
    assert stats.spearman([3, 3, 3], [1, 2, 3]) is None


def test_mean_std_uses_sample_deviation():
    mean, std = stats.mean_std([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)
    assert stats.mean_std([0.4]) == (0.4, None)


# --------------------------------------------------------------------------------- methods and parameter budget

def test_shuffled_control_keeps_the_histogram(tiny_suite):
    planted = {f"bert.encoder.layer.{i}.attention.self.{p}": r
               for (i, p), r in zip([(0, "query"), (0, "value"), (1, "query"), (1, "value")], [1, 3, 5, 7])}
    for seed in (0, 1):
        write_autolora_ranks(tiny_suite, planted, seed)
    summary = run_cells(tiny_suite, f"task={TASK},method=shuffled", seeds=(0, 1))
    assert len(summary["ran"]) == 2
    for seed in (0, 1):
        ranks = cache.read_result(tiny_suite, TASK, "shuffled", seed)["ranks"]
        assert set(ranks) == set(planted)
        assert sorted(ranks.values()) == [1, 3, 5, 7]


def test_shuffled_control_without_autolora_result_is_skipped(tiny_suite):
    summary = run_cells(tiny_suite, f"task={TASK},method=shuffled")
    assert summary["skipped"] == [f"{TASK}/shuffled/seed0"] and summary["ran"] == []
    assert cache.read_result(tiny_suite, TASK, "shuffled", 0) is None


@pytest.fixture(scope="module")
def budget_results(tmp_path_factory):
    """Every budget-matched method on the tiny classification task, seed 0 (the shuffled control reads the
    AutoLoRA result of the same run; the rows planned on other tasks only run on it too)."""
    tmp = tmp_path_factory.mktemp("budget")
    with pytest.MonkeyPatch.context() as patcher:
        patch_loaders(patcher, tmp)
        for name in BUDGET_MATCHED:
            if TASK not in methods.METHODS[name].task_names:
                patcher.setitem(methods.METHODS, name, dataclasses.replace(methods.METHODS[name], on_tasks=(TASK,)))
        root = str(tmp / "results")
        summary = run_cells(root, f"task={TASK}," + ",".join(f"method={m}" for m in BUDGET_MATCHED))
    assert summary["failed"] == []
    return root


@pytest.mark.parametrize("method", BUDGET_MATCHED)
def test_budget_matched_methods_train_the_reference_parameter_count(budget_results, method):
    record = cache.read_result(budget_results, TASK, method, 0)
    shapes = target_shapes_from_weights(tiny_bert(num_labels=2))
    reference = sum(4 * (d_in + d_out) for d_in, d_out in shapes.values())
    assert set(record["ranks"]) == set(shapes)
    count = sum(record["ranks"][name] * (d_in + d_out) for name, (d_in, d_out) in shapes.items())
    assert record["lora_parameters"] == count
    assert record["reference_lora_parameters"] == reference
    assert abs(count / reference - 1.0) <= 0.05
    assert record["budget_ratio"] == pytest.approx(count / reference)
    if method != "adalora":  # AdaLoRA may mask a few more triplets than its budget on ties of importance
        assert count == reference


def test_fixed_placements_put_the_whole_budget_on_one_projection(budget_results):
    # the tiny BERT: 2 layers x (query, value) = 4 modules, 4 x 4 = 16 components: r = 8 on each of the 2 chosen
    for method, kept in (("value_only", "value"), ("query_only", "query")):
        ranks = cache.read_result(budget_results, TASK, method, 0)["ranks"]
        assert ranks == {f"bert.encoder.layer.{layer}.attention.self.{projection}": 8 if projection == kept else 0
                         for layer in (0, 1) for projection in ("query", "value")}


@pytest.mark.parametrize("projection, shapes, message", [
    ("key", {"l.0.query": (8, 8), "l.0.value": (8, 8)}, "over the 0 'key' modules"),
    ("value", {"l.0.query": (8, 8), "l.1.query": (8, 8), "l.0.value": (8, 8), "l.1.value": (8, 8),
               "l.2.value": (8, 8)}, "20 components do not spread evenly over the 3 'value' modules")])
def test_a_placement_that_cannot_hold_the_budget_evenly_is_refused(projection, shapes, message):
    cell = types.SimpleNamespace(shapes=shapes, recipe=RECIPE, base_model=lambda: None)
    with pytest.raises(ValueError, match=message):
        methods.placement_method(projection)(cell)


@pytest.mark.parametrize("method, preset", [("autolora", "default"), ("autolora_paper", "paper")])
def test_autolora_cells_carry_their_search_diagnostics(budget_results, method, preset):
    search = cache.read_result(budget_results, TASK, method, 0)["search"]
    assert search["preset"] == preset
    assert len(search["train_loss_curve"]) == RECIPE.search_steps  # fewer steps than windows: one mean per step
    assert set(search["alpha_separation"]) == set(search["ranks"]) and "verdict" in search


def test_long_row_searches_six_times_the_recipes_steps_and_reads_energies(tiny_suite, monkeypatch):
    steps, search = [], methods.autolora.search
    monkeypatch.setattr(methods.autolora, "search", lambda *args, **kwargs: steps.append(kwargs["steps"]) or
                        search(*args, **kwargs))
    root = tiny_suite
    assert run_cells(root, f"task={TASK},method=autolora_first_order,method=autolora_long_energy")["failed"] == []
    assert steps == [RECIPE.search_steps, 6 * RECIPE.search_steps]
    long = cache.read_result(root, TASK, "autolora_long_energy", 0)["search"]
    assert long["search_steps"] == 6 * RECIPE.search_steps
    assert long["budget_score"] == "energy" and long["options"] == {"method": "first_order"}


def test_readouts_section_reads_both_scores_of_the_same_searches():
    # Budget 6 over 3 modules of 4 components: the best component of each module, then the 3 best others.
    # These energies read a:3, b:2, c:1 on every seed; the margins read that on seeds 0 and 2, the reverse on 1.
    forward = {"a": [10.0, 9.0, 8.0, 0.0], "b": [5.0, 4.0, 0.0, 0.0], "c": [3.0, 0.0, 0.0, 0.0]}
    backward = {"a": forward["c"], "b": forward["b"], "c": forward["a"]}

    def record(seed, margins, energies=None):
        search = {"margins": margins, "budget_score": "energy", **({"energies": energies} if energies else {})}
        return {"task": "wnut16_500", "method": "autolora_long_energy", "seed": seed, "search": search,
                "ranks": {"a": 2, "b": 2, "c": 2}}
    results = report.Results([record(0, forward, forward), record(1, backward, forward), record(2, forward, forward),
                              record(3, backward)])  # seed 3 recorded no energies: left out
    assert report.readout_ranks(results.seeds("wnut16_500", "autolora_long_energy")[1], "margin") == \
        {"a": 1, "b": 2, "c": 3}
    assert report.readout_ranks(results.seeds("wnut16_500", "autolora_long_energy")[3], "energy") is None
    rows = [line for line in report.readouts_section(results) if line.startswith("| autolora_long_energy |")]
    # margin pairs (0,1), (0,2), (1,2): -1, +1, -1 -> -1/3; energy: +1 for every pair
    assert rows == ["| autolora_long_energy | wnut16_500 | 3 | -0.333 (3 pairs) | 1.000 (3 pairs) | energy |"]
    assert report.readouts_section(report.Results([record(0, forward, forward)]))[-2] == \
        "No search has recorded both scores yet."


def test_energy_row_reads_its_ranks_off_the_searched_update_energies(budget_results):
    record = cache.read_result(budget_results, TASK, "autolora_sigmoid_energy", 0)
    search, ranks = record["search"], record["ranks"]
    assert search["budget_score"] == "energy" and search["selection"] == "sigmoid"
    assert search["options"] == {"method": "first_order", "weight_lr": 1e-3}
    kept = [e for name, r in ranks.items() for e in search["energies"][name][1:r]]
    dropped = [e for name, r in ranks.items() for e in search["energies"][name][r:]]
    assert kept and dropped and min(kept) >= max(dropped)
    assert cache.read_result(budget_results, TASK, "autolora", 0)["search"]["budget_score"] == "margin"


def test_context_rows_report_their_own_budget(tiny_suite):
    run_cells(tiny_suite, f"task={TASK},method=uniform_r8,method=full_ft,method=head_only")
    shapes = target_shapes_from_weights(tiny_bert(num_labels=2))
    uniform8 = cache.read_result(tiny_suite, TASK, "uniform_r8", 0)
    assert uniform8["lora_parameters"] == sum(8 * (a + b) for a, b in shapes.values())
    assert uniform8["budget_ratio"] == pytest.approx(2.0)
    full = cache.read_result(tiny_suite, TASK, "full_ft", 0)
    assert full["lora_parameters"] == 0 and full["ranks"] is None
    assert full["trainable_parameters"] == sum(p.numel() for p in tiny_bert(num_labels=2).parameters())
    head = cache.read_result(tiny_suite, TASK, "head_only", 0)
    assert head["lora_parameters"] == 0 and head["ranks"] is None
    assert head["trainable_parameters"] == sum(p.numel() for p in tiny_bert(num_labels=2).classifier.parameters())


def test_token_classification_cell_reports_entity_f1(tiny_suite):
    run_cells(tiny_suite, "task=wnut16_500,method=eva")
    record = cache.read_result(tiny_suite, "wnut16_500", "eva", 0)
    assert record["metric"] == "f1" and set(record["test"]) == {"f1", "precision", "recall", "accuracy"}
    assert sum(record["ranks"].values()) == 16


def test_methods_see_no_held_out_split(tiny_suite, monkeypatch):
    seen = []

    def inspect(cell):
        seen.append((cell.data.validation, cell.data.test, len(cell.data.train)))
        return methods.Outcome(cell.base_model(), None)
    replace_run(monkeypatch, "full_ft", inspect)
    run_cells(tiny_suite, f"task={TASK},method=full_ft")
    assert seen == [(None, None, 24)]
    assert cache.read_result(tiny_suite, TASK, "full_ft", 0)["examples"] == {"train": 24, "test": 8}


# ------------------------------------------------------------------------------------------------------ report

def scored(record, seed, value):
    return {**record, "seed": seed, "test": {**record["test"], record["metric"]: value}}


def test_report_reads_intervals_and_marks_missing_rows(budget_results, tmp_path):
    root = str(tmp_path / "results")
    template = cache.read_result(budget_results, TASK, "uniform_r4", 0)
    subject = [0.80, 0.82, 0.78]
    for seed, (s, u, e) in enumerate(zip(subject, [0.81, 0.80, 0.79], [0.70, 0.71, 0.69])):
        cache.write_result(root, scored(cache.read_result(budget_results, TASK, "autolora", 0), seed, s))
        cache.write_result(root, scored(template, seed, u))
        cache.write_result(root, scored(cache.read_result(budget_results, TASK, "eva", 0), seed, e))
    output = tmp_path / "docs" / "results.md"
    output.parent.mkdir()
    text = report.write_report(root, str(output), str(tmp_path / "docs" / "figures"))
    assert output.read_text() == text
    section = text.split(f"### {TASK}")[1].split("###")[0]
    uniform_row = next(line for line in section.splitlines() if line.startswith("| uniform_r4 |"))
    eva_row = next(line for line in section.splitlines() if line.startswith("| eva |"))
    adalora_row = next(line for line in section.splitlines() if line.startswith("| adalora |"))
    assert uniform_row.endswith("| within noise |") and "| 3 |" in uniform_row
    assert eva_row.endswith("| AutoLoRA higher |")
    assert adalora_row.endswith(f"| {report.NOT_RUN} |")
    assert "0.8000 ± 0.0200 (n=3)" in text
    # context rows run on the low-data tasks only: the full-size tasks' tables say so instead of "not run yet"
    full_size = text.split("### rotten_tomatoes\n")[1].split("###")[0]
    assert "| uniform_r4 |" in full_size and "| uniform_r8 |" in full_size and "autolora_paper" not in full_size
    scores_row = next(line for line in text.splitlines() if line.startswith("| autolora_paper:"))
    assert scores_row.split(" | ")[1:] == [report.NOT_PLANNED, report.NOT_RUN, report.NOT_PLANNED, report.NOT_RUN,
                                           f"{report.NOT_PLANNED} |"]  # tasks in order; roget has no context rows
    assert os.path.exists(tmp_path / "docs" / "figures" / "results_scores.png")
    assert f"figures/results_ranks_{TASK}.png" in text


def test_a_tasks_recipe_changes_reach_its_cells_and_the_report_lists_recipes_per_task(tiny_suite, monkeypatch,
                                                                                      tmp_path):
    assert tasks.TASKS["roget"].recipe(RECIPE) == dataclasses.replace(RECIPE, retrain_steps=1000, search_steps=500)
    assert all(spec.recipe(RECIPE) == RECIPE for name, spec in tasks.TASKS.items() if name != "roget")
    monkeypatch.setitem(tasks.TASKS, "roget", dataclasses.replace(tasks.TASKS["roget"],
                                                                  recipe_changes={"retrain_steps": 3}))
    steps = []
    train = methods.autolora.train
    monkeypatch.setattr(methods.autolora, "train", lambda *args, **kw: steps.append(kw["steps"]) or train(*args, **kw))
    assert run_cells(tiny_suite, f"task=roget,method=uniform_r4,task={TASK}")["failed"] == []
    assert sorted(steps) == [RECIPE.retrain_steps, 3]
    recorded = {task: cache.read_result(tiny_suite, task, "uniform_r4", 0)["recipe"] for task in ("roget", TASK)}
    assert recorded == {"roget": {**RECIPE.as_dict(), "retrain_steps": 3}, TASK: RECIPE.as_dict()}
    setup = "\n".join(report.setup_section(report.Results(cache.load_results(tiny_suite)), "figures"))
    recipe_line = next(line for line in setup.splitlines() if line.startswith("* Recipe"))
    assert recipe_line.startswith("* Recipe (one per task): ") and "DIFFERENT" not in recipe_line
    parts = recipe_line.removeprefix("* Recipe (one per task): ").split("; ")
    assert sorted(part.split(": ")[0] for part in parts) == ["roget", TASK]
    assert {part.split(": ")[0]: "retrain_steps=3," in part for part in parts} == {"roget": True, TASK: False}


def test_report_pairs_other_autolora_settings_with_uniform_and_autolora(budget_results, tmp_path):
    root = str(tmp_path / "results")
    template = cache.read_result(budget_results, TASK, "uniform_r4", 0)
    searched = cache.read_result(budget_results, TASK, "autolora", 0)
    sigmoid = {**searched, "method": "autolora_sigmoid"}
    for seed, (s, u, a) in enumerate(zip([0.90, 0.93, 0.88], [0.81, 0.80, 0.79], [0.85, 0.86, 0.90])):
        cache.write_result(root, scored(sigmoid, seed, s))
        cache.write_result(root, scored(template, seed, u))
        cache.write_result(root, scored(searched, seed, a))
    text = report.write_report(root, str(tmp_path / "results.md"), str(tmp_path / "figures"))
    section = text.split("## Paired differences: other AutoLoRA settings")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| autolora")]
    assert len(rows) == 1  # autolora_paper and the other settings have no cells: left out
    # - uniform: d = 0.09, 0.13, 0.09: mean 0.1033, sample sd 0.0231, t(0.975, 2) = 4.303 -> half-width 0.0573
    # - autolora: d = 0.05, 0.07, -0.02: mean 0.0333, sample sd 0.0473 -> half-width 0.1174
    assert rows[0] == (f"| autolora_sigmoid | {TASK} | 3 | +0.1033 | [+0.0460, +0.1607] | autolora_sigmoid higher "
                       "| 3 | +0.0333 | [-0.0841, +0.1507] | within noise |")


def test_report_extrapolates_the_suite_time_from_each_methods_mean(budget_results):
    def timed(method, seed, seconds):
        record = cache.read_result(budget_results, TASK, "uniform_r4" if method == "uniform_r4" else "autolora", 0)
        return {**record, "method": method, "seed": seed, "wall_seconds": {**record["wall_seconds"], "total": seconds}}
    records = [timed("uniform_r4", 0, 1800.0), timed("uniform_r4", 1, 3600.0), timed("autolora", 0, 7200.0)]
    run_hours, pending, pending_hours = report.suite_hours(report.Results(records))
    assert run_hours == pytest.approx(3.5) and pending == PLANNED_CELLS - 3
    # per task: uniform 5 seeds at 0.75 h, autolora 5 at 2 h, every other planned cell at the mean of all 3 cells
    uniform_left, autolora_left = len(tasks.TASKS) * 5 - 2, len(tasks.TASKS) * 5 - 1
    others = pending - uniform_left - autolora_left
    assert pending_hours == pytest.approx(uniform_left * 0.75 + autolora_left * 2.0 + others * 3.5 / 3)


def test_setup_counts_planned_cells_and_lists_the_cells_beyond_the_plan(budget_results):
    uniform = cache.read_result(budget_results, TASK, "uniform_r4", 0)
    records = [scored(uniform, seed, 0.8) for seed in (0, 1, 7)]            # seed 7: not a planned seed
    records += [scored({**uniform, "method": "uniform_r8", "task": "roget"}, seed, 0.8) for seed in (2, 5, 3)]
    records += [scored({**uniform, "method": "eva_init", "task": "roget"}, 0, 0.8)]  # not planned on roget
    results = report.Results(records)
    assert report.beyond_plan(results) == {(TASK, "uniform_r4"): [7], ("roget", "eva_init"): [0],
                                           ("roget", "uniform_r8"): [3, 5]}
    seeds_line = next(line for line in report.setup_section(results, "figures/") if line.startswith("* Seeds:"))
    assert f"Planned cells run: 3 of {PLANNED_CELLS}." in seeds_line
    assert ("(4 cells, included in every table and interval): roget eva_init seeds 0; roget uniform_r8 seeds 3, 5; "
            f"{TASK} uniform_r4 seeds 7.") in seeds_line


def test_reading_names_the_tasks_where_autolora_beats_every_control(budget_results, tmp_path):
    root = str(tmp_path / "results")
    uniform = cache.read_result(budget_results, TASK, "uniform_r4", 0)
    scores = {"autolora": [0.90, 0.92, 0.91], "uniform_r4": [0.80, 0.81, 0.79], "shuffled": [0.85, 0.86, 0.86],
              "eva": [0.70, 0.72, 0.69], "adalora": [0.87, 0.89, 0.89]}
    for method, values in scores.items():
        for seed, value in enumerate(values):
            cache.write_result(root, scored(cache.read_result(budget_results, TASK, method, 0), seed, value))
    for method, values in (("uniform_r8", [0.81, 0.80, 0.82]), ("uniform_r2", [0.80, 0.81, 0.79]),
                           ("head_only", [0.70, 0.72, 0.71]), ("uniform_r1", [0.76, 0.78, 0.77]),
                           ("value_only", [0.85, 0.87, 0.84]), ("query_only", [0.80, 0.80, 0.80])):
        for seed, value in enumerate(values):
            cache.write_result(root, scored({**uniform, "method": method}, seed, value))
    searched = cache.read_result(budget_results, TASK, "autolora", 0)
    reversed_ranks = dict(zip(searched["ranks"], reversed(list(searched["ranks"].values()))))
    for seed, value in enumerate([0.91, 0.93, 0.90]):  # the same search with the ranks in reverse module order
        cache.write_result(root, scored({**searched, "method": "autolora_first_order", "ranks": reversed_ranks},
                                        seed, value))
    text = report.write_report(root, str(tmp_path / "results.md"), str(tmp_path / "figures"))
    reading = text.split("## Reading")[1]
    assert f"excludes 0 on {TASK}." in reading
    # r=8 − r=2: d = 0.01, -0.01, 0.03: mean 0.01, sd 0.02, half-width 4.303 * 0.02 / sqrt(3) = 0.0497
    assert "uniform r=8 − uniform r=2: +0.0100 [-0.0397, +0.0597], n=3, within noise." in reading
    # r=2 − r=1: d = 0.04, 0.03, 0.02: mean 0.03, sd 0.01, half-width 0.0248
    assert "uniform r=2 − uniform r=1: +0.0300 [+0.0052, +0.0548], n=3, r=2 higher." in reading
    # r=4 − head alone: d = 0.10, 0.09, 0.08: mean 0.09, sd 0.01, half-width 4.303 * 0.01 / sqrt(3) = 0.0248
    assert "the head alone (no LoRA): +0.0900 [+0.0652, +0.1148], n=3, r=4 higher." in reading
    # value only − query only: d = 0.05, 0.07, 0.04: mean 0.0533, sd 0.0153, half-width 4.303 * 0.0153 / sqrt(3) =
    # 0.0379; value only − uniform r=4: d = 0.05, 0.06, 0.05: mean 0.0533, sd 0.00577, half-width 0.0143
    placement = next(line for line in reading.splitlines() if "placement alone" in line)
    assert ("value only − query only: +0.0533 [+0.0154, +0.0913], n=3, value only higher; value only − uniform r=4: "
            "+0.0533 [+0.0390, +0.0677], n=3, value only higher; query only − uniform r=4: ") in placement
    # the share of each allocation's components on value, read off the records' ranks by the module names' ending
    shares = {method: sum(r for name, r in ranks.items() if name.endswith(".value")) / sum(ranks.values())
              for method in ("autolora", "shuffled", "eva", "adalora")
              for ranks in [cache.read_result(budget_results, TASK, method, 0)["ranks"]]}
    assert placement.endswith("n=3, within noise. Share of the components each allocation puts on value, mean over "
                              "seeds: " + ", ".join(f"{method} {share:.2f}" for method, share in shares.items()) + ".")
    # adalora: d = 0.03, 0.03, 0.02: mean 0.0267, sd 0.00577, half-width 0.0143 -> above
    assert "adalora: +0.0267 [+0.0123, +0.0410], n=3, AutoLoRA higher" in reading
    # first order − finite differences: d = 0.01, 0.01, -0.01: mean 0.0033, sd 0.0115, half-width 0.0287; ranks
    # reversed across modules against the same seed's finite-difference ranks
    expected = scipy_stats.spearmanr(list(searched["ranks"].values()), list(reversed_ranks.values())).statistic
    assert expected < 0.99
    assert (f"finite differences: +0.0033 [-0.0254, +0.0320], n=3, within noise; the two searches' ranks of the "
            f"same seed agree with mean Spearman {expected:.2f} (3 seeds)") in reading
    cache.write_result(root, scored(cache.read_result(budget_results, TASK, "adalora", 0), 1, 0.95))
    reading = report.write_report(root, str(tmp_path / "results.md"), str(tmp_path / "figures")).split("## Reading")[1]
    assert "excludes 0 on none of the 1 tasks run so far." in reading
    wnut = {**cache.read_result(budget_results, TASK, "autolora", 0), "task": "wnut16_500"}
    cache.write_result(root, scored(wnut, 0, 0.5))
    reading = report.write_report(root, str(tmp_path / "results.md"), str(tmp_path / "figures")).split("## Reading")[1]
    assert "none of the 2 tasks run so far (wnut16_500: one seed so far, no interval yet)." in reading


def test_projection_share_is_the_mean_over_seeds_of_each_allocations_share():
    records = [{"task": "roget", "method": "autolora", "seed": 0, "ranks": {"l.0.query": 1, "l.0.value": 3}},
               {"task": "roget", "method": "autolora", "seed": 1, "ranks": {"l.0.query": 2, "l.0.value": 2}}]
    results = report.Results(records)
    assert report.projection_share(results, "roget", "autolora", "value") == pytest.approx((0.75 + 0.5) / 2)
    assert report.projection_share(results, "roget", "autolora", "query") == pytest.approx((0.25 + 0.5) / 2)
    assert report.projection_share(results, "roget", "eva", "value") is None


def test_cost_table_reports_each_cell_against_its_own_retraining(budget_results, tmp_path):
    root = str(tmp_path / "results")
    phases = {"uniform_r4": [(0.0, 200.0, 20.0), (0.0, 100.0, 10.0)], "autolora": [(150.0, 100.0, 50.0),
                                                                                  (90.0, 60.0, 30.0)]}
    for method, cells in phases.items():
        for seed, (allocation, retrain, evaluation) in enumerate(cells):
            record = cache.read_result(budget_results, TASK, method, 0)
            cache.write_result(root, {**record, "seed": seed, "wall_seconds": {
                "allocation": allocation, "retrain": retrain, "eval": evaluation,
                "total": allocation + retrain + evaluation}})
    text = report.write_report(root, str(tmp_path / "results.md"), str(tmp_path / "figures"))
    section = text.split("## Cost")[1].split(f"### {TASK}")[1].split("###")[0]
    row = next(line for line in section.splitlines() if line.startswith("| autolora |"))
    # totals 300 and 180 (mean 240) against uniform's 220 and 110 (mean 165): 240 / 165 = 1.45; against each
    # cell's own retrain + eval: 300 / 150 = 2 and 180 / 90 = 2
    assert row == "| autolora | 120.0 | 80.0 | 40.0 | 240.0 | 1.45 | 2.00 |"
