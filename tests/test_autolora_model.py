"""AutoLoRAModel: the PEFT-shaped object over the functional API (save/load, merge_and_unload, parameter counts)."""
import json
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from autolora.autolora_model import CONFIG_FILE, WEIGHTS_FILE, AutoLoRAModel
from autolora.config import AutoLoRAConfig
from autolora.export import export_peft_adapter
from autolora.layers import AdapterForward, AutoLoRALinear, SelectionWeightedLoRA
from autolora.model import adapter_branches, head_parameters, lora_parameters, selection_parameters
from autolora.rank_search import SearchResult
from tiny_models import tiny_batch, tiny_bert, tiny_gpt2

FACTORIES = {"bert": tiny_bert, "gpt2": tiny_gpt2}
# Branches in module order: layer 0 then layer 1; query then value (BERT), c_attn.q then c_attn.v (GPT-2).
BRANCHES = {"bert": [f"bert.encoder.layer.{i}.attention.self.{p}" for i in (0, 1) for p in ("query", "value")],
            "gpt2": [f"transformer.h.{i}.attn.c_attn.{p}" for i in (0, 1) for p in ("q", "v")]}
# softmax logits over k = 4 components and the rank the threshold 1/4 reads from them: softmax([3,0,0,0]) keeps
# e^3/(e^3+3) = 0.87; [1,1,0,0] keeps the two e/(2e+2) = 0.37; [1,1,1,0] the three e/(3e+1) = 0.30; [0,0,0,0]
# gives alpha = 1/4 exactly, all four kept.
PLANTED_LOGITS = [[3.0, 0, 0, 0], [1.0, 1, 0, 0], [1.0, 1, 1, 0], [0.0, 0, 0, 0]]
PLANTED_RANKS = [1, 2, 3, 4]


def perturbed(arch, selection="softmax", seed=0, **fields):
    """An AutoLoRAModel (k = 4) on a tiny model with its factors, logits and head moved away from their init."""
    model = AutoLoRAModel(FACTORIES[arch](), AutoLoRAConfig(max_rank=4, selection=selection, **fields))
    generator = torch.Generator().manual_seed(seed)
    inner = model.model
    with torch.no_grad():
        for p in lora_parameters(inner) + selection_parameters(inner) + head_parameters(inner):
            p.add_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def planted(arch):
    """An AutoLoRAModel (k = 4) whose branches read ranks PLANTED_RANKS."""
    model = AutoLoRAModel(FACTORIES[arch](), AutoLoRAConfig(max_rank=4))
    with torch.no_grad():
        for branch, logits in zip(adapter_branches(model.model).values(), PLANTED_LOGITS):
            branch.beta.copy_(torch.tensor(logits))
    return model


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("arch,selection,fields", [
    ("bert", "softmax", {}), ("gpt2", "softmax", {}), ("bert", "sigmoid", {}),
    ("gpt2", "fixed", {"rank_pattern": {"h.1.attn.c_attn.v": 2}})])
def test_save_and_from_pretrained_round_trip_is_bit_identical(arch, selection, fields, tmp_path):
    model = perturbed(arch, selection, **fields)
    model.save_pretrained(tmp_path)
    loaded = AutoLoRAModel.from_pretrained(FACTORIES[arch](), tmp_path)
    assert loaded.config == model.config
    ours, theirs = model.model.state_dict(), loaded.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():  # factors, logits (beta), heads and the untouched base, bit for bit
        assert torch.equal(theirs[key], value) and theirs[key].dtype == value.dtype, key
    fresh = AutoLoRAModel(FACTORIES[arch](), model.config).model.state_dict()
    moved = [key for key in ours if not torch.equal(fresh[key], ours[key])]
    assert any(k.endswith("lora_B") for k in moved) and any(k.startswith(("classifier", "score")) for k in moved)
    assert any(k.endswith("beta") for k in moved) == (selection != "fixed")  # the logits left their init
    assert loaded.ranks() == model.ranks()
    for name, alpha in model.alphas().items():
        assert torch.equal(loaded.alphas()[name], alpha)
    batch = tiny_batch()
    assert torch.equal(logits(loaded, batch), logits(model, batch))


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_stock_peft_loads_the_saved_directory(arch, tmp_path):
    model = perturbed(arch)
    model.save_pretrained(tmp_path)
    batch = tiny_batch()
    peft_model = PeftModel.from_pretrained(FACTORIES[arch](), tmp_path).eval()
    assert (logits(model, batch) - logits(FACTORIES[arch](), batch)).abs().max() > 1e-2  # not vacuous
    torch.testing.assert_close(logits(peft_model, batch), logits(model, batch), rtol=0, atol=1e-5)


RETRAINED = {"bert": {"layer.0.attention.self.query": 2, "layer.1.attention.self.value": 3},
             "gpt2": {"h.0.attn.c_attn.q": 2, "h.1.attn.c_attn.v": 3}}


@pytest.mark.parametrize("retrained", [False, True], ids=["searched", "retrained"])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_merge_and_unload_restores_the_plain_model(arch, retrained, tmp_path):
    """A searched model (softmax selection, k = 4) and a retrained one (plain LoRA, per-module ranks)."""
    model = perturbed(arch, "fixed", rank_pattern=RETRAINED[arch]) if retrained else perturbed(arch)
    if retrained:
        assert sorted(model.ranks().values()) == [2, 3, 4, 4]
    base = model.model
    batch = tiny_batch()
    unmerged = logits(model, batch)
    export_peft_adapter(base, tmp_path)
    peft_merged = PeftModel.from_pretrained(FACTORIES[arch](), tmp_path).merge_and_unload().eval()
    adapted = {name: type(module.base_layer) for name, module in base.named_modules()
               if isinstance(module, AdapterForward)}
    plain = model.merge_and_unload()
    assert plain is base and type(plain) is type(FACTORIES[arch]())
    assert plain.state_dict().keys() == FACTORIES[arch]().state_dict().keys()  # the structure of a fresh model
    assert {name: type(plain.get_submodule(name)) for name in adapted} == \
        dict.fromkeys(adapted, Conv1D if arch == "gpt2" else nn.Linear)
    assert not any(isinstance(m, (AdapterForward, SelectionWeightedLoRA)) for m in plain.modules())
    assert not hasattr(plain, "autolora_config")
    merged = logits(plain, batch)
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged, logits(peft_merged, batch), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no AutoLoRA adapters"):
        model.ranks()


# Hand counts from tests/tiny_models.py (hidden 32, 2 layers, vocab 100, 64 positions, 3 labels).
BERT_PARAMS = (100 * 32 + 64 * 32 + 2 * 32 + 2 * 32  # embeddings: word, position, token type, LayerNorm
               + 2 * (4 * (32 * 32 + 32) + 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 32)  # q k v o, LN, FFN, LN
               + (32 * 32 + 32) + (32 * 3 + 3))  # pooler, classifier
GPT2_PARAMS = (100 * 32 + 64 * 32  # wte, wpe
               + 2 * (2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + 2 * 32 + (32 * 128 + 128) + (128 * 32 + 32))
               + 2 * 32 + 32 * 3)  # ln_f, score (no bias)
HEAD_PARAMS = {"bert": 32 * 3 + 3, "gpt2": 32 * 3}
ADAPTER_PARAMS = 4 * (4 * 32 + 32 * 4 + 4)  # 4 branches of A (4 x 32), B (32 x 4), beta (4)


@pytest.mark.parametrize("arch,base_params", [("bert", BERT_PARAMS), ("gpt2", GPT2_PARAMS)])
def test_print_trainable_parameters_matches_hand_counts(arch, base_params, capsys):
    model = planted(arch)
    trainable, total = ADAPTER_PARAMS + HEAD_PARAMS[arch], base_params + ADAPTER_PARAMS
    assert model.get_nb_trainable_parameters() == (trainable, total)
    model.print_trainable_parameters(reference_rank=4)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    counts = re.fullmatch(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.]+)", lines[0])
    assert (int(counts[1].replace(",", "")), int(counts[2].replace(",", ""))) == (trainable, total)
    assert counts[3] == f"{100 * trainable / total:.4f}"
    assert lines[1] == f"components kept: {sum(PLANTED_RANKS)} of 16 (per-layer threshold)"
    kept, uniform = sum(PLANTED_RANKS) * (32 + 32), 4 * 4 * (32 + 32)  # every branch is 32 x 32
    assert lines[2] == f"LoRA params at the kept ranks: {kept:,d} || uniform rank 4: {uniform:,d} || ratio: 0.6250"


def test_fixed_model_prints_no_component_line(capsys):
    model = AutoLoRAModel(tiny_bert(), AutoLoRAConfig(max_rank=2, selection="fixed"))
    model.print_trainable_parameters()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainable params: ")
    with pytest.raises(ValueError, match="reference_rank"):
        model.print_trainable_parameters(reference_rank=0)


@pytest.mark.parametrize("arch,expected", [
    ("bert", dict(zip(BRANCHES["bert"], PLANTED_RANKS))),
    ("gpt2", {"transformer.h.0.attn.c_attn": 1 + 2, "transformer.h.1.attn.c_attn": 3 + 4})])
def test_to_lora_config_builds_the_ranks_in_stock_peft(arch, expected):
    model = planted(arch)
    assert model.ranks() == dict(zip(BRANCHES[arch], PLANTED_RANKS))
    config = model.to_lora_config()
    assert config.rank_pattern == expected and config.r == max(expected.values())
    peft_model = get_peft_model(FACTORIES[arch](), config)
    built = {name: module.r["default"] for name, module in peft_model.base_model.model.named_modules()
             if isinstance(module, LoraLayer)}
    assert built == expected
    assert model.to_lora_config({b: 1 for b in BRANCHES[arch]}).r == (2 if arch == "gpt2" else 1)


def test_budget_ranks_from_the_final_alphas():
    model = planted("bert")
    # Scores alpha_j - 1/4 per branch: [0.62, -0.21 x3], [0.115 x2, -0.116 x2], [0.047 x3, -0.14], [0 x4].
    # One component per branch first (the first best of each), then the rest by score.
    names = BRANCHES["bert"]
    assert model.budget_ranks(4, score="margin") == dict.fromkeys(names, 1)
    assert model.budget_ranks(6, score="margin") == dict(zip(names, [1, 2, 2, 1]))
    assert model.budget_ranks(8, score="margin") == dict(zip(names, [1, 2, 3, 2]))
    with pytest.raises(ValueError, match="budget must be between 4"):
        model.budget_ranks(17)


def test_budget_ranks_from_a_search_result():
    model = planted("bert")
    generator = torch.Generator().manual_seed(0)
    history = {name: torch.softmax(torch.randn(30, 4, generator=generator), dim=-1) for name in BRANCHES["bert"]}
    result = SearchResult(ranks={}, alphas={}, history={"steps": list(range(30)), "alphas": history})
    assert model.budget_ranks(7, result, score="margin") == result.budget_ranks(7, "margin")
    wrong = SearchResult(ranks={}, alphas={}, history={"steps": list(range(30)), "alphas": {"other": history[
        BRANCHES["bert"][0]]}})
    with pytest.raises(ValueError, match="search run on this model"):
        model.budget_ranks(7, wrong, score="margin")
    fixed = AutoLoRAModel(tiny_bert(), AutoLoRAConfig(selection="fixed"))
    with pytest.raises(ValueError, match="fixed"):
        fixed.budget_ranks(4)


def test_budget_ranks_by_update_energy():
    """Orthogonal unit rows of A and orthogonal columns of B: the singular values of B diag(s alpha) A are
    s alpha ||B_j||, here s / 4 times the column norms chosen below, so the order is known by hand."""
    model = AutoLoRAModel(tiny_bert(), AutoLoRAConfig(max_rank=4))
    norms = [[4.0, 3.0, 0.0, 0.0], [2.5, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [3.5, 0.1, 0.0, 0.0]]
    with torch.no_grad():
        for branch, column_norms in zip(adapter_branches(model.model).values(), norms):
            branch.lora_A.zero_()
            branch.lora_B.zero_()
            for j, norm in enumerate(column_norms):
                branch.lora_A[j, j] = 1.0
                branch.lora_B[j, j] = norm
    names = BRANCHES["bert"]
    # one per branch first (4, 2.5, 0.5, 3.5), then 3 (b0), 0.5, 0.5, 0.5 (b2), 0.1 (b3)
    assert model.budget_ranks(4, score="energy") == dict.fromkeys(names, 1)
    assert model.budget_ranks(6, score="energy") == dict(zip(names, [2, 1, 2, 1]))
    assert model.budget_ranks(8, score="energy") == dict(zip(names, [2, 1, 4, 1]))
    assert model.budget_ranks(9, score="energy") == dict(zip(names, [2, 1, 4, 2]))
    assert model.budget_ranks(8) == dict(zip(names, [2, 1, 4, 1]))  # the energy is the default score
    with pytest.raises(ValueError, match="score must be one of"):
        model.budget_ranks(4, score="alpha")


def test_wrapper_injects_in_place_and_falls_back_to_the_model():
    base = tiny_bert()
    model = AutoLoRAModel(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    assert model.model is base and model.config is base.autolora_config
    assert (model.config.max_rank, model.config.lora_alpha) == (4, 8.0)
    assert sorted(model.config.target_modules) == sorted(BRANCHES["bert"])
    assert isinstance(base.bert.encoder.layer[0].attention.self.query, AutoLoRALinear)
    assert model.num_labels == 3 and model.bert is base.bert  # attributes of the wrapped model
    with pytest.raises(AttributeError):
        model.no_such_attribute
    assert [name for name, _ in model.named_parameters()] == [f"model.{name}" for name, _ in base.named_parameters()]
    assert not any(m.training for m in model.modules())  # the eval base's mode, injected layers included
    model.train()
    assert base.training and base.bert.encoder.layer[0].attention.self.query.training
    batch = tiny_batch()
    model.eval()
    assert torch.equal(logits(model, batch), logits(base, batch))
    with pytest.raises(TypeError, match="AutoLoRAConfig or a peft.LoraConfig"):
        AutoLoRAModel(tiny_bert(), {"r": 4})


def assert_untouched(base, factory):
    assert not hasattr(base, "autolora_config")
    assert base.state_dict().keys() == factory().state_dict().keys()
    assert all(p.requires_grad for p in base.parameters())


def test_from_pretrained_errors_on_bad_directories(tmp_path):
    with pytest.raises(ValueError, match=r"lacks \['autolora_config.json', 'autolora_weights.safetensors', "
                                         r"'selection.safetensors'\]"):
        AutoLoRAModel.from_pretrained(tiny_bert(), tmp_path / "missing")
    model = perturbed("bert")
    export_peft_adapter(model.model, tmp_path / "peft_only")
    with pytest.raises(ValueError, match=r"lacks \['autolora_config.json', 'autolora_weights.safetensors'\]"):
        AutoLoRAModel.from_pretrained(tiny_bert(), tmp_path / "peft_only")
    model.save_pretrained(tmp_path / "saved")
    for factory in (tiny_gpt2, lambda: tiny_bert(num_labels=2)):  # other targets; a head of another shape
        base = factory().train()
        for p in base.parameters():
            p.requires_grad_(True)
        with pytest.raises(ValueError, match="matched no module|does not fit the base model"):
            AutoLoRAModel.from_pretrained(base, tmp_path / "saved")
        assert_untouched(base, factory)


def test_from_pretrained_errors_on_tampered_files(tmp_path):
    perturbed("bert").save_pretrained(tmp_path)
    weights = load_file(tmp_path / WEIGHTS_FILE)
    del weights["bert.encoder.layer.1.attention.self.value.lora_A"]
    save_file(weights, tmp_path / WEIGHTS_FILE)
    base = tiny_bert()
    with pytest.raises(ValueError, match=r"missing \['bert.encoder.layer.1.attention.self.value.lora_A'\]"):
        AutoLoRAModel.from_pretrained(base, tmp_path)
    assert not hasattr(base, "autolora_config")
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "rank_budget": 3}))
    with pytest.raises(ValueError, match=r"fields \['rank_budget'\]"):
        AutoLoRAModel.from_pretrained(tiny_bert(), tmp_path)
