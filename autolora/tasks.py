"""The task taxonomy shared by data loading and metrics: task types, their metric names and the ignored label id.

* classification: one int64 class id per example; metrics accuracy, f1, matthews_corrcoef.
* regression: one float32 value per example; metrics spearman, pearson, mse.
* token-classification: one int64 tag id per sub-token, ``IGNORE_INDEX`` (-100) where no label applies; metrics
  entity f1, precision, recall, token accuracy.

The first metric of each type is its primary metric (model selection, printed first).
"""
from __future__ import annotations

IGNORE_INDEX = -100
METRIC_NAMES = {
    "classification": ("accuracy", "f1", "matthews_corrcoef"),
    "regression": ("spearman", "pearson", "mse"),
    "token-classification": ("f1", "precision", "recall", "accuracy"),
}
TASK_TYPES = tuple(METRIC_NAMES)


def check_task_type(task_type: str) -> str:
    """``task_type`` itself, or a ValueError naming the valid ones."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task_type {task_type!r}; choose one of {TASK_TYPES}")
    return task_type


def primary_metric(task_type: str) -> str:
    """The metric used for model selection: accuracy, spearman (as for STS-B in the paper) or entity f1."""
    return METRIC_NAMES[check_task_type(task_type)][0]
