"""Evaluation metrics for the three task families, from confusion counts and closed forms (numpy only).

* classification: accuracy; ``f1`` = F1 of class 1 when there are two classes, else the macro average of the
  per-class F1 over the classes that occur in the labels or the predictions; ``matthews_corrcoef`` = the
  K-class Matthews correlation (Gorodkin's R_K, equal to the binary MCC for K = 2).
* regression: ``pearson``, ``spearman`` (Pearson of average ranks, ties averaged) and ``mse``.
* token-classification: entity-level ``precision``/``recall``/``f1`` with CoNLL semantics (an entity counts when
  its span and type both match exactly) and token ``accuracy``.

Labels equal to -100 are ignored (not for regression, where -100 is a value). Ratios whose denominator is zero
(no predicted entity, a constant prediction, ...) are defined as 0.0, never NaN.
"""
from __future__ import annotations

import numpy as np
import torch

from .tasks import IGNORE_INDEX, check_task_type


def compute_metrics(task_type: str, predictions, labels, label_names=None) -> dict[str, float]:
    """Metrics of ``METRIC_NAMES[task_type]`` for predictions (logits or ids; numpy, torch or lists) and label ids.

    classification: predictions (n, C) logits or (n,) ids, labels (n,).
    regression: predictions (n,) or (n, 1), labels (n,).
    token-classification: per sentence a row of predictions ((L, C) logits or (L,) ids) and of labels (L,), as
    padded arrays or as lists of rows of varying length; ``label_names`` maps ids to BIO tags.
    """
    check_task_type(task_type)
    if task_type == "regression":
        return _regression_metrics(_numeric(predictions, "predictions"), _numeric(labels, "labels"))
    if task_type == "classification":
        return _classification_metrics(_numeric(predictions, "predictions"), _numeric(labels, "labels"), label_names)
    return _token_classification_metrics(predictions, labels, label_names)


def _numeric(values, what: str) -> np.ndarray:
    """``values`` as a numpy array; floating values must be finite."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        values = (values.double() if values.is_floating_point() else values).numpy()
    array = np.asarray(values)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{what} must be numbers in a rectangular array, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return array


def _class_ids(predictions: np.ndarray, what: str) -> np.ndarray:
    """Class ids from logits (argmax over the last axis) or from integer-valued ids."""
    if predictions.ndim == 2:
        return predictions.argmax(-1)
    if predictions.ndim != 1:
        raise ValueError(f"{what} must be ids (n,) or logits (n, C), got shape {predictions.shape}")
    if np.issubdtype(predictions.dtype, np.floating) and not np.all(predictions == np.round(predictions)):
        raise TypeError(f"{what} are 1-D floats that are not class ids; pass logits of shape (n, C) or ids")
    return predictions.astype(np.int64)


# ------------------------------------------------------------------------------------------------ classification


def _classification_metrics(predictions: np.ndarray, labels: np.ndarray, label_names) -> dict[str, float]:
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n,), got {labels.shape}")
    predicted = _class_ids(predictions, "predictions")
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} predictions but {len(labels)} labels")
    keep = labels != IGNORE_INDEX
    predicted, gold = predicted[keep], labels[keep].astype(np.int64)
    if len(gold) == 0:
        raise ValueError("no labelled examples (every label is -100)")
    num_classes = _num_classes(predictions, predicted, gold, label_names)
    confusion = confusion_matrix(gold, predicted, num_classes)
    return {
        "accuracy": float(np.trace(confusion) / confusion.sum()),
        "f1": _f1(confusion),
        "matthews_corrcoef": _matthews(confusion),
    }


def _num_classes(predictions, predicted, gold, label_names) -> int:
    if label_names is not None:
        num_classes = len(label_names)
    elif predictions.ndim == 2:
        num_classes = predictions.shape[1]
    else:
        num_classes = int(max(predicted.max(), gold.max())) + 1
    out_of_range = [int(v) for v in np.concatenate([predicted, gold]) if not 0 <= v < num_classes]
    if out_of_range:
        raise ValueError(f"class ids {sorted(set(out_of_range))[:10]} are outside [0, {num_classes})")
    return num_classes


def confusion_matrix(gold: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """C[i, j] = number of examples with gold class i predicted as class j."""
    return np.bincount(gold * num_classes + predicted, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _f1(confusion: np.ndarray) -> float:
    """Per-class F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c); class 1's for two classes, else the macro mean over
    the classes that occur (row or column sum > 0)."""
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(0) - tp
    fn = confusion.sum(1) - tp
    per_class = [_ratio(2 * t, 2 * t + p + n) for t, p, n in zip(tp, fp, fn)]
    if len(per_class) <= 2:
        return per_class[1] if len(per_class) == 2 else 0.0
    occurring = (confusion.sum(0) + confusion.sum(1)) > 0
    return float(np.mean([f for f, seen in zip(per_class, occurring) if seen]))


def _matthews(confusion: np.ndarray) -> float:
    """R_K = (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)), c = correct, s = total, t/p = true/predicted counts."""
    confusion = confusion.astype(np.float64)
    t, p = confusion.sum(1), confusion.sum(0)
    c, s = np.trace(confusion), confusion.sum()
    return _ratio(c * s - t @ p, np.sqrt((s * s - p @ p) * (s * s - t @ t)))


# ---------------------------------------------------------------------------------------------------- regression


def _regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predictions = predictions.astype(np.float64)
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if predictions.ndim != 1 or predictions.shape != labels.shape:
        raise ValueError(f"regression needs predictions (n,) or (n, 1) and labels (n,); got {predictions.shape} "
                         f"and {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no examples to evaluate")
    labels = labels.astype(np.float64)
    return {
        "spearman": _pearson(_average_ranks(predictions), _average_ranks(labels)),
        "pearson": _pearson(predictions, labels),
        "mse": float(np.mean((predictions - labels) ** 2)),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """r = sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)^2 sum (y - mean y)^2); 0.0 if either is constant."""
    xc, yc = x - x.mean(), y - y.mean()
    return float(np.clip(_ratio(xc @ yc, np.sqrt((xc @ xc) * (yc @ yc))), -1.0, 1.0))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


# ------------------------------------------------------------------------------------------ token classification


def _split_tag(tag: str) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    if tag[:2] in ("B-", "I-") and len(tag) > 2:
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r} is not BIO: use 'O', 'B-<type>' or 'I-<type>'")


def entity_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities of a BIO tag sequence as (type, start, end) with ``end`` exclusive, with conlleval's rules.

    An entity starts at ``B-X``, or at ``I-X`` when no entity of type X is open (I without a preceding B); it ends
    before ``O``, before any ``B-``, before an ``I-`` of another type, or at the end of the sequence.
    """
    spans, start, open_type = set(), None, None
    for position, tag in enumerate(list(tags) + ["O"]):
        prefix, entity_type = _split_tag(tag)
        if start is not None and (prefix != "I" or entity_type != open_type):
            spans.add((open_type, start, position))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, open_type = position, entity_type
    return spans


def _token_classification_metrics(predictions, labels, label_names) -> dict[str, float]:
    if label_names is None:
        raise ValueError("token classification metrics need label_names (the BIO tag of each label id)")
    prediction_rows, label_rows = _rows(predictions, "predictions"), _rows(labels, "labels")
    if len(prediction_rows) != len(label_rows):
        raise ValueError(f"{len(prediction_rows)} predicted sentences but {len(label_rows)} labelled sentences")
    correct_tokens = total_tokens = correct_entities = predicted_entities = gold_entities = 0
    for number, (row_prediction, row_labels) in enumerate(zip(prediction_rows, label_rows)):
        predicted = _class_ids(row_prediction, f"predictions of sentence {number}")
        if predicted.shape != row_labels.shape:
            raise ValueError(f"sentence {number}: {len(predicted)} predicted tags but {len(row_labels)} labels")
        keep = row_labels != IGNORE_INDEX
        gold_ids, predicted_ids = row_labels[keep].astype(np.int64), predicted[keep]
        gold_spans = entity_spans(_tags(gold_ids, label_names))
        predicted_spans = entity_spans(_tags(predicted_ids, label_names))
        correct_tokens += int((gold_ids == predicted_ids).sum())
        total_tokens += len(gold_ids)
        correct_entities += len(gold_spans & predicted_spans)
        predicted_entities += len(predicted_spans)
        gold_entities += len(gold_spans)
    if total_tokens == 0:
        raise ValueError("no labelled tokens (every label is -100)")
    precision = _ratio(correct_entities, predicted_entities)
    recall = _ratio(correct_entities, gold_entities)
    return {
        "f1": _ratio(2 * precision * recall, precision + recall),
        "precision": precision,
        "recall": recall,
        "accuracy": correct_tokens / total_tokens,
    }


def _rows(values, what: str) -> list[np.ndarray]:
    """One numeric array per sentence, from a padded array/tensor or from a list of rows of varying length."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return list(_numeric(values, what))
    return [_numeric(row, what) for row in values]


def _tags(ids: np.ndarray, label_names) -> list[str]:
    if len(ids) and not (0 <= ids.min() and ids.max() < len(label_names)):
        raise ValueError(f"tag ids must lie in [0, {len(label_names)}); got {sorted(set(ids.tolist()))[:10]}")
    return [label_names[i] for i in ids]
