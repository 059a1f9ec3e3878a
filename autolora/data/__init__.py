"""Task data for AutoLoRA: user files, built-in offline tasks, GLUE, splits and padded batches.

Every source is first read into a :class:`RawTask` (untokenised texts and label ids per split), then
:func:`tokenize_task` turns it into a :class:`TaskData` whose splits are ``datasets.Dataset`` objects with the
columns ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer makes them) and ``labels``.

Label conventions: classification labels are int64 class ids, regression labels float32, token-classification
labels one int64 tag id per sub-token with ``-100`` on special tokens and on every sub-token after a word's first.
"""
from __future__ import annotations

from ..tasks import TASK_TYPES
from .batching import collate_padded, make_loader, pad_token_id_of
from .builtin import (BUILTIN_TASKS, load_builtin_task, read_builtin_task, read_glue, read_roget,
                      read_rotten_tomatoes, read_wnut16)
from .files import load_files
from .inputs import (MODEL_COLUMNS, ModelRows, class_names, infer_task_type, load_dataset_dir, model_column_names,
                     model_inputs, raw_task_from_datasets)
from .planted import plant_ranks, planted_rank_dataset
from .splits import split_in_two
from .task import SPLITS, RawSplit, RawTask, TaskData, tokenize_task

__all__ = [
    "TASK_TYPES", "SPLITS", "BUILTIN_TASKS", "TaskData", "RawSplit", "RawTask", "tokenize_task", "split_in_two",
    "make_loader", "collate_padded", "pad_token_id_of", "load_files", "read_rotten_tomatoes", "read_wnut16",
    "read_roget", "read_glue", "read_builtin_task", "load_builtin_task", "plant_ranks", "planted_rank_dataset",
    "MODEL_COLUMNS", "ModelRows", "model_inputs", "model_column_names", "raw_task_from_datasets", "infer_task_type",
    "class_names", "load_dataset_dir",
]
