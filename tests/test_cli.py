"""The ``autolora`` command end to end on a tiny random BERT saved to disk and tiny synthetic CSV files."""
import csv
import json
import os
import random
import shutil

import datasets
import numpy as np
import pytest
import scipy.stats
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from autolora.checkpoint import load_checkpoint
from autolora.cli import main
from autolora.config import AutoLoRAConfig
from autolora.data import load_builtin_task, load_files
from autolora.evaluation import predict
from autolora.tasks import METRIC_NAMES
from autolora.model import adapter_branches, get_autolora_model
from autolora.retrain import build_retrain_model
from tiny_models import tiny_bert, tiny_bert_token_classifier, tiny_gpt2
from tiny_tokenizer import WORDS, tiny_tokenizer

K = 3
WORD_LIST = [w for w in WORDS if w.isalpha()]
TAGS = ["O", "B-loc", "I-loc"]
SPLIT_SIZES = {"train": 24, "validation": 8, "test": 8}


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def synthetic_rows(task_type, n, rng):
    """(text, label) rows; sequence labels depend on the words, so every task is learnable."""
    rows = []
    for _ in range(n):
        words = [rng.choice(WORD_LIST) for _ in range(rng.randint(2, 7))]  # ragged: batches need padding
        text = " ".join(words)
        if task_type == "classification":
            label = int(any(w in ("good", "great", "love", "fun") for w in words))
        elif task_type == "regression":
            label = round(sum(len(w) for w in words) / 10.0, 3)
        else:
            label = " ".join({"paris": "B-loc", "york": "I-loc"}.get(w, "O") for w in words)
        rows.append((text, label))
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A saved tiny BERT encoder with its tokenizer (like all-MiniLM-L6-v2 on disk), and data files per task."""
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "tiny-bert"
    tiny_bert().bert.save_pretrained(model_dir)
    tiny_tokenizer(model_dir)
    rng = random.Random(0)
    files = {}
    for task_type in ("classification", "regression", "token-classification"):
        files[task_type] = {split: write_csv(root / f"{task_type}-{split}.csv", ["text", "label"],
                                             synthetic_rows(task_type, n, rng))
                            for split, n in SPLIT_SIZES.items()}
    return {"root": root, "model": str(model_dir), "files": files}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A saved tiny GPT-2 body whose config and tokenizer have no pad token (an eos token only), as GPT-2 ships."""
    model_dir = tmp_path_factory.mktemp("tiny-gpt2")
    body = tiny_gpt2().transformer
    body.config.pad_token_id = None
    body.save_pretrained(model_dir)
    tokenizer = tiny_tokenizer(model_dir)
    tokenizer.pad_token, tokenizer.eos_token = None, "[MASK]"  # an eos that the tokenizer never inserts
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def cli_args(workspace, task_type, output_dir, command="run", *extra, model=None):
    files = workspace["files"][task_type]
    args = [command, "--model", model or workspace["model"], "--train-file", files["train"],
            "--validation-file", files["validation"], "--test-file", files["test"], "--task-type", task_type,
            "--text-column", "text", "--label-column", "label", "--output-dir", str(output_dir),
            "--max-rank", str(K), "--batch-size", "4", "--max-length", "12", "--checkpoint-every", "2"]
    if command in ("run", "search"):
        args += ["--search-steps", "3", "--selection-lr", "0.05", "--warmup-steps", "1"]
    if command in ("run", "retrain"):
        args += ["--retrain-steps", "3", "--retrain-lr", "0.01"]
    return args + list(extra)


@pytest.fixture(scope="module")
def runs(workspace):
    """Output directories of one uninterrupted ``autolora run`` per task type."""
    out = {}
    for task_type in workspace["files"]:
        out[task_type] = workspace["root"] / f"run-{task_type}"
        main(cli_args(workspace, task_type, out[task_type]))
    return out


def load_base(workspace, task_type, num_labels):
    cls = AutoModelForTokenClassification if task_type == "token-classification" else \
        AutoModelForSequenceClassification
    return cls.from_pretrained(workspace["model"], num_labels=num_labels)


NUM_LABELS = {"classification": 2, "regression": 1, "token-classification": len(TAGS)}


def injected_names(workspace, task_type):
    base = load_base(workspace, task_type, NUM_LABELS[task_type])
    return list(adapter_branches(get_autolora_model(base, AutoLoRAConfig(max_rank=K))))


@pytest.mark.parametrize("task_type", list(NUM_LABELS))
def test_run_writes_valid_outputs(workspace, runs, task_type):
    out = runs[task_type]
    for name in ("ranks.json", "alphas.safetensors", "alpha_history.safetensors", "metrics.json", "ranks.png",
                 "alphas.png", "run.log", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert os.path.getsize(out / name) > 0, name
    names = injected_names(workspace, task_type)
    ranks = json.loads((out / "ranks.json").read_text())
    assert sorted(ranks) == sorted(names) and all(1 <= r <= K for r in ranks.values())
    alphas = load_file(out / "alphas.safetensors")
    assert sorted(alphas) == sorted(names)
    for alpha in alphas.values():
        assert alpha.shape == (K,)
        torch.testing.assert_close(alpha.sum(), torch.tensor(1.0))
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["test"] and set(metrics["test"]) == set(METRIC_NAMES[task_type])
    config = json.loads((out / "adapter/adapter_config.json").read_text())
    assert config["rank_pattern"] == ranks
    assert "search step 3" in (out / "run.log").read_text()


@pytest.mark.parametrize("task_type", list(NUM_LABELS))
def test_exported_adapter_in_stock_peft_equals_the_retrained_model(workspace, runs, task_type):
    """Logits of PEFT(base, adapter/) equal ours rebuilt from the final retrain checkpoint, and metrics.json equals
    the metrics computed by hand from the PEFT model's outputs on each test example alone. Both are float32 models
    that round differently (ours may fold the LoRA update into the weight), so equality is to float32 rounding:
    1e-5 on logits and metrics."""
    out, num_labels = runs[task_type], NUM_LABELS[task_type]
    ranks = json.loads((out / "ranks.json").read_text())
    ours = build_retrain_model(load_base(workspace, task_type, num_labels), AutoLoRAConfig(max_rank=K), ranks)
    trained = load_checkpoint(out / "checkpoints/retrain.pt")["loop"]["trainable"]
    assert sorted(trained) == sorted(n for n, p in ours.named_parameters() if p.requires_grad)
    ours.load_state_dict(trained, strict=False)
    peft_model = PeftModel.from_pretrained(load_base(workspace, task_type, num_labels), out / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    texts = [row["text"] for row in csv.DictReader(open(workspace["files"][task_type]["test"]))]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, ours.eval()(**batch).logits, rtol=1e-5, atol=1e-5)
    recorded = json.loads((out / "metrics.json").read_text())["test"]
    assert recorded == pytest.approx(adapter_metrics_by_hand(workspace, task_type, out / "adapter"), abs=1e-5)


@pytest.mark.parametrize("task_type", list(NUM_LABELS))
def test_evaluate_equals_metrics_by_hand_on_an_adapter_with_a_fitted_head(workspace, runs, task_type, tmp_path):
    """``autolora evaluate`` of the exported adapter with a head fitted by least squares on the training split: the
    briefly trained head predicts one class everywhere, which would leave F1, Matthews correlation and the entity
    scores at 0, untested."""
    adapter = tmp_path / "adapter"
    shutil.copytree(runs[task_type] / "adapter", adapter)
    if task_type != "regression":
        plant_least_squares_head(workspace, task_type, adapter)
    main(cli_args(workspace, task_type, tmp_path, "evaluate"))
    expected = adapter_metrics_by_hand(workspace, task_type, adapter)
    assert all(value != 0.0 for value in expected.values()), expected  # every metric is exercised
    assert json.loads((tmp_path / "metrics.json").read_text())["test"] == pytest.approx(expected, abs=1e-5)


def plant_least_squares_head(workspace, task_type, adapter):
    """Overwrite the adapter's classifier with [W b] = argmin ||[X 1] [W b]^T - Y||, X the classifier inputs and Y
    the one-hot labels of the labelled training examples (tokens)."""
    peft_model, data = peft_model_and_data(workspace, task_type, adapter)
    inputs = []
    peft_model.base_model.model.classifier.register_forward_hook(lambda module, args, out: inputs.append(args[0][0]))
    outputs_one_by_one(peft_model, data.train)
    features = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs]).double()
    labels = torch.tensor([y for row in data.train["labels"] for y in (row if isinstance(row, list) else [row])])
    keep = labels != -100
    design = torch.cat([features[keep], torch.ones(int(keep.sum()), 1, dtype=torch.float64)], dim=1)
    one_hot = torch.nn.functional.one_hot(labels[keep], NUM_LABELS[task_type]).double()
    solution = torch.linalg.lstsq(design, one_hot).solution.T.float()
    tensors = load_file(adapter / "adapter_model.safetensors")
    tensors["base_model.model.classifier.weight"] = solution[:, :-1].contiguous()
    tensors["base_model.model.classifier.bias"] = solution[:, -1].contiguous()
    save_file(tensors, adapter / "adapter_model.safetensors")


def peft_model_and_data(workspace, task_type, adapter):
    """Stock PEFT(base, ``adapter``) and the task's splits tokenised as the command does."""
    peft_model = PeftModel.from_pretrained(load_base(workspace, task_type, NUM_LABELS[task_type]), adapter)
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    data = load_files(*workspace["files"][task_type].values(), task_type=task_type, text_column="text",
                      label_column="label", tokenizer=tokenizer, max_length=12)
    return peft_model, data


def adapter_metrics_by_hand(workspace, task_type, adapter):
    """:func:`metrics_by_hand` of stock PEFT(base, ``adapter``) on the test split."""
    peft_model, data = peft_model_and_data(workspace, task_type, adapter)
    return metrics_by_hand(task_type, outputs_one_by_one(peft_model, data.test), data.test, data.label_names)


def outputs_one_by_one(model, dataset):
    """The model's logits on each example alone (batch of one, no padding): what padded batches must reproduce."""
    model.eval()
    with torch.no_grad():
        return [model(**{k: torch.tensor([v]) for k, v in row.items() if k != "labels"}).logits[0] for row in dataset]


def metrics_by_hand(task_type, outputs, dataset, label_names):
    """The task's metrics from per-example outputs, by their textbook definitions: binary F1 = 2TP / (2TP + FP +
    FN), binary Matthews correlation = Pearson correlation of the 0/1 predictions and labels, regression through
    scipy.stats, entity scores over (type, start, end) spans of BIO tags."""
    if task_type == "regression":
        predicted, gold = np.array([o.item() for o in outputs]), np.array(dataset["labels"])
        return {"spearman": scipy.stats.spearmanr(predicted, gold)[0],
                "pearson": scipy.stats.pearsonr(predicted, gold)[0], "mse": float(np.mean((predicted - gold) ** 2))}
    if task_type == "classification":
        predicted, gold = np.array([int(o.argmax()) for o in outputs]), np.array(dataset["labels"])
        tp, fp, fn = [int(np.sum((predicted == p) & (gold == g))) for p, g in ((1, 1), (1, 0), (0, 1))]
        constant = predicted.std() == 0 or gold.std() == 0
        return {"accuracy": float(np.mean(predicted == gold)), "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
                "matthews_corrcoef": 0.0 if constant else scipy.stats.pearsonr(predicted, gold)[0]}
    found = correct = expected = right_tokens = tokens = 0
    for output, labels in zip(outputs, dataset["labels"]):
        pairs = [(label_names[g], label_names[int(p)]) for p, g in zip(output.argmax(-1), labels) if g != -100]
        gold_spans, predicted_spans = (bio_spans([pair[i] for pair in pairs]) for i in (0, 1))
        found, expected = found + len(predicted_spans), expected + len(gold_spans)
        correct += len(gold_spans & predicted_spans)
        right_tokens, tokens = right_tokens + sum(g == p for g, p in pairs), tokens + len(pairs)
    precision, recall = correct / found if found else 0.0, correct / expected if expected else 0.0
    return {"f1": 2 * precision * recall / (precision + recall) if correct else 0.0, "precision": precision,
            "recall": recall, "accuracy": right_tokens / tokens}


def bio_spans(tags):
    """{(type, start, end)}: every B-X or I-X that does not continue a span opens one, which runs over the I-X
    after it."""
    spans, i = set(), 0
    while i < len(tags):
        if tags[i] == "O":
            i += 1
            continue
        kind, end = tags[i][2:], i + 1
        while end < len(tags) and tags[end] == f"I-{kind}":
            end += 1
        spans.add((kind, i, end))
        i = end
    return spans


def test_model_without_a_pad_token_gets_the_eos_token_and_pools_the_last_real_token(workspace, gpt2_dir, tmp_path):
    """A GPT-2 classifier with no pad token: the command pads with eos and sets config.pad_token_id, so that the
    recorded metrics equal those of the exported adapter run example by example, unpadded."""
    out = tmp_path / "gpt2"
    main(cli_args(workspace, "classification", out, model=gpt2_dir))
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    data = load_files(*workspace["files"]["classification"].values(), task_type="classification",
                      text_column="text", label_column="label", tokenizer=tokenizer, max_length=12)
    assert len(set(map(len, data.test["input_ids"]))) > 1  # the test batches are padded
    base = AutoModelForSequenceClassification.from_pretrained(gpt2_dir, num_labels=2)
    assert base.config.pad_token_id is None
    peft_model = PeftModel.from_pretrained(base, out / "adapter")
    expected = metrics_by_hand("classification", outputs_one_by_one(peft_model, data.test), data.test, None)
    assert json.loads((out / "metrics.json").read_text())["test"] == pytest.approx(expected, abs=1e-5)


def assert_same_outputs(out, reference):
    assert json.loads((out / "ranks.json").read_text()) == json.loads((reference / "ranks.json").read_text())
    for name in ("alphas.safetensors", "alpha_history.safetensors", "adapter/adapter_model.safetensors"):
        ours, theirs = load_file(out / name), load_file(reference / name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{name}: {key}"
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())


@pytest.mark.parametrize("stop_after", [2, 5], ids=["during-search", "during-retrain"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(workspace, runs, tmp_path, stop_after, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(workspace, "classification", out, "run", "--stop-after", str(stop_after)))
    assert exit_info.value.code == 130
    assert "--resume" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
    main(cli_args(workspace, "classification", out, "run", "--resume"))
    assert_same_outputs(out, runs["classification"])


def test_search_then_retrain_then_evaluate_subcommands(workspace, runs, tmp_path):
    """The three subcommands in sequence give the same files as `run`; retrain --ranks takes any rank file."""
    out = tmp_path / "steps"
    for command in ("search", "retrain", "evaluate"):
        main(cli_args(workspace, "classification", out, command))
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks == json.loads((runs["classification"] / "ranks.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert metrics == pytest.approx(json.loads((runs["classification"] / "metrics.json").read_text())["test"])
    custom = {name: 1 + i % K for i, name in enumerate(sorted(ranks, reverse=True))}
    (tmp_path / "custom.json").write_text(json.dumps(custom))
    main(cli_args(workspace, "classification", tmp_path / "custom", "retrain", "--ranks",
                  str(tmp_path / "custom.json")))
    config = json.loads((tmp_path / "custom/adapter/adapter_config.json").read_text())
    assert config["rank_pattern"] == custom


def test_budget_readout_and_uniform_comparison(workspace, tmp_path, capsys):
    """--budget N keeps exactly N components (>= 1 per module); --compare-uniform retrains uniform LoRA with the same
    total rank and reports it beside the searched one; the uniform scores equal `autolora retrain` run separately
    with those uniform ranks (same steps, lr, data and seed)."""
    out = tmp_path / "budget"
    names = injected_names(workspace, "classification")
    budget = len(names) + 3
    main(cli_args(workspace, "classification", out, "run", "--budget", str(budget), "--compare-uniform"))
    printed = capsys.readouterr().out
    ranks = json.loads((out / "ranks.json").read_text())
    assert sum(ranks.values()) == budget and min(ranks.values()) >= 1 and sorted(ranks) == sorted(names)
    metrics = json.loads((out / "metrics.json").read_text())
    uniform = metrics["uniform_same_budget"]
    uniform_ranks = list(uniform["ranks"].values())
    assert sum(uniform_ranks) == budget and max(uniform_ranks) - min(uniform_ranks) <= 1
    assert "uniform at the same total rank" in printed and "search verdict: ranks" in printed
    (tmp_path / "uniform.json").write_text(json.dumps(uniform["ranks"]))
    separate = tmp_path / "uniform"
    main(cli_args(workspace, "classification", separate, "retrain", "--ranks", str(tmp_path / "uniform.json")))
    main(cli_args(workspace, "classification", separate, "evaluate"))
    assert json.loads((separate / "metrics.json").read_text())["test"] == pytest.approx(uniform["test"])
    diagnostics = json.loads((out / "search_diagnostics.json").read_text())
    assert diagnostics["ranks"] == ranks and diagnostics["budget"] == budget
    assert diagnostics["diagnostics"]["step"] == [2, 3] and len(diagnostics["train_losses"]) == 3
    assert set(diagnostics["margins"]) == set(names) and diagnostics["verdict"].startswith("ranks")
    assert os.path.getsize(out / "diagnostics.png") > 0


def test_energy_budget_score_reads_the_largest_update_energies(workspace, tmp_path):
    out = tmp_path / "energy"
    main(cli_args(workspace, "classification", out, "search", "--budget", "7", "--budget-score", "energy"))
    ranks = json.loads((out / "ranks.json").read_text())
    diagnostics = json.loads((out / "search_diagnostics.json").read_text())
    assert diagnostics["budget_score"] == "energy" and sum(ranks.values()) == 7 and min(ranks.values()) >= 1
    energies = diagnostics["energies"]
    kept = [e for n, r in ranks.items() for e in energies[n][1:r]]
    dropped = [e for n, r in ranks.items() for e in energies[n][r:]]
    assert min(kept) >= max(dropped)


def test_budget_outside_its_range_is_an_input_error(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(workspace, "classification", tmp_path / "b", "search", "--budget", "1"))
    assert exit_info.value.code == 2
    assert "budget must be between" in capsys.readouterr().err


def test_budget_score_without_a_budget_is_an_input_error(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(workspace, "classification", tmp_path / "b", "search", "--budget-score", "energy"))
    assert exit_info.value.code == 2
    assert "give --budget N" in capsys.readouterr().err
    assert not (tmp_path / "b" / "ranks.json").exists()


def replace(argv, old, new):
    return [new if a == old else a for a in argv]


def tokenizer_only_dir(workspace, tmp_path):
    """A directory holding a tokenizer but no model (no config.json, no weights)."""
    folder = tmp_path / "tokenizer-only"
    folder.mkdir()
    tiny_tokenizer(folder)
    return str(folder)


def input_errors(workspace, tmp_path):
    """{error class: (argv, words the message must hold)} for every class of input error."""
    files = workspace["files"]["classification"]
    base = cli_args(workspace, "classification", tmp_path / "out")
    (tmp_path / "empty-dir").mkdir()
    return {
        "unknown flag": (base + ["--no-such-flag"], ["--no-such-flag"]),
        "bad flag value": (replace(base, "12", "-3"), ["--max-length", "positive"]),
        "missing flag": (["run", "--output-dir", str(tmp_path / "out"), "--train-file", files["train"]],
                         ["--task-type"]),
        "missing column": (replace(base, "label", "sentiment"), ["sentiment", "not found"]),
        "unknown task": (["run", "--model", workspace["model"], "--task", "no_such_task", "--output-dir",
                          str(tmp_path / "out")], ["unknown built-in task", "no_such_task"]),
        "empty file": (replace(base, files["train"], write_csv(tmp_path / "empty.csv", ["text", "label"], [])),
                       ["no examples"]),
        "label out of range": (replace(base, files["train"], write_csv(
            tmp_path / "negative.csv", ["text", "label"], [("good film", 1), ("bad film", -1)])), ["out of range"]),
        "missing model directory": (replace(base, workspace["model"], str(tmp_path / "no-such-model")),
                                    ["no-such-model", "does not exist"]),
        "empty model directory": (replace(base, workspace["model"], str(tmp_path / "empty-dir")),
                                  ["empty-dir", "holds no model"]),
        "tokenizer without model": (replace(base, workspace["model"], tokenizer_only_dir(workspace, tmp_path)),
                                    ["tokenizer-only", "holds no model", "config.json"]),
        "no ranks file": (["retrain", "--model", workspace["model"], "--task", "rotten_tomatoes", "--output-dir",
                           str(tmp_path / "nothing-searched")], ["ranks", "autolora search"]),
        "resume without checkpoint": (base + ["--resume"], ["--resume", "does not exist"]),
    }


ERROR_CLASSES = ["unknown flag", "bad flag value", "missing flag", "missing column", "unknown task", "empty file",
                 "label out of range", "missing model directory", "empty model directory", "tokenizer without model",
                 "no ranks file", "resume without checkpoint"]


@pytest.mark.parametrize("error_class", ERROR_CLASSES)
def test_every_input_error_exits_2_with_one_line(workspace, tmp_path, capsys, error_class):
    """argparse's usage-error status (2) for every input error, and one line on stderr that says what to fix."""
    assert_exits_2_with_one_line(capsys, *input_errors(workspace, tmp_path)[error_class])


def assert_exits_2_with_one_line(capsys, argv, words):
    """main(argv) exits with status 2 and one stderr line ``autolora: error: ...`` holding every one of ``words``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("autolora: error: "), stderr
    assert all(word in stderr for word in words), stderr


def test_predict_keeps_first_subtokens_and_matches_the_logits():
    """predict(): per-token argmax at the positions whose gold tag is not -100, in order, per sentence; regression
    predictions are the single output. Checked against the model's logits on the unpadded sentences."""
    model = tiny_bert_token_classifier(num_labels=3)
    rows = {"input_ids": [[2, 10, 11, 12, 3], [2, 13, 3]], "attention_mask": [[1] * 5, [1] * 3],
            "labels": [[-100, 1, -100, 2, -100], [-100, 0, -100]]}
    dataset = datasets.Dataset.from_dict(rows)
    predictions, labels = predict(model, dataset, task_type="token-classification", batch_size=2)
    assert labels == [[1, 2], [0]]
    with torch.no_grad():
        first = model(input_ids=torch.tensor([rows["input_ids"][0]])).logits[0].argmax(-1)
        second = model(input_ids=torch.tensor([rows["input_ids"][1]])).logits[0].argmax(-1)
    assert predictions == [[first[1].item(), first[3].item()], [second[1].item()]]
    regressor = tiny_bert(num_labels=1)
    values = datasets.Dataset.from_dict({"input_ids": [[2, 10, 3]], "attention_mask": [[1] * 3], "labels": [0.5]})
    predictions, labels = predict(regressor, values, task_type="regression")
    with torch.no_grad():
        expected = regressor(input_ids=torch.tensor([[2, 10, 3]])).logits.item()
    assert labels == [0.5] and predictions == pytest.approx([expected], abs=1e-6)


def test_predict_without_tokenizer_pads_with_the_models_pad_id():
    """A GPT-2 regressor pools the last token whose id is not config.pad_token_id (5): each prediction equals the
    output on the unpadded example alone."""
    model = tiny_gpt2(num_labels=1)
    model.config.pad_token_id = 5
    rows = [[7, 9, 11], [8, 3, 12, 40, 41], [6, 20]]
    dataset = datasets.Dataset.from_dict({"input_ids": rows, "labels": [0.0, 1.0, 2.0]})
    predictions, _ = predict(model, dataset, task_type="regression", batch_size=3)
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([r])).logits.item() for r in rows]
    assert predictions == pytest.approx(alone, abs=1e-6)


def test_cola_summary_reports_the_tasks_metrics_matthews_correlation_first(workspace, tmp_path, monkeypatch, capsys):
    rng = random.Random(1)
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["unacceptable", "acceptable"])})
    fake_cola = datasets.DatasetDict({split: datasets.Dataset.from_dict(
        dict(zip(("sentence", "label"), zip(*synthetic_rows("classification", n, rng)))), features=features)
        for split, n in (("train", 16), ("validation", 8))})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: fake_cola)
    main(["run", "--model", workspace["model"], "--task", "cola", "--output-dir", str(tmp_path), "--max-rank", "2",
          "--batch-size", "4", "--max-length", "12", "--search-steps", "2", "--retrain-steps", "2"])
    recorded = json.loads((tmp_path / "metrics.json").read_text())["validation"]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("validation ")]
    assert printed == [f"validation {name}: {recorded[name]:.4f}" for name in ("matthews_corrcoef", "accuracy", "f1")]


# ------------------------------------------------------------------------------- --dataset-dir and GLUE data


def split_as_dataset(task_type, path):
    """The rows of one CSV split as a datasets.Dataset with the features a hub dataset has: a 'sentence' and a
    ClassLabel 'label', a 'text' and a float 'label', or 'tokens' and Sequence(ClassLabel) 'ner_tags'."""
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    if task_type == "token-classification":
        features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                      "ner_tags": datasets.Sequence(datasets.ClassLabel(names=TAGS))})
        columns = {"tokens": [r["text"].split() for r in rows],
                   "ner_tags": [[TAGS.index(t) for t in r["label"].split()] for r in rows]}
    elif task_type == "classification":
        features = datasets.Features({"sentence": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=["neg", "pos"])})
        columns = {"sentence": [r["text"] for r in rows], "label": [int(r["label"]) for r in rows]}
    else:
        features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("float64")})
        columns = {"text": [r["text"] for r in rows], "label": [float(r["label"]) for r in rows]}
    return datasets.Dataset.from_dict({**columns, "idx": list(range(len(rows)))},
                                      features=datasets.Features({**features, "idx": datasets.Value("int64")}))


@pytest.fixture(scope="module")
def dataset_dirs(workspace):
    """Per task type, a DatasetDict of the CSV files' splits written with save_to_disk."""
    dirs = {}
    for task_type, files in workspace["files"].items():
        dirs[task_type] = workspace["root"] / f"dataset-{task_type}"
        datasets.DatasetDict({split: split_as_dataset(task_type, path) for split, path in files.items()}
                             ).save_to_disk(dirs[task_type])
    return dirs


def dataset_dir_args(workspace, dataset_dir, output_dir, *extra, command="run"):
    """:func:`cli_args` with --dataset-dir in place of the file, task-type and column flags."""
    args = cli_args(workspace, "classification", output_dir, command)
    start = args.index("--train-file")
    return args[:start] + ["--dataset-dir", str(dataset_dir)] + args[args.index("--output-dir"):] + list(extra)


@pytest.mark.parametrize("task_type", list(NUM_LABELS))
def test_dataset_dir_run_equals_the_run_on_the_same_rows_in_files(workspace, runs, dataset_dirs, tmp_path, task_type):
    """Columns, task type (ClassLabel, float, Sequence(ClassLabel)), label names and the three splits are taken from
    the saved DatasetDict: ranks, alphas, adapter and metrics.json equal those of the CSV run with explicit flags."""
    out = tmp_path / "out"
    main(dataset_dir_args(workspace, dataset_dirs[task_type], out))
    assert_same_outputs(out, runs[task_type])


def hide_labels(dataset):
    """The dataset with every label -1, as GLUE's test splits ship."""
    return dataset.map(lambda row: {"label": -1})


def test_dataset_dir_splits_default_to_those_present_and_labelled_and_named_ones_are_used(workspace, dataset_dirs,
                                                                                           tmp_path):
    """A DatasetDict with only a training split is enough for `search` (it splits the training set 1:1 itself); a
    test split whose labels are all -1 is passed over for the validation split; --train-split / --test-split pick
    renamed splits, and `run` evaluates on the one named."""
    saved = datasets.load_from_disk(dataset_dirs["classification"])
    datasets.DatasetDict({"train": saved["train"]}).save_to_disk(tmp_path / "train-only")
    main(dataset_dir_args(workspace, tmp_path / "train-only", tmp_path / "search", command="search"))
    assert os.path.getsize(tmp_path / "search/ranks.json") > 0
    glue_like = datasets.DatasetDict({"train": saved["train"], "validation": saved["validation"],
                                      "test": hide_labels(saved["test"])})
    glue_like.save_to_disk(tmp_path / "glue-like")
    main(dataset_dir_args(workspace, tmp_path / "glue-like", tmp_path / "glue-run"))
    assert list(json.loads((tmp_path / "glue-run/metrics.json").read_text())) == ["validation"]
    renamed = tmp_path / "renamed"
    datasets.DatasetDict({"fit": saved["train"], "heldout": saved["test"]}).save_to_disk(renamed)
    main(dataset_dir_args(workspace, renamed, tmp_path / "run", "--train-split", "fit", "--test-split", "heldout"))
    assert list(json.loads((tmp_path / "run/metrics.json").read_text())) == ["test"]
    assert "24 train examples" in (tmp_path / "run/run.log").read_text()


def dataset_dir_errors(workspace, dataset_dirs, tmp_path):
    """{error class: (argv, words the message must hold)} for input errors of --dataset-dir."""
    saved = datasets.load_from_disk(dataset_dirs["classification"])
    saved["train"].save_to_disk(tmp_path / "single")
    datasets.DatasetDict({"train": saved["train"].rename_column("sentence", "body")}).save_to_disk(tmp_path / "body")
    hidden = datasets.DatasetDict({"train": saved["train"], "test": hide_labels(saved["test"])})
    hidden.save_to_disk(tmp_path / "hidden")
    (tmp_path / "plain-dir").mkdir()
    good = dataset_dirs["classification"]
    return {
        "named split without labels": (dataset_dir_args(workspace, tmp_path / "hidden", tmp_path / "o",
                                                        "--test-split", "test"), ["split 'test'", "no labels", "-1"]),
        "missing split": (dataset_dir_args(workspace, good, tmp_path / "o", "--validation-split", "dev"),
                          ["no split 'dev'", "train", "validation", "test"]),
        "single dataset": (dataset_dir_args(workspace, tmp_path / "single", tmp_path / "o"), ["single Dataset"]),
        "not a dataset": (dataset_dir_args(workspace, tmp_path / "plain-dir", tmp_path / "o"),
                          ["plain-dir", "save_to_disk"]),
        "missing directory": (dataset_dir_args(workspace, tmp_path / "nowhere", tmp_path / "o"),
                              ["not found", "nowhere"]),
        "no text column": (dataset_dir_args(workspace, tmp_path / "body", tmp_path / "o"),
                           ["no text column", "'body'", "--text-column"]),
        "missing label column": (dataset_dir_args(workspace, good, tmp_path / "o", "--label-column", "stars"),
                                 ["'stars'", "not found", "sentence"]),
        "two sources": (dataset_dir_args(workspace, good, tmp_path / "o", "--task", "rotten_tomatoes"),
                        ["--task and --dataset-dir"]),
        "split without directory": (cli_args(workspace, "classification", tmp_path / "o", "run", "--test-split", "x"),
                                    ["--test-split", "--dataset-dir"]),
    }


DATASET_DIR_ERRORS = ["named split without labels", "missing split", "single dataset", "not a dataset",
                      "missing directory", "no text column", "missing label column", "two sources",
                      "split without directory"]


@pytest.mark.parametrize("error_class", DATASET_DIR_ERRORS)
def test_dataset_dir_input_errors_exit_2_with_one_line(workspace, dataset_dirs, tmp_path, capsys, error_class):
    assert_exits_2_with_one_line(capsys, *dataset_dir_errors(workspace, dataset_dirs, tmp_path)[error_class])


def test_glue_task_reads_parquet_files_through_the_real_load_dataset(workspace, tmp_path, monkeypatch):
    """`--task mrpc` with datasets.load_dataset("glue", "mrpc") answered by the real load_dataset reading parquet
    files of an MRPC-shaped dataset (sentence1, sentence2, ClassLabel label, idx). The recorded validation metrics
    equal the textbook metrics of the exported adapter (stock PEFT) on the validation pairs, each tokenised as a
    pair by the tokenizer itself, one example at a time; the task's validation split equals those pairs."""
    rng = random.Random(3)
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                                  "idx": datasets.Value("int32")})
    files = {}
    for split, n in (("train", 16), ("validation", 8)):
        firsts, seconds = (synthetic_rows("classification", n, rng) for _ in range(2))
        columns = {"sentence1": [t for t, _ in firsts], "sentence2": [t for t, _ in seconds],
                   "label": [a ^ b for (_, a), (_, b) in zip(firsts, seconds)], "idx": list(range(n))}
        files[split] = str(tmp_path / f"{split}.parquet")
        datasets.Dataset.from_dict(columns, features=features).to_parquet(files[split])
    load_dataset, calls = datasets.load_dataset, []

    def glue_from_parquet(path, name=None, **kwargs):
        calls.append((path, name))
        return load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", glue_from_parquet)
    out = tmp_path / "mrpc"
    main(["run", "--model", workspace["model"], "--task", "mrpc", "--output-dir", str(out), "--max-rank", "2",
          "--batch-size", "4", "--max-length", "12", "--search-steps", "2", "--retrain-steps", "2"])
    assert calls == [("glue", "mrpc")]
    validation = datasets.Dataset.from_parquet(files["validation"])
    tokenizer = AutoTokenizer.from_pretrained(workspace["model"])
    encoded = tokenizer(list(validation["sentence1"]), list(validation["sentence2"]), truncation=True, max_length=12)
    pairs = datasets.Dataset.from_dict({**encoded, "labels": list(validation["label"])})
    peft_model = PeftModel.from_pretrained(load_base(workspace, "classification", 2), out / "adapter")
    expected = metrics_by_hand("classification", outputs_one_by_one(peft_model, pairs), pairs, None)
    assert json.loads((out / "metrics.json").read_text()) == {"validation": pytest.approx(expected, abs=1e-5)}
    task = load_builtin_task("mrpc", tokenizer, max_length=12)  # what the run trained and evaluated on
    assert task.validation.to_list() == pairs.to_list() and len(task.train) == 16 and task.test is None
    assert task.label_names == ["not_equivalent", "equivalent"]
