"""Predictions of a (retrained) model on a labelled split, and the task's metrics on them."""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import make_loader, pad_token_id_of
from .metrics import compute_metrics
from .tasks import TASK_TYPES
from .training import to_device


def logits_to_predictions(task_type: str, logits: torch.Tensor) -> torch.Tensor:
    """argmax over classes (classification, per token for token classification); the single output (regression)."""
    if task_type == "regression":
        return logits.squeeze(-1)
    return logits.argmax(-1)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset, *, task_type: str, batch_size: int = 64, tokenizer=None,
            progress: bool = False) -> tuple[list, list]:
    """Model predictions and gold labels for every example of ``dataset`` (eval mode, no dropout).

    Classification / regression: two flat lists, one entry per example. Token classification: two lists of
    per-example label-id lists holding only the positions whose gold label is not -100 (the first sub-token of each
    word), so that predictions and labels line up word by word.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    loader = make_loader(dataset, batch_size, shuffle=False, tokenizer=tokenizer, pad_token_id=pad_token_id_of(model))
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        batch = to_device(batch, device)
        gold = batch.pop("labels")
        pred = logits_to_predictions(task_type, model(**batch).logits)
        if task_type == "token-classification":
            keep = gold != -100
            predictions += [p[m].tolist() for p, m in zip(pred, keep)]
            labels += [g[m].tolist() for g, m in zip(gold, keep)]
        else:
            predictions += pred.tolist()
            labels += gold.tolist()
    model.train(was_training)
    return predictions, labels


def evaluate(model: torch.nn.Module, dataset, *, task_type: str, label_names: Sequence[str] | None = None,
             batch_size: int = 64, tokenizer=None, progress: bool = False) -> dict[str, float]:
    """``compute_metrics`` of :func:`predict`'s output, e.g. {"accuracy": ..., "f1": ...}."""
    predictions, labels = predict(model, dataset, task_type=task_type, batch_size=batch_size, tokenizer=tokenizer,
                                  progress=progress)
    metrics = compute_metrics(task_type, predictions, labels, label_names=label_names)
    return {name: float(value) for name, value in metrics.items()}
