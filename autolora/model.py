"""Inject AutoLoRA layers into a model, freeze it, and read out ranks, alphas and parameter groups.

Names: an adapted ``nn.Linear`` reports under its own module name (``bert.encoder.layer.0.attention.self.query``);
GPT-2's fused ``c_attn`` reports its two branches as ``<name>.q`` and ``<name>.v``
(``transformer.h.0.attn.c_attn.q``). These are the keys of :func:`ranks`, :func:`alphas` and ``rank_pattern``.
"""
import dataclasses

from torch import nn
from transformers.models.auto import modeling_auto
from transformers.pytorch_utils import Conv1D

from autolora.config import DEFAULT_HEAD_NAMES, name_matches
from autolora.layers import AdapterForward, AutoLoRAFusedQKV, AutoLoRALinear, SelectionWeightedLoRA, is_fused_qkv
from autolora.readout import component_energies

SUPPORTED = "nn.Linear and GPT-2's fused qkv Conv1D (c_attn, weight d x 3d)"
# PEFT task type -> the transformers auto-class registry of model classes for that task.
TASK_REGISTRIES = {"SEQ_CLS": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                   "TOKEN_CLS": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
                   "CAUSAL_LM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                   "QUESTION_ANS": modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES}


def find_target_modules(model, target_modules, heads=()):
    """Names of the modules matched by ``target_modules`` (see :func:`autolora.config.name_matches`), leaving out
    the modules inside ``heads`` (trained in full, so an adapter there would train the same weights twice).

    ValueError (listing the Linear/Conv1D candidates) when a target matches nothing, and when it matches only
    modules inside heads; TypeError when a match is not a supported layer (nn.Linear, or a Conv1D that is a fused
    qkv projection).
    """
    matched = [name for name, _ in model.named_modules() if name and name_matches(name, target_modules)]
    names = [name for name in matched if not any(is_within(name, head) for head in heads)]
    entries = [target_modules] if isinstance(target_modules, str) else [[t] for t in target_modules]
    unmatched = [_label(e) for e in entries if not any(name_matches(name, e) for name in matched)]
    if unmatched:
        candidates = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, Conv1D))]
        raise ValueError(f"target_modules {unmatched} matched no module; Linear/Conv1D candidates: {candidates}")
    in_heads = [_label(e) for e in entries if not any(name_matches(name, e) for name in names)]
    if in_heads:
        raise ValueError(f"target_modules {in_heads} match only modules inside heads trained in full {list(heads)}; "
                         "to adapt them with LoRA instead, pass modules_to_save without those heads (e.g. [])")
    for name in names:
        module = model.get_submodule(name)
        supported = is_fused_qkv(module) if isinstance(module, Conv1D) else isinstance(module, nn.Linear)
        if not supported:
            raise TypeError(f"target {name} is a {type(module).__name__}; supported targets: {SUPPORTED}")
    return names


def _label(entry):
    return entry if isinstance(entry, str) else entry[0]


def is_within(name, ancestor):
    """Whether the module or parameter ``name`` is ``ancestor`` itself or lies inside it."""
    return name == ancestor or name.startswith(ancestor + ".")


def _branch_names(name, module):
    return [f"{name}.q", f"{name}.v"] if isinstance(module, Conv1D) else [name]


def _adapter_for(module, branch_ranks, config):
    common = dict(lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, selection=config.selection,
                  autocast_adapter_dtype=config.autocast_adapter_dtype)
    if isinstance(module, Conv1D):
        return AutoLoRAFusedQKV(module, r_q=branch_ranks[0], r_v=branch_ranks[1], **common)
    return AutoLoRALinear(module, r=branch_ranks[0], **common)


def find_heads(model, modules_to_save):
    """Names of the modules trained in full: those matching ``modules_to_save`` (ValueError if one matches
    nothing), or when None the modules named like ``DEFAULT_HEAD_NAMES`` (exact or suffix) present in the model.
    A match inside another match is dropped (the outer module holds it). ValueError when a head shares a
    parameter with a module outside it (an LM head tied to the input embeddings)."""
    patterns = list(DEFAULT_HEAD_NAMES) if modules_to_save is None else modules_to_save
    found = {t: [name for name, _ in model.named_modules() if name and name_matches(name, [t])] for t in patterns}
    missing = [t for t, names in found.items() if not names]
    if modules_to_save is not None and missing:
        raise ValueError(f"modules_to_save {missing} matched no module; top-level modules: "
                         f"{[name for name, _ in model.named_children()]}")
    matches = {name for names in found.values() for name in names}
    heads = sorted(name for name in matches if not any(is_within(name, other) for other in matches - {name}))
    for head in heads:
        _check_untied(model, head)
    return heads


def _check_untied(model, head):
    owners = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    shared = sorted({name for param in model.get_submodule(head).parameters() for name in owners[id(param)]
                     if not is_within(name, head)})
    if shared:
        raise ValueError(f"modules_to_save {head!r} shares its parameters with {shared} (tied input embeddings): "
                         "training it in full would train the embeddings as well. Leave it out of modules_to_save "
                         "(adapters on the body fine-tune a causal LM), or load the model with "
                         "tie_word_embeddings=False to train an untied copy")


def get_autolora_model(model, config):
    """Replace the target modules of ``model`` in place by AutoLoRA layers, freeze everything except the LoRA
    factors, the selection logits and the heads (modules_to_save), and store the resolved config as
    ``model.autolora_config``. Returns ``model``.

    Every trained parameter has one role: a target inside a head is not adapted (the head trains its weights in
    full; see :func:`find_target_modules`)."""
    if adapter_modules(model):
        raise ValueError("model already carries AutoLoRA adapters; inject into a fresh model")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = config.resolved_target_modules(model_type)
    heads = find_heads(model, config.modules_to_save)
    names = find_target_modules(model, targets, heads)
    modules = {name: model.get_submodule(name) for name in names}
    branches = {name: _branch_names(name, module) for name, module in modules.items()}
    all_branches = [b for names_ in branches.values() for b in names_]
    unused = [key for key in (config.rank_pattern or {}) if not any(name_matches(b, [key]) for b in all_branches)]
    if unused:
        raise ValueError(f"rank_pattern keys {unused} match no adapted layer; adapted layers: {all_branches}")
    for param in model.parameters():
        param.requires_grad_(False)
    for name, module in modules.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _adapter_for(module, [config.rank_for(b) for b in branches[name]], config))
    for head in heads:
        model.get_submodule(head).requires_grad_(True)
    model.autolora_config = dataclasses.replace(config, target_modules=targets, modules_to_save=heads)
    return model


def adapter_modules(model):
    """{name: adapted layer} (AutoLoRALinear / AutoLoRAFusedQKV) in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterForward)}


def adapter_branches(model):
    """{name: branch} for every selection-weighted branch, named as :func:`ranks` reports them."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SelectionWeightedLoRA)}


def ranks(model):
    """{branch name: thresholded rank} of the alphas the forward uses."""
    return {name: branch.rank() for name, branch in adapter_branches(model).items()}


def alphas(model):
    """{branch name: detached copy of alpha}."""
    return {name: branch.alpha().detach().clone() for name, branch in adapter_branches(model).items()}


def energies(model):
    """{branch name: singular values of its update B diag(s alpha) A} (:func:`autolora.readout.component_energies`),
    on the CPU."""
    return {name: component_energies(branch.lora_A, branch.lora_B, branch.weighted_alpha()).cpu()
            for name, branch in adapter_branches(model).items()}


def lora_parameters(model):
    """The LoRA factors [A, B of every branch]: the inner-level (weight) parameters besides the heads."""
    return [p for branch in adapter_branches(model).values() for p in (branch.lora_A, branch.lora_B)]


def selection_parameters(model):
    """The selection logits beta of every branch (empty for selection="fixed"): the outer-level parameters."""
    return [branch.beta for branch in adapter_branches(model).values() if branch.beta is not None]


def head_parameters(model):
    """Parameters of the heads trained in full (``model.autolora_config.modules_to_save``)."""
    return [p for head in stored_config(model).modules_to_save for p in model.get_submodule(head).parameters()]


def merge_adapters(model):
    """Fold every adapter's update into its base weight (outputs unchanged, forward cost of the plain model)."""
    for module in adapter_modules(model).values():
        module.merge()


def unmerge_adapters(model):
    """Subtract every merged update from its base weight again."""
    for module in adapter_modules(model).values():
        module.unmerge()


def unload_adapters(model):
    """Put every adapted layer's ``base_layer`` (the original nn.Linear / Conv1D, with whatever update was merged into
    it) back in its place and remove ``model.autolora_config``. Returns ``model``. Unmerged updates are dropped: call
    :func:`merge_and_unload` to keep them. Parameters keep their ``requires_grad`` (the base stays frozen)."""
    stored_config(model)
    for name, module in adapter_modules(model).items():
        model.set_submodule(name, module.base_layer)
    del model.autolora_config
    return model


def merge_and_unload(model):
    """Fold every adapter not yet merged into its base weight, then :func:`unload_adapters`: the plain model (same
    class as before injection, no AutoLoRA module left) whose outputs equal the adapted model's up to the rounding
    of the merged weights. Returns ``model``."""
    for module in adapter_modules(model).values():
        if not module.merged:
            module.merge()
    return unload_adapters(model)


def task_type(model):
    """PEFT task type of the model class as transformers' auto classes register it (``BertForSequenceClassification``
    -> "SEQ_CLS", ``GPT2LMHeadModel`` -> "CAUSAL_LM"), or None for a class registered for none of them."""
    cls_name = type(model).__name__
    return next((task for task, registry in TASK_REGISTRIES.items() if cls_name in registry.values()), None)


def stored_config(model):
    """The config :func:`get_autolora_model` stored on ``model`` (ValueError when there is none)."""
    config = getattr(model, "autolora_config", None)
    if config is None:
        raise ValueError("model has no AutoLoRA adapters; call autolora.get_autolora_model(model, config) first")
    return config
