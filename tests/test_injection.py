"""Injection into tiny BERT / RoBERTa / GPT-2 / LLaMA: which modules, what is frozen, ranks, merge, config errors."""
import pytest
import torch
from torch import nn

import autolora
from autolora import AutoLoRAConfig, AutoLoRAFusedQKV, AutoLoRALinear, get_autolora_model
from tiny_models import TINY_SEQUENCE_CLASSIFIERS, tiny_bert, tiny_bert_token_classifier, tiny_batch, tiny_gpt2, \
    tiny_llama

LAYERS = (0, 1)
EXPECTED_DEFAULT_BRANCHES = {
    "bert": {f"bert.encoder.layer.{i}.attention.self.{p}" for i in LAYERS for p in ("query", "value")},
    "roberta": {f"roberta.encoder.layer.{i}.attention.self.{p}" for i in LAYERS for p in ("query", "value")},
    "gpt2": {f"transformer.h.{i}.attn.c_attn.{p}" for i in LAYERS for p in ("q", "v")},
    "llama": {f"model.layers.{i}.self_attn.{p}" for i in LAYERS for p in ("q_proj", "v_proj")},
}
EXPECTED_HEADS = {"bert": "classifier", "roberta": "classifier", "gpt2": "score", "llama": "score"}


def perturb(model, seed=0, scale=0.3):
    """Random nonzero LoRA factors and selection logits (B = 0 at init would hide most errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in autolora.lora_parameters(model) + autolora.selection_parameters(model):
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


@pytest.mark.parametrize("arch", sorted(TINY_SEQUENCE_CLASSIFIERS))
def test_default_targets_are_exactly_q_and_v(arch):
    model = get_autolora_model(TINY_SEQUENCE_CLASSIFIERS[arch](), AutoLoRAConfig())
    assert set(autolora.ranks(model)) == EXPECTED_DEFAULT_BRANCHES[arch]
    adapted = {name for name, m in model.named_modules() if isinstance(m, (AutoLoRALinear, AutoLoRAFusedQKV))}
    expected_modules = {name.rsplit(".", 1)[0] if arch == "gpt2" else name for name in EXPECTED_DEFAULT_BRANCHES[arch]}
    assert adapted == expected_modules
    assert model.autolora_config.modules_to_save == [EXPECTED_HEADS[arch]]


@pytest.mark.parametrize("arch", sorted(TINY_SEQUENCE_CLASSIFIERS))
def test_injection_keeps_outputs_and_freezes_exactly_the_base(arch):
    model = TINY_SEQUENCE_CLASSIFIERS[arch]()
    batch = tiny_batch()
    reference = model(**batch).logits
    original = dict(model.named_parameters())
    get_autolora_model(model, AutoLoRAConfig(max_rank=3))
    torch.testing.assert_close(model(**batch).logits, reference, rtol=0, atol=0)  # B = 0 at init
    params = dict(model.named_parameters())
    head = EXPECTED_HEADS[arch] + "."
    expected_trainable = {n for n in params if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B", "beta")
                          or n.startswith(head)}
    assert {n for n, p in params.items() if p.requires_grad} == expected_trainable
    assert len(expected_trainable) == 3 * len(EXPECTED_DEFAULT_BRANCHES[arch]) + sum(
        1 for n in original if n.startswith(head))
    # every original parameter survives (renamed under base_layer where wrapped), frozen unless in the head
    renamed = {n.replace(".base_layer.", "."): p for n, p in params.items() if n.rsplit(".", 1)[-1] not in
               ("lora_A", "lora_B", "beta")}
    assert set(renamed) == set(original)
    assert all(p is original[n] and p.requires_grad == n.startswith(head) for n, p in renamed.items())
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(autolora.lora_parameters(model)) == ids(p for n, p in params.items() if n.endswith(("lora_A", "lora_B")))
    assert ids(autolora.selection_parameters(model)) == ids(p for n, p in params.items() if n.endswith(".beta"))
    assert ids(autolora.head_parameters(model)) == ids(p for n, p in params.items() if n.startswith(head))


def test_backward_fills_only_trainable_gradients():
    model = perturb(get_autolora_model(tiny_llama(), AutoLoRAConfig(max_rank=2)))
    model(**tiny_batch()).logits.square().sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert all(p.grad.abs().sum() > 0 for p in autolora.selection_parameters(model))


def test_suffix_list_and_exact_names():
    model = get_autolora_model(tiny_bert(), AutoLoRAConfig(target_modules=["self.key", "layer.1.output.dense"]))
    assert set(autolora.ranks(model)) == {"bert.encoder.layer.0.attention.self.key",
                                          "bert.encoder.layer.1.attention.self.key",
                                          "bert.encoder.layer.1.output.dense"}


def test_regex_targets_use_fullmatch():
    model = get_autolora_model(tiny_bert(), AutoLoRAConfig(target_modules=r".*\.layer\.0\..*\.(query|value)"))
    assert set(autolora.ranks(model)) == {"bert.encoder.layer.0.attention.self.query",
                                          "bert.encoder.layer.0.attention.self.value"}
    with pytest.raises(ValueError, match="matched no module"):
        get_autolora_model(tiny_bert(), AutoLoRAConfig(target_modules=r"query"))  # fullmatch, not search


def test_unmatched_target_lists_candidates():
    with pytest.raises(ValueError, match=r"\['q_proj'\] matched no module") as error:
        get_autolora_model(tiny_bert(), AutoLoRAConfig(target_modules=["query", "q_proj"]))
    assert "bert.encoder.layer.1.attention.self.value" in str(error.value)
    assert "classifier" in str(error.value)


def test_unsupported_matches_raise_type_error():
    with pytest.raises(TypeError, match="LayerNorm.*supported targets"):
        get_autolora_model(tiny_bert(), AutoLoRAConfig(target_modules=["attention.output.LayerNorm"]))
    with pytest.raises(TypeError, match="Conv1D.*fused qkv"):
        get_autolora_model(tiny_gpt2(), AutoLoRAConfig(target_modules=["c_proj"]))


def test_unknown_architecture_needs_explicit_targets():
    toy = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="pass target_modules"):
        get_autolora_model(toy, AutoLoRAConfig())
    get_autolora_model(toy, AutoLoRAConfig(target_modules=["0"], max_rank=2))
    assert autolora.ranks(toy) == {"0": 2}
    assert toy[0].lora_A.requires_grad and not toy[2].weight.requires_grad  # no head found by default


def test_second_injection_is_refused():
    model = get_autolora_model(tiny_bert(), AutoLoRAConfig())
    with pytest.raises(ValueError, match="already carries"):
        get_autolora_model(model, AutoLoRAConfig(target_modules=["key"]))


def test_token_classifier_head_and_explicit_modules_to_save():
    model = get_autolora_model(tiny_bert_token_classifier(), AutoLoRAConfig())
    assert model.autolora_config.modules_to_save == ["classifier"]
    model = get_autolora_model(tiny_bert(), AutoLoRAConfig(modules_to_save=["pooler"]))
    assert model.bert.pooler.dense.weight.requires_grad and not model.classifier.weight.requires_grad
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] matched no module"):
        get_autolora_model(tiny_bert(), AutoLoRAConfig(modules_to_save=["head"]))


def test_rank_pattern_gives_each_layer_its_own_rank():
    pattern = {"transformer.h.0.attn.c_attn.q": 1, "transformer.h.0.attn.c_attn.v": 3, "h.1.attn.c_attn.v": 2}
    model = get_autolora_model(tiny_gpt2(), AutoLoRAConfig(selection="fixed", max_rank=5, rank_pattern=pattern))
    expected = {"transformer.h.0.attn.c_attn.q": 1, "transformer.h.0.attn.c_attn.v": 3,
                "transformer.h.1.attn.c_attn.q": 5, "transformer.h.1.attn.c_attn.v": 2}
    assert autolora.ranks(model) == expected
    assert {n: b.lora_A.shape[0] for n, b in autolora.adapter_branches(model).items()} == expected
    assert autolora.selection_parameters(model) == []
    with pytest.raises(ValueError, match=r"rank_pattern keys \['layer.9.attention.self.query'\] match no"):
        get_autolora_model(tiny_bert(), AutoLoRAConfig(rank_pattern={"layer.9.attention.self.query": 2}))


def test_searched_ranks_become_the_retraining_config():
    searched = get_autolora_model(tiny_llama(), AutoLoRAConfig(max_rank=4))
    logits = [[0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [1.0, 1.0, -2.0, 0.5], [1.0, 1.0, 1.0, -1.0]]
    with torch.no_grad():
        for beta, values in zip(autolora.selection_parameters(searched), logits):
            beta.copy_(torch.tensor(values))
    found = autolora.ranks(searched)
    assert sorted(found.values()) == [1, 2, 3, 4]
    retrained = get_autolora_model(tiny_llama(), searched.autolora_config.for_retraining(found))
    assert autolora.ranks(retrained) == found
    assert {n: b.r for n, b in autolora.adapter_branches(retrained).items()} == found


def test_alphas_are_detached_copies_of_the_forward_alpha():
    model = perturb(get_autolora_model(tiny_bert(), AutoLoRAConfig(max_rank=4)))
    alphas = autolora.alphas(model)
    branches = autolora.adapter_branches(model)
    for name, alpha in alphas.items():
        assert not alpha.requires_grad
        torch.testing.assert_close(alpha, torch.softmax(branches[name].beta.detach(), dim=0), rtol=0, atol=0)
        alpha.zero_()
    assert all(b.alpha().abs().sum() > 0 for b in branches.values())


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_model_merge_unmerge_round_trip(arch):
    model = perturb(get_autolora_model(TINY_SEQUENCE_CLASSIFIERS[arch](dtype=torch.float64), AutoLoRAConfig()))
    batch = tiny_batch()
    before = model(**batch).logits
    weights = {n: m.base_layer.weight.detach().clone() for n, m in autolora.adapter_modules(model).items()}
    autolora.merge_adapters(model)
    torch.testing.assert_close(model(**batch).logits, before, rtol=1e-10, atol=1e-10)
    autolora.unmerge_adapters(model)
    for name, module in autolora.adapter_modules(model).items():
        torch.testing.assert_close(module.base_layer.weight, weights[name], rtol=0, atol=1e-13)
    torch.testing.assert_close(model(**batch).logits, before, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"max_rank": 0}, ValueError, "max_rank must be an integer >= 1"),
    ({"max_rank": 2.5}, ValueError, "max_rank must be an integer >= 1"),
    ({"selection": "gumbel"}, ValueError, "selection must be one of"),
    ({"lora_dropout": 1.0}, ValueError, r"lora_dropout must be a probability in \[0, 1\)"),
    ({"lora_dropout": -0.1}, ValueError, "lora_dropout"),
    ({"lora_alpha": 0}, ValueError, "lora_alpha must be a finite number > 0"),
    ({"lora_alpha": float("nan")}, ValueError, "lora_alpha"),
    ({"rank_pattern": {"query": 0}}, ValueError, "rank_pattern needs"),
    ({"rank_pattern": [("query", 2)]}, TypeError, "rank_pattern must map"),
    ({"target_modules": []}, ValueError, "target_modules must be a non-empty list"),
    ({"target_modules": "(query"}, ValueError, "does not compile"),
    ({"modules_to_save": "classifier"}, TypeError, "modules_to_save must be a list"),
    ({"modules_to_save": [""]}, ValueError, "modules_to_save must be a list of non-empty module names"),
])
def test_bad_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        AutoLoRAConfig(**kwargs)


def test_helpers_need_an_adapted_model():
    with pytest.raises(ValueError, match="get_autolora_model"):
        autolora.head_parameters(tiny_bert())
