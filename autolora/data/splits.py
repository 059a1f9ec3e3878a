"""Deterministic seeded splits: D_tr / D_val halves, 80/10/10 three-way splits and training-set caps."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from .task import SPLITS, RawSplit, RawTask


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

    The first part gets ceil(n/2) examples; the split is a function of (len(dataset), seed) only. A dataset with a
    ``select(indices)`` method (``datasets.Dataset``) is split with it, any other map-style dataset into two
    ``torch.utils.data.Subset``.
    """
    if len(dataset) < 2:
        raise ValueError(f"need at least 2 examples to split in two, got {len(dataset)}")
    parts = _split_indices(len(dataset), (0.5, 0.5), seed)
    if hasattr(dataset, "select"):
        return tuple(dataset.select(part) for part in parts)
    return tuple(torch.utils.data.Subset(dataset, part) for part in parts)


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
