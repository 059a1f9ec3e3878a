"""What rank search and retraining share: the task loss, the trained parameter group, batch streams and device moves.

:mod:`autolora.rank_search` and :mod:`autolora.retrain` are siblings over this module; neither imports the other.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .checkpoint import BatchStream
from .data import make_loader, pad_token_id_of
from .model import head_parameters, lora_parameters


def model_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The task loss transformers computes from ``batch["labels"]``: cross-entropy (classification, per token for
    token classification, label -100 ignored) or mean squared error (regression)."""
    return model(**batch).loss


def weight_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights W trained on the task loss: every LoRA factor and the task head (``modules_to_save``)."""
    return lora_parameters(model) + head_parameters(model)


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move every tensor of a batch to ``device``."""
    return {k: v.to(device) for k, v in batch.items()}


def batch_stream(model: torch.nn.Module, dataset, batch_size: int, *, seed: int, tokenizer=None) -> BatchStream:
    """An endless, resumable stream of shuffled batches of ``dataset`` (order from ``seed``), padded with the
    tokenizer's pad id or, without a tokenizer, the model's ``config.pad_token_id``."""
    return BatchStream(make_loader(dataset, batch_size, shuffle=True, seed=seed, tokenizer=tokenizer,
                                   pad_token_id=pad_token_id_of(model)))
