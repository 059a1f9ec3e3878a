"""The training data that :func:`autolora.search` and :func:`autolora.train` accept, brought to one form, and
``datasets`` directories (``DatasetDict.save_to_disk``) read as a :class:`TaskData`.

:func:`model_inputs` takes

* a tokenised ``datasets.Dataset`` (an ``input_ids`` column): the model's columns (:data:`MODEL_COLUMNS`) are kept
  and ``label`` / ``label_ids`` is renamed ``labels``; any other column (raw text, ``idx``) is dropped, as
  ``transformers.Trainer`` does with ``remove_unused_columns``;
* an untokenised ``datasets.Dataset`` together with a tokenizer: its text and label columns are read by
  :func:`raw_task_from_datasets` and tokenised by :func:`tokenize_task`, truncated to ``max_length`` tokens;
* a map-style ``torch.utils.data.Dataset`` (or a list) whose items are dicts of lists, numbers or tensors: wrapped in
  :class:`ModelRows`, which keeps the same columns of every item;
* a ``torch.utils.data.DataLoader``: returned as it is (its batches go to the model unchanged).

Everything but the DataLoader comes back as a map-style dataset of dict rows with a ``select(indices)`` method, which
is what :func:`split_in_two` and :func:`make_loader` need.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import datasets
import torch

from ..tasks import check_task_type
from .files import _raw_task_from_records
from .splits import _cap_train
from .task import SPLITS, RawTask, TaskData, tokenize_task

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")
LABEL_ALIASES = ("label", "label_ids")
# text column (and pair column) looked for, in this order, when none is named
TEXT_COLUMNS = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                ("question", "sentence"), ("text", None), ("sentence", None), ("tokens", None))
LABEL_COLUMNS = ("labels", "label", "ner_tags")


def model_inputs(data, *, tokenizer=None, text_column: str | Sequence[str] | None = None, max_length: int = 128):
    """``data`` as rows of model inputs (see the module docstring), or a DataLoader as it is.

    ``text_column`` names the text column of an untokenised dataset, or its (text, pair) columns; by default the
    first of :data:`TEXT_COLUMNS` present. Raises TypeError for any other kind of ``data`` and ValueError for a
    dataset without ``input_ids`` or labels, an untokenised dataset without a tokenizer, or an empty dataset.
    """
    if isinstance(data, datasets.DatasetDict):
        raise TypeError(f"got a DatasetDict with the splits {list(data)}; pass one split, e.g. dataset['train']")
    if isinstance(data, datasets.Dataset) and "input_ids" not in data.column_names:
        return _tokenised(data, tokenizer, text_column, max_length)
    if text_column is not None:
        raise ValueError(f"text_column={text_column!r} is for an untokenised datasets.Dataset; this "
                         f"{type(data).__name__} already holds input_ids")
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    if isinstance(data, datasets.Dataset):
        return _keep_model_columns(data)
    if isinstance(data, (torch.utils.data.IterableDataset, datasets.IterableDataset)):
        raise TypeError(f"a {type(data).__name__} has no length to split and shuffle: pass a map-style dataset, "
                        "or a DataLoader over it (whose batches are used as they come)")
    if isinstance(data, (torch.utils.data.Dataset, list)):
        return _checked_rows(data)
    raise TypeError(f"training data must be a datasets.Dataset, a torch Dataset (or list) of dict items, or a "
                    f"torch DataLoader; got {type(data).__name__}")


def model_column_names(columns, what: str) -> dict[str, str]:
    """{column of ``what``: model input it feeds} for the columns among :data:`MODEL_COLUMNS` and the first label
    alias when there is no ``labels`` column. ValueError naming the columns when input_ids or labels are missing."""
    names = {column: column for column in MODEL_COLUMNS if column in columns}
    alias = next((a for a in LABEL_ALIASES if a in columns), None)
    if "labels" not in names and alias is not None:
        names[alias] = "labels"
    missing = [column for column in ("input_ids", "labels") if column not in names.values()]
    if missing:
        raise ValueError(f"{what} has no {' or '.join(missing)} (columns: {list(columns)}); the model takes "
                         f"{', '.join(MODEL_COLUMNS)} ('label' is renamed 'labels')")
    return names


def _keep_model_columns(dataset: datasets.Dataset) -> datasets.Dataset:
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    names = model_column_names(dataset.column_names, "the dataset")
    kept = dataset.select_columns(list(names))
    return kept.rename_columns({column: name for column, name in names.items() if column != name})


class ModelRows(torch.utils.data.Dataset):
    """The dict items of a map-style dataset, each restricted to the model's columns (:func:`model_column_names`);
    ``select(indices)`` gives the items at ``indices``, as ``datasets.Dataset.select`` does."""

    def __init__(self, dataset, indices: Sequence[int] | None = None):
        self.dataset = dataset
        self.indices = list(range(len(dataset)) if indices is None else indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[self.indices[index]]
        if not isinstance(item, Mapping):
            raise TypeError(f"the dataset's items must be dicts of model inputs ({', '.join(MODEL_COLUMNS)}); item "
                            f"{self.indices[index]} is a {type(item).__name__}")
        names = model_column_names(list(item), f"item {self.indices[index]}")
        return {name: item[column] for column, name in names.items()}

    def select(self, indices: Sequence[int]) -> ModelRows:
        return ModelRows(self.dataset, [self.indices[i] for i in indices])


def _checked_rows(dataset) -> ModelRows:
    """:class:`ModelRows` of ``dataset``, its first item checked."""
    rows = ModelRows(dataset)
    if len(rows) == 0:
        raise ValueError("the training dataset is empty")
    rows[0]  # raises when the items are not dicts of model inputs
    return rows


def _tokenised(dataset: datasets.Dataset, tokenizer, text_column, max_length: int) -> datasets.Dataset:
    if tokenizer is None:
        raise ValueError(f"the dataset has no input_ids column (columns: {dataset.column_names}): pass tokenizer= "
                         "to tokenise its text, or tokenise it first (dataset.map(...))")
    if text_column is None or isinstance(text_column, str):
        text, pair = text_column, None
    elif len(text_column) == 2:
        text, pair = text_column
    else:
        raise ValueError(f"text_column must be a column name or a (text, pair) pair of names, got {text_column!r}")
    raw = raw_task_from_datasets({"train": dataset}, text_column=text, text_pair_column=pair)
    return tokenize_task(raw, tokenizer, max_length=max_length).train


def raw_task_from_datasets(splits: Mapping[str, datasets.Dataset], *, task_type: str | None = None,
                           text_column: str | None = None, text_pair_column: str | None = None,
                           label_column: str | None = None) -> RawTask:
    """An untokenised task from ``datasets.Dataset`` splits (keys among ``SPLITS``, "train" required).

    Columns: ``text_column`` (and ``text_pair_column``), by default the first of :data:`TEXT_COLUMNS` present in
    the training split; ``label_column``, by default the first of :data:`LABEL_COLUMNS`. ``task_type`` defaults to
    :func:`infer_task_type` of the label feature. Label names come from a ``ClassLabel`` feature; other labels are
    read as :func:`autolora.data.load_files` reads them (string labels map to their sorted order, regression labels
    must be finite floats, a token-classification text column holds word lists or space-separated words).
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if "train" not in splits or unknown:
        raise ValueError(f"splits must include 'train' and be among {SPLITS}, got {list(splits)}")
    columns = splits["train"].column_names
    text_column, text_pair_column = _text_columns(columns, text_column, text_pair_column)
    label_column = _label_column(columns, label_column)
    needed = [c for c in (text_column, text_pair_column, label_column) if c]
    for name, split in splits.items():
        missing = [c for c in needed if c not in split.column_names]
        if missing:
            raise ValueError(f"{name} split: column(s) {missing} not found; available columns: {split.column_names}")
    feature = splits["train"].features[label_column]
    task_type = check_task_type(task_type) if task_type else infer_task_type(feature, label_column)
    if text_pair_column and task_type == "token-classification":
        raise ValueError("text_pair_column is for sentence-pair tasks; token classification takes one word list")
    names = class_names(feature)
    if task_type == "token-classification" and names is None and _holds_integers(feature):
        raise ValueError(f"column {label_column!r} holds integer tags without names: cast it to "
                         "Sequence(ClassLabel(names=[...BIO tags...])) with dataset.cast_column, so that entity-level "
                         "metrics can read them")
    records = {name: _records(split, needed, name) for name, split in splits.items()}
    return _raw_task_from_records(records, task_type, text_column, label_column, text_pair_column, names)


def _text_columns(columns: list[str], text_column: str | None, text_pair_column: str | None):
    """The (text, pair) columns: the named ones, or the first candidate of :data:`TEXT_COLUMNS` present."""
    if text_column is not None:
        return text_column, text_pair_column
    if text_pair_column is not None:
        raise ValueError("text_pair_column needs text_column (--text-column) too")
    for text, pair in TEXT_COLUMNS:
        if text in columns and (pair is None or pair in columns):
            return text, pair
    candidates = ", ".join(text if pair is None else f"{text}+{pair}" for text, pair in TEXT_COLUMNS)
    raise ValueError(f"found no text column ({candidates}) among the columns {columns}; name it with text_column "
                     "(--text-column)")


def _label_column(columns: list[str], label_column: str | None) -> str:
    """``label_column``, or the first of :data:`LABEL_COLUMNS` among ``columns``."""
    found = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
    if found is None:
        raise ValueError(f"found no label column ({', '.join(LABEL_COLUMNS)}) among the columns {columns}; name it "
                         "with label_column (--label-column)")
    return found


def infer_task_type(feature, column: str = "label") -> str:
    """The task type a label feature implies: classification for a ``ClassLabel``, integer or string column,
    token-classification for a sequence of those, regression for a float column. ValueError otherwise."""
    inner = getattr(feature, "feature", None)
    if inner is not None and _is_class_feature(inner):
        return "token-classification"
    if _is_class_feature(feature):
        return "classification"
    if isinstance(feature, datasets.Value) and feature.dtype.startswith("float"):
        return "regression"
    raise ValueError(f"cannot infer the task type from column {column!r} ({feature}): pass task_type (--task-type)")


def _is_class_feature(feature) -> bool:
    return isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint", "string", "large_string")))


def _holds_integers(feature) -> bool:
    inner = getattr(feature, "feature", None)
    return isinstance(inner, datasets.Value) and inner.dtype.startswith(("int", "uint"))


def class_names(feature) -> list[str] | None:
    """The names of a ``ClassLabel`` feature or of a sequence of ``ClassLabel``; None for any other feature."""
    feature = getattr(feature, "feature", feature)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _records(split: datasets.Dataset, columns: list[str], name: str) -> list[dict]:
    """The rows of ``split`` restricted to ``columns``; ValueError for a missing value."""
    rows = split.select_columns(columns).to_list()
    for number, row in enumerate(rows, start=1):
        absent = [c for c in columns if row[c] is None]
        if absent:
            raise ValueError(f"{name} example {number} has no value for column(s) {absent}")
    return rows


def load_dataset_dir(path, tokenizer, *, train_split: str = "train", validation_split: str | None = None,
                     test_split: str | None = None, task_type: str | None = None, text_column: str | None = None,
                     text_pair_column: str | None = None, label_column: str | None = None, max_length: int = 128,
                     max_examples: int | None = None, seed: int = 0) -> TaskData:
    """Read and tokenise a ``datasets.DatasetDict`` written by ``save_to_disk`` to ``path``.

    ``train_split`` must be one of its splits. ``validation_split`` and ``test_split`` name the evaluation splits;
    None takes "validation" / "test" when the directory has it with labels (a ClassLabel column of -1 only, as in
    GLUE's test sets, has none), and leaves the task without that split otherwise (as without ``validation_file``
    in :func:`load_files`; the search splits the training set 1:1 in any case).
    Columns, task type and labels as in :func:`raw_task_from_datasets`; ``max_examples`` keeps that many training
    examples drawn with ``seed``.
    """
    saved = _load_dataset_dict(path)
    splits = {"train": _saved_split(saved, train_split, path)}
    label_column = _label_column(splits["train"].column_names, label_column)
    for ours, theirs in (("validation", validation_split), ("test", test_split)):
        if theirs is not None:
            splits[ours] = _saved_split(saved, theirs, path)
            if _hidden_labels(splits[ours], label_column):
                raise ValueError(f"split {theirs!r} of {path} has no labels (every {label_column!r} is -1, as in "
                                 "GLUE's test sets); evaluate on another split")
        elif ours in saved and not _hidden_labels(saved[ours], label_column):
            splits[ours] = saved[ours]
    raw = raw_task_from_datasets(splits, task_type=task_type, text_column=text_column,
                                 text_pair_column=text_pair_column, label_column=label_column)
    return tokenize_task(_cap_train(raw, max_examples, seed), tokenizer, max_length=max_length)


def _saved_split(saved: datasets.DatasetDict, name: str, path) -> datasets.Dataset:
    if name not in saved:
        raise ValueError(f"{path} has no split {name!r}; its splits: {list(saved)}")
    return saved[name]


def _hidden_labels(split: datasets.Dataset, label_column: str) -> bool:
    """Whether every label of a ClassLabel column is -1 (datasets' value for a missing label)."""
    feature = split.features.get(label_column)
    return isinstance(feature, datasets.ClassLabel) and len(split) > 0 and set(split[label_column]) == {-1}


def _load_dataset_dict(path) -> datasets.DatasetDict:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"dataset directory not found: {path}")
    try:
        saved = datasets.load_from_disk(path)
    except FileNotFoundError as err:
        raise ValueError(f"{path} holds no dataset written by save_to_disk: {err}") from err
    if not isinstance(saved, datasets.DatasetDict):
        raise ValueError(f"{path} holds a single Dataset; save a DatasetDict of splits instead: "
                         "DatasetDict({'train': ..., 'validation': ..., 'test': ...}).save_to_disk(path)")
    return saved
