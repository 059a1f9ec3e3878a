"""PEFT export: stock ``peft.PeftModel.from_pretrained`` reproduces our logits; the files follow PEFT's format."""
import functools
import json
import os

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

import autolora
from autolora import AutoLoRAConfig, export_peft_adapter, get_autolora_model
from tiny_models import (TINY_SEQUENCE_CLASSIFIERS, tiny_batch, tiny_bert, tiny_bert_token_classifier, tiny_distilbert,
                         tiny_gpt2_lm, tiny_roberta)

# A non-uniform rank per branch, as a searched-then-retrained model has (GPT-2 c_attn: r_q + r_v in PEFT).
FIXED_RANKS = [3, 1, 2, 4]


def fixed_rank_pattern(arch):
    probe = get_autolora_model(TINY_SEQUENCE_CLASSIFIERS[arch](), AutoLoRAConfig(max_rank=1))
    return dict(zip(autolora.ranks(probe), FIXED_RANKS))


def adapted_model(arch, selection, factory=None, seed=0, scale=0.5, **config):
    """A tiny model with AutoLoRA layers, random nonzero B, random logits beta and a perturbed head; ``config``
    adds AutoLoRAConfig fields."""
    factory = factory or TINY_SEQUENCE_CLASSIFIERS[arch]
    if selection == "fixed":
        config = AutoLoRAConfig(selection="fixed", max_rank=8, lora_alpha=8.0, rank_pattern=fixed_rank_pattern(arch),
                                **config)
    else:
        config = AutoLoRAConfig(selection=selection, max_rank=4, lora_alpha=16.0, **config)
    model = get_autolora_model(factory(), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in autolora.lora_parameters(model) + autolora.selection_parameters(model) + \
                autolora.head_parameters(model):
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model, factory


def load_in_peft(factory, out_dir):
    return PeftModel.from_pretrained(factory(), out_dir).eval()


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2", "llama"])
@pytest.mark.parametrize("selection", ["softmax", "fixed"])
def test_stock_peft_reproduces_logits(arch, selection, dtype, atol, tmp_path):
    model, factory = adapted_model(arch, selection, factory=functools.partial(TINY_SEQUENCE_CLASSIFIERS[arch],
                                                                                dtype=dtype))
    batch = tiny_batch(batch_size=3, seq_len=6)
    with torch.no_grad():
        ours = model(**batch).logits
        base = factory()(**batch).logits
        export_peft_adapter(model, tmp_path, base_model_name_or_path=f"tiny-{arch}")
        theirs = load_in_peft(factory, tmp_path)(**batch).logits
    assert theirs.dtype == dtype
    assert (ours - base).abs().max() > 1e-2  # the adapter and the head change the logits: the check is not vacuous
    torch.testing.assert_close(theirs, ours, rtol=0, atol=atol)


@pytest.mark.parametrize("selection", ["sigmoid", "none"])
def test_ablation_modes_export_too(selection, tmp_path):
    model, factory = adapted_model("bert", selection)
    batch = tiny_batch()
    export_peft_adapter(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(load_in_peft(factory, tmp_path)(**batch).logits, model(**batch).logits,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch,selection", [("bert", "softmax"), ("gpt2", "softmax"), ("llama", "sigmoid")])
def test_pruned_export_is_the_thresholded_model(arch, selection, tmp_path):
    model, factory = adapted_model(arch, selection)
    with torch.no_grad():
        for beta in autolora.selection_parameters(model):
            beta.mul_(6.0)  # spread the logits so that the readout drops components
    found = autolora.ranks(model)
    assert min(found.values()) < 4  # some components are dropped
    export_peft_adapter(model, tmp_path, prune=True)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    expected_pattern = {name: sum(r for branch, r in found.items() if branch == name or branch.startswith(name + "."))
                        for name in autolora.adapter_modules(model)}
    assert config["rank_pattern"] == expected_pattern
    batch = tiny_batch()
    with torch.no_grad():
        for branch in autolora.adapter_branches(model).values():  # oracle: the dropped components contribute 0
            branch.lora_B[:, ~branch.selected_components()] = 0.0
        torch.testing.assert_close(load_in_peft(factory, tmp_path)(**batch).logits, model(**batch).logits,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("factory,config,task,heads", [
    (tiny_bert_token_classifier, {}, "TOKEN_CLS", ["classifier"]),
    (tiny_gpt2_lm, {}, "CAUSAL_LM", None),
    (tiny_distilbert, {}, "SEQ_CLS", ["classifier", "pre_classifier"]),
    (tiny_roberta, {"target_modules": ["dense"]}, "SEQ_CLS", ["classifier"]),  # classifier.dense stays in the head
], ids=["bert-token", "gpt2-lm", "distilbert", "roberta-dense"])
def test_other_task_types_and_heads(factory, config, task, heads, tmp_path):
    model, factory = adapted_model(None, "softmax", factory=factory, **config)
    export_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["task_type"], config["modules_to_save"]) == (task, heads)
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(load_in_peft(factory, tmp_path)(**batch).logits, model(**batch).logits,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_rank_pattern_of_fixed_model_equals_ranks(arch, tmp_path):
    model, _ = adapted_model(arch, "fixed")
    export_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    found = autolora.ranks(model)
    if arch == "gpt2":  # PEFT adapts the whole c_attn: its rank is r_q + r_v
        expected = {name: found[f"{name}.q"] + found[f"{name}.v"] for name in autolora.adapter_modules(model)}
    else:
        expected = found
    assert config["rank_pattern"] == expected
    assert config["r"] == max(expected.values())
    assert config["fan_in_fan_out"] == (arch == "gpt2")
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert config["target_modules"] == sorted(autolora.adapter_modules(model))


@pytest.mark.parametrize("arch", ["bert", "roberta", "gpt2", "llama"])
def test_tensor_names_and_shapes_match_what_peft_saves(arch, tmp_path):
    """Oracle: the state dict PEFT itself saves for a LoRA of the same ranks on the same model."""
    model, factory = adapted_model(arch, "fixed")
    export_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    peft_model = get_peft_model(factory(), LoraConfig(
        r=config["r"], lora_alpha=config["lora_alpha"], rank_pattern=config["rank_pattern"],
        target_modules=config["target_modules"], modules_to_save=config["modules_to_save"],
        fan_in_fan_out=config["fan_in_fan_out"], task_type=config["task_type"]))
    peft_saved = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft_model).items()}
    ours = {k: tuple(v.shape) for k, v in load_file(tmp_path / "adapter_model.safetensors").items()}
    assert ours == peft_saved


def test_gpt2_export_is_zero_on_the_k_rows(tmp_path):
    model, _ = adapted_model("gpt2", "softmax")
    export_peft_adapter(model, tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    lora_B = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    d = lora_B.shape[0] // 3
    r_q = autolora.adapter_branches(model)["transformer.h.0.attn.c_attn.q"].r
    assert lora_B.shape == (3 * d, 8)
    assert torch.count_nonzero(lora_B[d:2 * d]) == 0
    assert torch.count_nonzero(lora_B[:d, r_q:]) == 0 and torch.count_nonzero(lora_B[2 * d:, :r_q]) == 0
    assert torch.count_nonzero(lora_B[:d, :r_q]) == d * r_q


@pytest.mark.parametrize("selection", ["softmax", "fixed"])
def test_selection_file_holds_alpha_beta_and_ranks(selection, tmp_path):
    model, _ = adapted_model("gpt2", selection)
    export_peft_adapter(model, tmp_path)
    path = os.path.join(tmp_path, "selection.safetensors")
    tensors = load_file(path)
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata()
    branches = autolora.adapter_branches(model)
    alphas = autolora.alphas(model)
    expected_keys = {f"{n}.alpha" for n in branches} | {f"{n}.beta" for n, b in branches.items() if b.beta is not None}
    assert set(tensors) == expected_keys
    for name, branch in branches.items():
        torch.testing.assert_close(tensors[f"{name}.alpha"], alphas[name], rtol=0, atol=0)
        if branch.beta is not None:
            torch.testing.assert_close(tensors[f"{name}.beta"], branch.beta.detach(), rtol=0, atol=0)
    assert json.loads(metadata["ranks"]) == autolora.ranks(model)
    assert metadata["selection"] == selection and float(metadata["lora_alpha"]) == model.autolora_config.lora_alpha


def test_export_needs_an_adapted_model(tmp_path):
    with pytest.raises(ValueError, match="get_autolora_model"):
        export_peft_adapter(tiny_bert(), tmp_path)
