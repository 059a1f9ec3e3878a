"""autolora/peft_config.py: which modules a PEFT LoraConfig makes the search adapt, which fields it refuses, and the
LoraConfig it hands back. Oracle: the modules stock PEFT's ``get_peft_model`` wraps with LoRA layers."""
import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from autolora.model import adapter_branches, adapter_modules, get_autolora_model
from autolora.peft_config import autolora_config_from, lora_config_for, target_module_names
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta

PREFIX = "base_model.model."
PEFT_DEFAULT_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


def peft_adapted(factory, lora_config):
    """{module name: rank} of the LoRA layers stock PEFT builds (on a copy of the config, which PEFT edits)."""
    model = get_peft_model(factory(), copy.deepcopy(lora_config))
    return {name.removeprefix(PREFIX): m.r["default"] for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def searched_model(factory, lora_config):
    """The model the search would run on: AutoLoRA layers where ``autolora_config_from`` puts them."""
    model = factory()
    return get_autolora_model(model, autolora_config_from(lora_config, model))


@pytest.mark.parametrize("field,value", [
    ("use_rslora", True), ("use_dora", True), ("bias", "all"), ("rank_pattern", {"query": 2}),
    ("alpha_pattern", {"query": 4}),
    ("init_lora_weights", "eva"),
    ("layer_replication", [[0, 1]]), ("lora_bias", True)])
def test_refused_field_raises_naming_it(field, value):
    lora_config = LoraConfig(r=4, target_modules=["query", "value"], **{field: value})
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        autolora_config_from(lora_config, tiny_bert())


def test_a_config_of_another_kind_is_refused():
    with pytest.raises(TypeError, match="peft.LoraConfig"):
        autolora_config_from({"r": 4, "target_modules": ["query"]}, tiny_bert())


TARGET_CASES = [
    (tiny_bert, {"target_modules": ["query", "value"], "layers_to_transform": [1]}),
    (tiny_bert, {"target_modules": ["query", "value"], "layers_to_transform": 0, "layers_pattern": "layer"}),
    (tiny_bert, {"target_modules": ["query", "value"],
                 "exclude_modules": ["bert.encoder.layer.0.attention.self.value"]}),
    (tiny_bert, {"target_modules": r".*layer\.1\.attention\.self\.(query|key)"}),
    (tiny_bert, {"target_modules": ["query", "dense"], "exclude_modules": r".*layer\.0\..*"}),
    (tiny_gpt2, {"layers_to_transform": [1]}),
    (tiny_llama, {"target_modules": r".*\.(q_proj|o_proj)"}),
    (tiny_llama, {"target_modules": ["q_proj", "k_proj", "v_proj"], "exclude_modules": ["k_proj"]}),
    (tiny_bert, {}), (tiny_gpt2, {}), (tiny_llama, {}),
    (tiny_roberta, {"target_modules": ["dense"]}),
]
TARGET_IDS = ["bert-layers", "bert-layer-int-pattern", "bert-exclude", "bert-regex", "bert-exclude-regex",
              "gpt2-layers", "llama-regex", "llama-exclude", "bert-default", "gpt2-default", "llama-default",
              "roberta-dense"]


@pytest.mark.parametrize("task_type", ["SEQ_CLS", None])
@pytest.mark.parametrize("factory,fields", TARGET_CASES, ids=TARGET_IDS)
def test_search_adapts_the_modules_peft_adapts(factory, fields, task_type):
    lora_config = LoraConfig(r=4, task_type=task_type, **fields)
    expected = set(peft_adapted(factory, lora_config))
    assert expected
    assert set(target_module_names(factory(), lora_config)) == expected
    assert set(adapter_modules(searched_model(factory, lora_config))) == expected


@pytest.mark.parametrize("factory,fields", TARGET_CASES, ids=TARGET_IDS)
def test_returned_config_builds_the_same_modules_with_the_given_ranks(factory, fields):
    lora_config = LoraConfig(r=4, task_type="SEQ_CLS", **fields)
    model = searched_model(factory, lora_config)
    branch_ranks = {name: 1 + i % 4 for i, name in enumerate(adapter_branches(model))}
    expected = {}
    for name in adapter_modules(model):  # oracle: a module's rank is the sum over its branches (GPT-2: q and v)
        expected[name] = sum(r for b, r in branch_ranks.items() if b == name or b.startswith(name + "."))
    assert peft_adapted(factory, lora_config_for(model, branch_ranks, template=lora_config)) == expected


@pytest.mark.parametrize("model_type,factory", [("bert", tiny_bert), ("gpt2", tiny_gpt2), ("llama", tiny_llama)])
def test_no_target_modules_means_peft_default_for_the_model_type(model_type, factory):
    found = target_module_names(factory(), LoraConfig(r=4))
    assert found == target_module_names(factory(), LoraConfig(r=4, target_modules=PEFT_DEFAULT_TARGETS[model_type]))
    assert {name.rsplit(".", 1)[-1] for name in found} == set(PEFT_DEFAULT_TARGETS[model_type])
    assert len(found) == 2 * len(PEFT_DEFAULT_TARGETS[model_type])  # in both layers


def test_no_target_modules_and_no_peft_default_is_an_error():
    with pytest.raises(ValueError, match="pass target_modules"):
        target_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2)), LoraConfig(r=4))


def test_targets_that_match_nothing_are_an_error():
    with pytest.raises(ValueError, match="matches no module"):
        target_module_names(tiny_bert(), LoraConfig(r=4, target_modules=["q_proj"]))


def test_returned_config_keeps_the_users_fields():
    template = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.1, target_modules=["query", "value"], task_type="SEQ_CLS",
                          init_lora_weights="gaussian", base_model_name_or_path="tiny-bert", inference_mode=False)
    model = searched_model(tiny_bert, template)
    config = lora_config_for(model, {name: 2 for name in adapter_branches(model)}, template=template)
    kept = ("lora_alpha", "lora_dropout", "task_type", "init_lora_weights", "base_model_name_or_path",
            "inference_mode")
    assert {f: getattr(config, f) for f in kept} == {f: getattr(template, f) for f in kept}
    assert config.modules_to_save == ["classifier"] and config.r == 2


def test_ranks_must_name_exactly_the_adapted_branches():
    model = searched_model(tiny_gpt2, LoraConfig(r=4, task_type="SEQ_CLS"))
    ranks = {name: 2 for name in adapter_branches(model)}
    assert set(lora_config_for(model, ranks).rank_pattern.values()) == {4}  # c_attn: q (2) + v (2)
    with pytest.raises(ValueError, match="not adapted: \\['transformer.h.9.attn.c_attn.q'\\]"):
        lora_config_for(model, {**ranks, "transformer.h.9.attn.c_attn.q": 1})
    missing = dict(list(ranks.items())[2:])
    with pytest.raises(ValueError, match="no rank given for the adapted modules \\['transformer.h.0.attn.c_attn'\\]"):
        lora_config_for(model, missing)
