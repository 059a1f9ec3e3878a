"""AutoLoRA configuration and the default target modules per architecture."""
import dataclasses
import math
import re
from typing import Mapping, Optional, Sequence, Union

from autolora.selection import check_selection_mode

# model.config.model_type -> attention projections adapted by default (q and v, as in the paper and LoRA).
DEFAULT_TARGET_MODULES = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
}

# Task heads trained alongside the adapters when modules_to_save is None (those present in the model): the modules
# a task model adds to its pretrained body. BERT/RoBERTa/ELECTRA ``classifier`` (RoBERTa's holds ``dense`` and
# ``out_proj``), DistilBERT ``pre_classifier`` + ``classifier``, GPT-2/LLaMA ``score``, ``qa_outputs``. A causal LM's
# ``lm_head`` is not one: it is pretrained, and in GPT-2/LLaMA/Gemma it is tied to the input embeddings.
DEFAULT_HEAD_NAMES = ("classifier", "pre_classifier", "score", "qa_outputs")


def name_matches(name, pattern):
    """PEFT's rule: a str pattern is a regex that must ``re.fullmatch`` the name; a list of names matches when
    ``name == t`` or ``name.endswith("." + t)`` for some entry t."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == t or name.endswith("." + t) for t in pattern)


@dataclasses.dataclass
class AutoLoRAConfig:
    """Where to put AutoLoRA layers and how they behave.

    target_modules: module names (exact, or a suffix after a ".") or one regex fully matching the module name;
        None picks ``DEFAULT_TARGET_MODULES[model.config.model_type]``. Matches inside a head of modules_to_save
        are not adapted (the head is trained in full); a target that matches only there is an error.
    max_rank: k, the number of rank-1 components per adapted layer (per q/v slice for GPT-2 ``c_attn``).
    lora_alpha: the scaling of a layer with r components is s = lora_alpha / r (PEFT's convention).
    lora_dropout: dropout probability on the LoRA input, in [0, 1).
    selection: "softmax" (paper), "sigmoid", "none" (ablations) or "fixed" (plain LoRA, for retraining).
    rank_pattern: module name (as :func:`autolora.ranks` reports it; exact or suffix) -> number of components,
        overriding max_rank for that layer; e.g. the searched ranks when retraining with selection="fixed".
    modules_to_save: modules trained in full and exported with the adapter (exact or suffix names); None picks
        the heads among ``DEFAULT_HEAD_NAMES`` present in the model; [] trains no module besides the adapters.
        A head tied to the input embeddings (an LM head) is refused: training it would train the embeddings.
    autocast_adapter_dtype: LoRA factors and selection logits in float32 on a float16/bfloat16 base (default, as
        PEFT); False keeps the base dtype (then the fused kernel runs on CUDA, at the cost of rounding small steps).
    """

    target_modules: Optional[Union[str, Sequence[str]]] = None
    max_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    selection: str = "softmax"
    rank_pattern: Optional[Mapping[str, int]] = None
    modules_to_save: Optional[Sequence[str]] = None
    autocast_adapter_dtype: bool = True

    def __post_init__(self):
        self.target_modules = _checked_names("target_modules", self.target_modules, allow_regex=True, allow_empty=False)
        self.modules_to_save = _checked_names("modules_to_save", self.modules_to_save, allow_regex=False,
                                              allow_empty=True)
        if not _is_int(self.max_rank) or self.max_rank < 1:
            raise ValueError(f"max_rank must be an integer >= 1, got {self.max_rank!r}")
        if not isinstance(self.lora_alpha, (int, float)) or not math.isfinite(self.lora_alpha) \
                or self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be a finite number > 0, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be a probability in [0, 1), got {self.lora_dropout!r}")
        check_selection_mode(self.selection)
        if not isinstance(self.autocast_adapter_dtype, bool):
            raise TypeError(f"autocast_adapter_dtype must be a bool, got {self.autocast_adapter_dtype!r}")
        if self.rank_pattern is not None:
            if not isinstance(self.rank_pattern, Mapping):
                raise TypeError(f"rank_pattern must map module names to ranks, got {type(self.rank_pattern).__name__}")
            bad = {k: v for k, v in self.rank_pattern.items() if not isinstance(k, str) or not _is_int(v) or v < 1}
            if bad:
                raise ValueError(f"rank_pattern needs str module names and integer ranks >= 1; bad entries: {bad}")
            self.rank_pattern = dict(self.rank_pattern)

    def resolved_target_modules(self, model_type):
        """target_modules, or the default for ``model_type`` when None (ValueError for an unknown type)."""
        if self.target_modules is not None:
            return self.target_modules
        if model_type not in DEFAULT_TARGET_MODULES:
            raise ValueError(f"no default target modules for model_type {model_type!r}; pass target_modules "
                             f"explicitly (defaults exist for {sorted(DEFAULT_TARGET_MODULES)})")
        return list(DEFAULT_TARGET_MODULES[model_type])

    def rank_for(self, branch_name):
        """Number of components of the branch ``branch_name``: the rank_pattern entry that matches it exactly, else
        the longest suffix entry that matches, else max_rank."""
        matching = [key for key in (self.rank_pattern or {}) if name_matches(branch_name, [key])]
        if not matching:
            return self.max_rank
        return self.rank_pattern[max(matching, key=len)]

    def for_retraining(self, ranks):
        """The config that retrains plain LoRA with the searched per-layer ``ranks`` (selection="fixed")."""
        return dataclasses.replace(self, selection="fixed", rank_pattern=dict(ranks))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_names(field, value, allow_regex, allow_empty):
    if value is None:
        return None
    if isinstance(value, str):
        if not allow_regex:
            raise TypeError(f"{field} must be a list of module names, got the str {value!r}")
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{field} regex {value!r} does not compile: {error}") from None
        return value
    names = list(value)
    if (not names and not allow_empty) or not all(isinstance(name, str) and name for name in names):
        kind = "a list" if allow_empty else "a non-empty list"
        raise ValueError(f"{field} must be {kind} of non-empty module names (or None), got {value!r}")
    return names
