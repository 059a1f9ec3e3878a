"""AutoLoRA: LoRA with learned per-layer ranks (selection variables searched by bilevel optimisation)."""
from autolora.autolora_model import AutoLoRAModel
from autolora.config import DEFAULT_HEAD_NAMES, DEFAULT_TARGET_MODULES, AutoLoRAConfig
from autolora.export import export_peft_adapter
from autolora.layers import AutoLoRAFusedQKV, AutoLoRALinear, SelectionWeightedLoRA
from autolora.evaluation import evaluate, predict
from autolora.model import (adapter_branches, adapter_modules, alphas, get_autolora_model, head_parameters,
                            lora_parameters, merge_adapters, merge_and_unload, ranks, selection_parameters,
                            unload_adapters, unmerge_adapters)
from autolora.peft_config import lora_config_for
from autolora.peft_search import search_lora_config
from autolora.rank_search import RankSearcher, SearchResult, search
from autolora.retrain import TrainResult, build_retrain_model, train
from autolora.trainer import SearchTrainer
from autolora.selection import SELECTION_MODES, alpha_from_logits, rank_from_alpha, selected_components, \
    selection_threshold

__all__ = [
    "search_lora_config", "lora_config_for", "AutoLoRAModel", "SearchTrainer",
    "AutoLoRAConfig", "DEFAULT_TARGET_MODULES", "DEFAULT_HEAD_NAMES",
    "AutoLoRALinear", "AutoLoRAFusedQKV", "SelectionWeightedLoRA",
    "get_autolora_model", "ranks", "alphas", "lora_parameters", "selection_parameters", "head_parameters",
    "adapter_modules", "adapter_branches", "merge_adapters", "unmerge_adapters", "merge_and_unload", "unload_adapters",
    "export_peft_adapter",
    "search", "SearchResult", "RankSearcher", "build_retrain_model", "train", "TrainResult", "evaluate", "predict",
    "SELECTION_MODES", "alpha_from_logits", "selection_threshold", "selected_components", "rank_from_alpha",
]
