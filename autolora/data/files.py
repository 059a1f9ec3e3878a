"""User data files: reading CSV / TSV / JSON / JSONL, checking their columns and labels, tokenising them."""
from __future__ import annotations

import csv
import json
import os

from ..tasks import check_task_type
from .labels import _label_ids, _regression_labels, _unflatten
from .splits import _cap_train
from .task import RawSplit, RawTask, TaskData, tokenize_task


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
    max_examples: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Read and tokenise CSV / TSV / JSON / JSONL files (format from the extension).

    JSON is a list of records or an object of equal-length columns; JSONL one record per line.
    Classification labels are integer ids in [0, num_labels) or strings. String labels map to the index in
    ``label_names`` when given, else to their rank in the sorted set of labels of all splits (the same mapping for
    every split). Without ``label_names``, integer labels give ``num_labels = max label + 1``.
    Regression labels must parse as finite floats. For token classification ``text_column`` holds a list of words
    (JSON) or a space-separated string, ``label_column`` a list (or space-separated string) of tag strings or of
    integer ids; tag strings without ``label_names`` are sorted with "O" first, integer tags need ``label_names``.
    ``max_examples`` keeps that many training examples drawn with ``seed`` (as for the built-in tasks).
    """
    check_task_type(task_type)
    if text_pair_column and task_type == "token-classification":
        raise ValueError("text_pair_column is for sentence-pair tasks; token classification takes one word list")
    paths = {"train": train_file, "validation": validation_file, "test": test_file}
    columns = [text_column, label_column] + ([text_pair_column] if text_pair_column else [])
    records = {name: _read_records(path, columns, label_column) for name, path in paths.items() if path is not None}
    raw = _raw_task_from_records(records, task_type, text_column, label_column, text_pair_column, label_names)
    return tokenize_task(_cap_train(raw, max_examples, seed), tokenizer, max_length=max_length)


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
