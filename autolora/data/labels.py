"""Label values of user files and built-in tasks turned into class / tag ids or finite floats."""
from __future__ import annotations

import math
import re

import numpy as np


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
