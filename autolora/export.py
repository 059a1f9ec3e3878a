"""Export an AutoLoRA model as a standard PEFT LoRA adapter, plus its selection variables.

PEFT's LoRA layer computes y = base(x) + (lora_B lora_A dropout(x)) * lora_alpha / r_l with r_l from rank_pattern.
An adapted layer of ours computes base(x) + B diag(w) A dropout(x) with w = s * alpha (all branches stacked, see
:func:`autolora.layers.stack_branches`). Writing lora_A = A and lora_B = B diag(w) * r_l / lora_alpha makes the two
equal for every selection mode; r_l is the number of stacked components (k per branch for a searched model, the
retrained rank for selection="fixed"; r_q + r_v for GPT-2's c_attn, whose exported lora_B is zero on the k rows).
``prune=True`` exports only the components the rank readout keeps (r_l = the thresholded rank).

Files written to ``out_dir``:

* ``adapter_config.json``: peft_type "LORA", r (largest r_l), lora_alpha, rank_pattern {module: r_l} for every
  adapted module, target_modules (the adapted module names), modules_to_save, fan_in_fan_out (true when a Conv1D
  is adapted), lora_dropout, task_type.
* ``adapter_model.safetensors``: ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` and the
  modules_to_save state as ``base_model.model.<head>.<param>`` (PEFT's key names).
* ``selection.safetensors``: ``<branch>.alpha`` and ``<branch>.beta`` (no beta for "fixed") per branch, with
  metadata ``selection``, ``lora_alpha`` and ``ranks`` (JSON of the thresholded :func:`autolora.ranks`).
"""
import json
import os

import torch
from safetensors.torch import save_file
from transformers.pytorch_utils import Conv1D

from autolora.model import adapter_branches, adapter_modules, ranks, stored_config, task_type

PREFIX = "base_model.model."
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
SELECTION_FILE = "selection.safetensors"


def peft_lora_factors(module, lora_alpha, prune=False):
    """(lora_A, lora_B) with PEFT's lora_B lora_A * lora_alpha / r equal to the module's B diag(w) A.

    With ``prune`` only the components that pass the rank readout threshold are kept (their weights unchanged).
    """
    lora_A, lora_B, weights = module.stacked_factors()
    if prune:
        keep = torch.cat([branch.selected_components() for branch, _ in module.adapter_branches()])
        lora_A, lora_B, weights = lora_A[keep], lora_B[:, keep], weights[keep]
    r = lora_A.shape[0]
    return lora_A, lora_B * (weights * (r / lora_alpha))


@torch.no_grad()
def peft_factors_by_module(model, prune=False):
    """{adapted module name: (lora_A, lora_B)} as written to the adapter file, detached on the CPU."""
    lora_alpha = stored_config(model).lora_alpha
    return {name: tuple(t.detach().contiguous().cpu() for t in peft_lora_factors(module, lora_alpha, prune))
            for name, module in adapter_modules(model).items()}


def head_state(model):
    """{"<head>.<key>": tensor} of the full state (parameters and buffers) of every head in modules_to_save, keyed
    as in ``model.state_dict()``, detached on the CPU."""
    return {f"{head}.{key}": value.detach().contiguous().cpu() for head in stored_config(model).modules_to_save
            for key, value in model.get_submodule(head).state_dict().items()}


def adapter_state_dict(model, factors):
    """PEFT-keyed tensors: the LoRA ``factors`` of every adapted module and the full state of the saved heads."""
    tensors = {}
    for name, (lora_A, lora_B) in factors.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = lora_A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = lora_B
    tensors.update({PREFIX + key: value for key, value in head_state(model).items()})
    return tensors


def adapter_config(model, factors, base_model_name_or_path=None):
    """The ``adapter_config.json`` content for the LoRA ``factors`` of :func:`peft_factors_by_module`."""
    config = stored_config(model)
    modules = adapter_modules(model)
    rank_pattern = {name: lora_A.shape[0] for name, (lora_A, _) in factors.items()}
    return {
        "peft_type": "LORA",
        "task_type": task_type(model),
        "base_model_name_or_path": base_model_name_or_path,
        "r": max(rank_pattern.values()),
        "lora_alpha": config.lora_alpha,
        "rank_pattern": rank_pattern,
        "alpha_pattern": {},
        "target_modules": sorted(modules),
        "modules_to_save": list(config.modules_to_save) or None,
        "fan_in_fan_out": any(isinstance(module.base_layer, Conv1D) for module in modules.values()),
        "lora_dropout": config.lora_dropout,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


@torch.no_grad()
def selection_state(model):
    """({"<branch>.alpha": alpha, "<branch>.beta": beta}, metadata) of every branch."""
    config = stored_config(model)
    tensors = {}
    for name, branch in adapter_branches(model).items():
        tensors[f"{name}.alpha"] = branch.alpha().detach().cpu().clone()
        if branch.beta is not None:
            tensors[f"{name}.beta"] = branch.beta.detach().cpu().clone()
    metadata = {"selection": config.selection, "lora_alpha": repr(config.lora_alpha),
                "ranks": json.dumps(ranks(model))}
    return tensors, metadata


def export_peft_adapter(model, out_dir, base_model_name_or_path=None, prune=False):
    """Write ``adapter_config.json``, ``adapter_model.safetensors`` and ``selection.safetensors`` to ``out_dir``
    (created if needed), loadable by ``peft.PeftModel.from_pretrained(base_model, out_dir)``. Returns out_dir.

    ``prune=False`` exports every component (PEFT reproduces the model's output); ``prune=True`` keeps only the
    components that pass the rank readout, so rank_pattern equals :func:`autolora.ranks` (summed over q and v for
    a GPT-2 c_attn) and PEFT computes the thresholded model without retraining.
    """
    if not adapter_modules(model):
        raise ValueError("model has no AutoLoRA adapters to export; call autolora.get_autolora_model first")
    factors = peft_factors_by_module(model, prune)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, ADAPTER_CONFIG_FILE), "w") as handle:
        json.dump(adapter_config(model, factors, base_model_name_or_path), handle, indent=2, sort_keys=True)
    save_file(adapter_state_dict(model, factors), os.path.join(out_dir, ADAPTER_WEIGHTS_FILE),
              metadata={"format": "pt"})
    selection, metadata = selection_state(model)
    save_file(selection, os.path.join(out_dir, SELECTION_FILE), metadata=metadata)
    return out_dir
