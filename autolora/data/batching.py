"""Padded mini-batches: the seeded DataLoader and its collate function."""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..metrics import IGNORE_INDEX


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
