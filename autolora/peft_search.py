"""Rank search for PEFT users: a ``peft.LoraConfig`` in, the ``LoraConfig`` with the searched ranks out
(:func:`search_lora_config`).

The search runs on a deep copy of the model (twice its memory while it runs); the model passed in is left exactly
as it was. How the fields of the ``LoraConfig`` map to the search, and which ones are refused, is documented in
:mod:`autolora.peft_config`.
"""
from __future__ import annotations

import copy

import torch

from .checkpoint import isolated_rng, seed_rng
from .loading import use_eager_attention
from .model import adapter_branches, get_autolora_model
from .peft_config import autolora_config_from, lora_config_for
from .rank_search import search
from .readout import DEFAULT_BUDGET_SCORE, check_budget, check_score


def search_lora_config(model: torch.nn.Module, train_dataset, lora_config, *, steps: int = 300,
                       budget: int | None = None, budget_score: str = DEFAULT_BUDGET_SCORE, seed: int = 0,
                       return_result: bool = False, **search_options):
    """Search per-module LoRA ranks for ``model`` on ``train_dataset`` and return the ``peft.LoraConfig`` whose
    ``get_peft_model(model, config)`` build has them.

    Each module ``get_peft_model(model, lora_config)`` would adapt offers ``lora_config.r`` rank-1 components
    (GPT-2's fused ``c_attn``: ``r`` for its q slice and ``r`` for its v slice) to an AutoLoRA search
    (:func:`autolora.search`) of ``steps`` steps on a deep copy of ``model``; the LoRA factors of the copy are
    initialised from ``seed`` (the caller's random state is left untouched), which also seeds the search.
    ``search_options`` go to :func:`autolora.search` (``preset``, ``method``, ``selection_lr``, ``warmup_steps``,
    ``batch_size``, ``tokenizer``, ...); with ``method="exact"`` the copy is switched to eager attention, whose
    backward can be differentiated again.

    The ranks are the paper's per-layer threshold (``result.ranks``), or with ``budget`` the ``budget`` components
    with the largest singular values of the searched updates over all branches, at least one per branch
    (``result.budget_ranks(budget, budget_score)``; ``budget_score="margin"`` ranks by margin instead, see
    :mod:`autolora.readout`). The
    returned config has them as ``rank_pattern`` (full module names; GPT-2's ``c_attn`` gets r_q + r_v),
    ``target_modules`` the adapted module names, the heads trained during the search as ``modules_to_save``, and
    ``lora_alpha``, ``lora_dropout``, ``task_type`` and ``init_lora_weights`` from ``lora_config``; PEFT scales each
    module's update by ``lora_alpha / rank``. With ``return_result=True`` returns ``(config, search_result)``.

    Example::

        cfg = autolora.search_lora_config(base, train_ds, LoraConfig(r=8, target_modules=["query", "value"],
                                                                      task_type="SEQ_CLS"))
        model = get_peft_model(base, cfg)

    Raises TypeError for a ``lora_config`` that is not a ``peft.LoraConfig``, ValueError for a field the search
    cannot honour, an unknown ``budget_score``, an empty ``train_dataset``, ``steps < 0`` and a ``budget`` outside
    [number of branches, ``r`` * number of branches].
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
        raise ValueError("train_dataset is empty: the search needs training examples (it splits them 1:1 into "
                         "D_tr and D_val)")
    check_score(budget_score)
    searched = searchable_copy(model, lora_config, seed=seed, exact=search_options.get("method") == "exact")
    if budget is not None:  # before the search instead of after it
        check_budget(budget, [branch.r for branch in adapter_branches(searched).values()])
    result = search(searched, train_dataset, steps=steps, seed=seed, **search_options)
    ranks = result.ranks if budget is None else result.budget_ranks(budget, budget_score)
    config = lora_config_for(searched, ranks, template=lora_config)
    return (config, result) if return_result else config


def searchable_copy(model: torch.nn.Module, lora_config, *, seed: int, exact: bool = False) -> torch.nn.Module:
    """A deep copy of ``model`` with AutoLoRA layers (``lora_config.r`` components per branch) on the modules
    ``get_peft_model(model, lora_config)`` would adapt, LoRA factors drawn from ``seed``; with ``exact`` its attention
    is eager (ValueError when transformers cannot switch it)."""
    search_config = autolora_config_from(lora_config, model)
    searched = copy.deepcopy(model)
    if exact:
        use_eager_attention(searched)
    with isolated_rng():
        seed_rng(seed)
        return get_autolora_model(searched, search_config)
