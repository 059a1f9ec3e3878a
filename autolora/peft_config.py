"""Between PEFT's ``LoraConfig`` and ours: what a PEFT user's config means for the search, and the ``LoraConfig``
that makes stock PEFT build the searched ranks.

Field mapping (``LoraConfig`` -> :class:`autolora.AutoLoRAConfig`):

* ``r`` -> ``max_rank``: k, the rank-1 components each target module offers the search;
* ``target_modules``, ``layers_to_transform``, ``layers_pattern``, ``exclude_modules`` -> the module names PEFT's own
  matching selects in the model (``target_modules=None``: PEFT's default for the model type);
* ``lora_alpha``, ``lora_dropout`` -> the same fields; ``modules_to_save`` -> the modules PEFT trains in full: the
  config's, plus the heads PEFT's task model for ``task_type`` adds (``classifier``/``score`` for SEQ_CLS and
  TOKEN_CLS, ``qa_outputs`` for QUESTION_ANS; none without a task type), and no target inside them is adapted;
* honoured as they are in the returned config (they concern the retrain only): ``task_type``, ``init_lora_weights``
  (except "eva", which reallocates ranks itself), ``inference_mode``, ``base_model_name_or_path``, ``revision``;
* ``fan_in_fan_out`` is set from the layers (True for GPT-2's Conv1D), as PEFT itself corrects it;
* any other field away from its default (``use_rslora``, ``use_dora``, ``bias``, ``lora_bias``, ``rank_pattern``,
  ``alpha_pattern``, ``layer_replication``, ``target_parameters``, ...) is refused: the search cannot honour it.

Scaling: our retrain scales each module's update by ``lora_alpha / r_l`` with ``r_l`` its searched rank, which is
what PEFT does with ``rank_pattern`` and no ``alpha_pattern``. GPT-2's fused ``c_attn`` is one PEFT module whose
rank is r_q + r_v (its update spans the k slice too, which our retrain leaves at zero); its scaling is
``lora_alpha / (r_q + r_v)`` where ours scales each slice by its own rank, so the two retrains start alike but do not
train identically on GPT-2.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import peft
import torch
from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULT_TARGETS
from transformers.pytorch_utils import Conv1D

from .config import AutoLoRAConfig, name_matches
from .model import adapter_modules, stored_config

HONOURED = {"r", "target_modules", "layers_to_transform", "layers_pattern", "exclude_modules", "lora_alpha",
            "lora_dropout", "modules_to_save", "fan_in_fan_out"}
# The heads PEFT's task models (PeftModelForSequenceClassification, ...) add to modules_to_save.
TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}
PASSED_THROUGH = {"task_type", "init_lora_weights", "inference_mode", "base_model_name_or_path", "revision",
                  "peft_type", "peft_version", "auto_mapping", "megatron_core", "runtime_config"}


def _check_lora_config(lora_config) -> None:
    if not isinstance(lora_config, peft.LoraConfig):
        raise TypeError(f"lora_config must be a peft.LoraConfig, got {type(lora_config).__name__}")
    if lora_config.init_lora_weights == "eva":
        raise ValueError("init_lora_weights='eva' redistributes ranks itself; a searched rank_pattern would be "
                         "overridden. Use another initialisation with the searched config")
    default = peft.LoraConfig()
    refused = sorted(f.name for f in dataclasses.fields(lora_config)
                     if f.name not in HONOURED | PASSED_THROUGH
                     and getattr(lora_config, f.name) != getattr(default, f.name))
    if refused:
        raise ValueError(f"LoraConfig fields {refused} cannot be honoured by the rank search (it sets the ranks and "
                         "uses plain LoRA scaling lora_alpha / r); leave them at their defaults")


def peft_heads(model: torch.nn.Module, lora_config) -> list[str]:
    """The modules PEFT trains in full for ``lora_config``: its ``modules_to_save`` plus the heads of
    :data:`TASK_HEADS` for its ``task_type`` that the model has."""
    task_heads = [head for head in TASK_HEADS.get(lora_config.task_type, ())
                  if any(name_matches(name, [head]) for name, _ in model.named_modules())]
    return list(dict.fromkeys(list(lora_config.modules_to_save or []) + task_heads))


def target_module_names(model: torch.nn.Module, lora_config) -> list[str]:
    """Names of the modules PEFT's ``get_peft_model(model, lora_config)`` would adapt: ``target_modules`` (None: PEFT's
    default for ``model.config.model_type``) restricted by ``layers_to_transform`` / ``layers_pattern`` /
    ``exclude_modules``, outside ``modules_to_save`` (PEFT's own ``check_target_module_exists``)."""
    config = dataclasses.replace(lora_config, modules_to_save=peft_heads(model, lora_config) or None)
    if config.target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in PEFT_DEFAULT_TARGETS:
            raise ValueError(f"LoraConfig.target_modules is None and PEFT has no default for model_type "
                             f"{model_type!r}; pass target_modules")
        config = dataclasses.replace(config, target_modules=list(PEFT_DEFAULT_TARGETS[model_type]))

    def adapted(name: str) -> bool:
        found = check_target_module_exists(config, name)
        return bool(found) and not isinstance(found, _ExcludedModule)

    names = [name for name, _ in model.named_modules() if name and adapted(name)]
    if not names:
        raise ValueError(f"LoraConfig.target_modules={config.target_modules!r} (layers_to_transform="
                         f"{config.layers_to_transform!r}) matches no module of the model")
    return names


def autolora_config_from(lora_config, model: torch.nn.Module) -> AutoLoRAConfig:
    """The :class:`AutoLoRAConfig` that searches ``lora_config.r`` components in each module ``get_peft_model(model,
    lora_config)`` would adapt, with its ``lora_alpha``, ``lora_dropout`` and the heads PEFT trains in full
    (:func:`peft_heads`; ValueError for a field the search cannot honour; see the module docstring)."""
    _check_lora_config(lora_config)
    return AutoLoRAConfig(target_modules=target_module_names(model, lora_config), max_rank=lora_config.r,
                          lora_alpha=float(lora_config.lora_alpha), lora_dropout=float(lora_config.lora_dropout),
                          modules_to_save=peft_heads(model, lora_config))


def module_ranks(model: torch.nn.Module, branch_ranks: Mapping[str, int]) -> dict[str, int]:
    """{adapted module name: rank} from per-branch ranks (GPT-2's ``c_attn`` sums its ``.q`` and ``.v`` branches)."""
    modules = adapter_modules(model)
    owner = {branch: name for name in modules for branch in branch_ranks
             if branch == name or branch.startswith(name + ".")}
    unknown = sorted(set(branch_ranks) - set(owner))
    if unknown:
        raise ValueError(f"ranks given for modules that are not adapted: {unknown}")
    missing = [name for name in modules if name not in owner.values()]
    if missing:
        raise ValueError(f"no rank given for the adapted modules {missing}")
    ranks = dict.fromkeys(modules, 0)
    for branch, name in owner.items():
        ranks[name] += branch_ranks[branch]
    return ranks


def lora_config_for(model: torch.nn.Module, branch_ranks: Mapping[str, int], template=None):
    """A ``peft.LoraConfig`` whose ``get_peft_model`` build of the base model has rank ``branch_ranks`` summed per
    module (``rank_pattern``, full module names), our ``lora_alpha``, ``lora_dropout`` and heads
    (``modules_to_save``), and PEFT's scaling ``lora_alpha / r_l`` = our retrain scaling. ``model`` carries the
    adapters the ranks were searched on; ``template`` (the user's LoraConfig) gives the passed-through fields."""
    config = stored_config(model)
    ranks = module_ranks(model, branch_ranks)
    modules = adapter_modules(model)
    kept = {} if template is None else {name: getattr(template, name) for name in PASSED_THROUGH
                                        if name not in ("peft_type", "peft_version", "auto_mapping")}
    return peft.LoraConfig(**{**kept, "r": max(ranks.values()), "rank_pattern": ranks, "alpha_pattern": {},
                              "target_modules": sorted(modules), "lora_alpha": config.lora_alpha,
                              "lora_dropout": config.lora_dropout,
                              "modules_to_save": list(config.modules_to_save) or None,
                              "fan_in_fan_out": any(isinstance(m.base_layer, Conv1D) for m in modules.values())})

