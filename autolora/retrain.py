"""Retraining (paper §4.5): plain LoRA with the searched per-layer ranks, trained on D_tr ∪ D_val.

The retrain model is built from a fresh base model and a module-name -> rank mapping (``rank_pattern``), never from a
counter in construction order. Its LoRA scaling is the layers' convention for ``selection="fixed"`` (see
docs/autolora.md): each module's update is scaled by the config's ``lora_alpha`` over that module's own rank, as in
PEFT's ``rank_pattern``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from .checkpoint import load_trainable_state, trainable_state
from .config import AutoLoRAConfig
from .data import model_inputs
from .model import get_autolora_model, ranks as read_ranks
from .training import batch_stream, model_loss, run_resumable, to_device, weight_parameters


def build_retrain_model(base_model: torch.nn.Module, search_config: AutoLoRAConfig,
                        ranks: Mapping[str, int]) -> torch.nn.Module:
    """Inject plain LoRA (``selection="fixed"``) into ``base_model`` with rank ``ranks[name]`` for module ``name``.

    Every other setting (targets, ``lora_alpha``, dropout, ``modules_to_save``) is the search config's. Raises
    ValueError if the injected modules or their ranks differ from ``ranks``.
    """
    if not ranks:
        raise ValueError("ranks is empty: pass the module-name -> rank mapping that search() returned")
    bad = {name: r for name, r in ranks.items() if not isinstance(r, int) or r < 1}
    if bad:
        raise ValueError(f"ranks must be positive integers, got {bad}")
    model = get_autolora_model(base_model, search_config.for_retraining(ranks))
    built = read_ranks(model)
    if built != dict(ranks):
        raise ValueError(f"the retrain model's ranks {built} differ from the requested {dict(ranks)}; "
                         "were the ranks searched with another model or other target modules?")
    return model


@dataclass
class TrainResult:
    """Per-step training losses of :func:`train`."""
    losses: list[float] = field(default_factory=list)


def train(model: torch.nn.Module, train_dataset, *, steps: int, batch_size: int = 16, lr: float = 1e-4,
          weight_decay: float = 0.01, seed: int = 0, tokenizer=None, data_collator=None,
          text_column: str | tuple[str, str] | None = None, max_length: int = 128,
          checkpoint_path: str | os.PathLike | None = None, checkpoint_every: int = 50, resume: bool = False,
          callback: Callable[[int, dict], None] | None = None, progress: bool = False) -> TrainResult:
    """Minimise ``model(**batch).loss`` over the LoRA factors and task head with AdamW for ``steps`` steps.

    Batches of ``batch_size`` are drawn from ``train_dataset`` (reshuffled every epoch from ``seed``); the loop
    draws dropout from its own random streams seeded with ``seed`` (restored on resume), leaving the caller's
    global random state untouched. With ``checkpoint_path`` the loop is resumable (see
    :func:`autolora.training.run_resumable`).
    ``train_dataset``, ``tokenizer``, ``data_collator``, ``text_column`` and ``max_length`` as in
    :func:`autolora.search`; a DataLoader's batches are used as they come.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    params = weight_parameters(model)
    device = next(model.parameters()).device
    stream = batch_stream(model, model_inputs(train_dataset, tokenizer=tokenizer, text_column=text_column,
                                              max_length=max_length), batch_size, seed=seed, tokenizer=tokenizer,
                          data_collator=data_collator, checkpointed=checkpoint_path is not None or resume)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    result = TrainResult()

    def step(t: int) -> dict:
        model.train()
        loss = model_loss(model, to_device(next(stream), device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {t}; lower the learning rate")
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        result.losses.append(loss.item())
        return {"train_loss": result.losses[-1]}

    def get_state() -> dict:
        return {"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                "stream": stream.state_dict(), "losses": list(result.losses)}

    def set_state(state: dict) -> None:
        load_trainable_state(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        stream.load_state_dict(state["stream"])
        result.losses[:] = state["losses"]

    run_resumable(step, steps, seed=seed, get_state=get_state, set_state=set_state, checkpoint_path=checkpoint_path,
                  checkpoint_every=checkpoint_every, resume=resume, callback=callback, progress=progress,
                  description="retrain")
    return result
