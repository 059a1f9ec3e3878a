"""Padded mini-batches: the seeded DataLoader and its collate function."""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..tasks import IGNORE_INDEX


NO_PAD_ID = ("input_ids need padding but no pad token id is known: pass make_loader(..., "
             "pad_token_id=model.config.pad_token_id) or a tokenizer with a pad token. A model without one (GPT-2) "
             "needs one set first, e.g. tokenizer.pad_token = tokenizer.eos_token; "
             "model.config.pad_token_id = tokenizer.eos_token_id")


def make_loader(dataset, batch_size: int, *, shuffle: bool, seed: int = 0, tokenizer=None,
                pad_token_id: int | None = None, data_collator=None) -> torch.utils.data.DataLoader:
    """DataLoader yielding dicts of tensors padded to the longest sequence of each batch.

    ``dataset`` is any map-style dataset whose rows are dicts (a ``datasets.Dataset``, a ``torch`` Dataset, a list).
    ``input_ids`` are padded with ``tokenizer.pad_token_id``, or without a tokenizer with ``pad_token_id`` (pass
    ``model.config.pad_token_id``: GPT-2/LLaMA classifiers pool the last token whose id is not that one). A batch
    that needs padding when no pad id is known raises ValueError.
    ``labels`` sequences are padded with -100, every other sequence column with 0, on ``tokenizer.padding_side``
    (default right). Scalar labels become int64, or float32 when they are floats (regression). These are the
    semantics of ``transformers.DataCollatorWithPadding`` and ``DataCollatorForTokenClassification``; either (or
    any callable from a list of rows to a batch) can be passed as ``data_collator`` to collate instead.
    With ``shuffle=True`` the order comes from a ``torch.Generator`` seeded with ``seed``: the same seed gives the
    same sequence of epochs.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    pad_id = pad_token_id if tokenizer is None else tokenizer.pad_token_id
    side = getattr(tokenizer, "padding_side", "right")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=data_collator or functools.partial(collate_padded, pad_id=pad_id, padding_side=side),
    )


def pad_token_id_of(model) -> int | None:
    """``model.config.pad_token_id``, or None for a model without a config or without a pad token."""
    return getattr(getattr(model, "config", None), "pad_token_id", None)


def collate_padded(rows: list[dict], pad_id: int | None, *, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Stack a list of examples into tensors: sequence columns (token ids, masks, tag ids) become int64 and are
    padded to the batch's longest row; scalar columns become int64, or float32 if any value is a float; a column
    of equal-length float vectors (multi-output regression labels) becomes a float32 matrix. Values may be Python
    lists and numbers, or tensors / NumPy arrays holding them.
    ``input_ids`` are padded with ``pad_id``; ValueError when they need padding and ``pad_id`` is None."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    batch = {}
    for key in rows[0]:
        values = [_as_python(row[key]) for row in rows]
        if _is_float_vector(values[0]):
            if len({len(v) for v in values}) > 1:
                raise ValueError(f"column {key!r} holds float vectors of different lengths; regression targets "
                                 "must all have num_labels entries")
            batch[key] = torch.tensor(values, dtype=torch.float32)
        elif isinstance(values[0], (list, tuple)):
            fill = pad_id if key == "input_ids" else IGNORE_INDEX if key == "labels" else 0
            width = max(len(v) for v in values)
            if fill is None and any(len(v) < width for v in values):
                raise ValueError(NO_PAD_ID)
            padded = [_pad(list(v), width, fill, padding_side) for v in values]
            batch[key] = torch.tensor(padded, dtype=torch.int64)
        elif isinstance(values[0], (int, float, np.integer, np.floating)):
            is_float = any(isinstance(v, (float, np.floating)) for v in values)
            batch[key] = torch.tensor(values, dtype=torch.float32 if is_float else torch.int64)
        else:
            raise TypeError(f"column {key!r} holds {type(values[0]).__name__} values; keep only numeric columns")
    return batch


def _as_python(value):
    """A tensor or NumPy array (or scalar) as the nested Python lists / numbers it holds; anything else as is."""
    return value.tolist() if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) else value


def _is_float_vector(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], (float, np.floating))


def _pad(values: list, width: int, fill, side: str) -> list:
    padding = [fill] * (width - len(values))
    return values + padding if side == "right" else padding + values
