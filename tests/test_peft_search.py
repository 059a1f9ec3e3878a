"""search_lora_config (autolora/peft_search.py): a PEFT LoraConfig in, the LoraConfig of the searched ranks out.

Oracles: stock PEFT (the ranks and trainable parameters ``get_peft_model`` builds from the returned config, and its
forward with our retrain model's weights written in) and the search result's own ranks summed per module by hand.
"""
import copy
import re

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers import DataCollatorWithPadding

from autolora.config import AutoLoRAConfig
from autolora.export import adapter_state_dict, peft_factors_by_module
from autolora.model import head_parameters, lora_parameters
from autolora import peft_search
from autolora.peft_search import search_lora_config
from autolora.retrain import build_retrain_model
from tiny_models import VOCAB_SIZE, tiny_batch, tiny_bert, tiny_gemma, tiny_gpt2, tiny_llama
from tiny_tokenizer import tiny_tokenizer

ARCHS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama, "gemma": tiny_gemma}
K = 4
LORA_ALPHA = 8
# A short search that moves the selection logits from the first step (ranks differ across modules).
SEARCH = dict(steps=6, warmup_steps=0, selection_lr=0.5, batch_size=4)
PREFIX = "base_model.model."


def token_dataset(n=16, seq_len=6, num_labels=3, seed=0):
    """Token-id sequences labelled by their first token modulo ``num_labels``, as a tokenized datasets.Dataset."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE, (n, seq_len), generator=generator)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                                       "labels": (ids[:, 0] % num_labels).tolist()})


def user_config(**fields):
    return LoraConfig(r=K, lora_alpha=LORA_ALPHA, task_type="SEQ_CLS", **fields)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def searched(request):
    """(arch, returned config, search result) of one search per architecture (finite differences: on these tiny
    models their 6 steps give every architecture a non-uniform allocation)."""
    config, result = search_lora_config(ARCHS[request.param](), token_dataset(), user_config(), return_result=True,
                                        method="finite_difference", **SEARCH)
    return request.param, config, result


def per_module(branch_ranks):
    """Branch ranks summed per PEFT module (GPT-2's c_attn.q and c_attn.v are one module)."""
    modules = {}
    for name, rank in branch_ranks.items():
        module = re.sub(r"\.(q|v)$", "", name) if ".c_attn." in name else name
        modules[module] = modules.get(module, 0) + rank
    return modules


def peft_model_of(arch, config):
    """Stock ``get_peft_model`` on a fresh base (a copy of the config: PEFT extends its modules_to_save in place)."""
    return get_peft_model(ARCHS[arch](), copy.deepcopy(config)).eval()


def peft_ranks(peft_model):
    return {name.removeprefix(PREFIX): m.r["default"] for name, m in peft_model.named_modules()
            if isinstance(m, LoraLayer)}


def trained_names(model, normalise):
    return {normalise(name) for name, p in model.named_parameters() if p.requires_grad}


def peft_name(name):
    """PEFT's parameter name as the module's own: '<module>.lora_A.default.weight' -> '<module>.lora_A', and a saved
    head's '<head>.modules_to_save.default.<param>' -> '<head>.<param>'."""
    name = name.removeprefix(PREFIX).replace(".modules_to_save.default.", ".")
    return re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1", name)


def our_name(name):
    """Our retrain model's parameter name per PEFT module: GPT-2's '<c_attn>.q.lora_A' -> '<c_attn>.lora_A'."""
    return re.sub(r"\.(q|v)\.(lora_[AB])$", r".\2", name)


def retrain_model(arch, ranks, seed=0):
    """Our retrain model of ``ranks`` built from its own AutoLoRAConfig (PEFT's default targets are ours), with
    random non-zero LoRA factors and a perturbed head."""
    model = build_retrain_model(ARCHS[arch](), AutoLoRAConfig(max_rank=K, lora_alpha=float(LORA_ALPHA)), ranks)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(model) + head_parameters(model):
            p.add_(0.5 * torch.randn(p.shape, generator=generator))
    return model.eval()


def test_peft_model_has_the_searched_ranks(searched):
    arch, config, result = searched
    assert len(set(result.ranks.values())) > 1  # a non-uniform allocation: the check below is not vacuous
    assert peft_ranks(peft_model_of(arch, config)) == per_module(result.ranks)


def test_peft_model_trains_what_our_retrain_model_trains(searched):
    arch, config, result = searched
    ours = trained_names(retrain_model(arch, result.ranks), our_name)
    assert any(".lora_A" in name for name in ours) and any(name.startswith(("classifier.", "score.")) for name in ours)
    assert trained_names(peft_model_of(arch, config), peft_name) == ours


def test_peft_forward_with_our_weights_equals_our_retrain_model(searched):
    arch, config, result = searched
    # Both in float64, so that the two models' different summation orders (and the export's folding of the
    # selection weights into the factors) stay far below the tolerance.
    ours = retrain_model(arch, result.ranks).double()
    peft_model = peft_model_of(arch, config).double()
    loaded = set_peft_model_state_dict(peft_model, adapter_state_dict(ours, peft_factors_by_module(ours)))
    assert not loaded.unexpected_keys
    batch = tiny_batch(batch_size=3, seq_len=6)
    with torch.no_grad():
        expected = ours(**batch).logits
        assert (expected - ARCHS[arch]().double()(**batch).logits).abs().max() > 1e-2  # the adapters change them
        torch.testing.assert_close(peft_model(**batch).logits, expected, rtol=0, atol=1e-10)


def model_state(model):
    """Everything a search could change on the user's model."""
    return {"tensors": {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()},
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "training": {n: m.training for n, m in model.named_modules()},
            "modules": {n: type(m) for n, m in model.named_modules()},
            "attributes": set(vars(model)), "config": model.config.to_dict(),
            "attention": model.config._attn_implementation}


@pytest.mark.parametrize("arch,method", [("llama", "exact"), ("gpt2", "finite_difference")])
def test_users_model_and_random_state_are_left_as_they_were(arch, method):
    model = ARCHS[arch]()
    model.train()
    next(model.parameters()).requires_grad_(False)  # a flag the search's freezing would otherwise leave alike
    torch.manual_seed(12345)  # a random state no search draws from
    before, rng = model_state(model), torch.get_rng_state()
    search_lora_config(model, token_dataset(), user_config(), method=method, **SEARCH)
    after = model_state(model)
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key
    for key in ("requires_grad", "training", "modules", "attributes", "config", "attention"):
        assert after[key] == before[key], key
    assert not hasattr(model, "autolora_config")
    assert torch.equal(torch.get_rng_state(), rng)


def test_exact_method_searches_an_sdpa_model_through_eager_attention():
    model = tiny_llama()
    assert model.config._attn_implementation == "sdpa"  # whose CPU kernel has no double backward
    result = search_lora_config(model, token_dataset(), user_config(), method="exact", return_result=True,
                                **SEARCH)[1]
    assert len(result.diagnostics["step"]) == SEARCH["steps"]  # every step took an exact meta step


def test_exact_method_refuses_a_model_whose_attention_cannot_be_switched(monkeypatch):
    model = tiny_llama()
    monkeypatch.setattr(type(model), "_can_set_attn_implementation", lambda self: False)
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        search_lora_config(model, token_dataset(), user_config(), method="exact", **SEARCH)


def test_same_seed_same_config_other_seed_other_search():
    first, again, other = (search_lora_config(tiny_bert(), token_dataset(), user_config(), seed=seed,
                                              return_result=True, **SEARCH) for seed in (0, 0, 1))
    assert first[0].rank_pattern == again[0].rank_pattern
    for name, alpha in first[1].alphas.items():
        assert torch.equal(again[1].alphas[name], alpha)
    assert any(not torch.equal(other[1].alphas[name], alpha) for name, alpha in first[1].alphas.items())


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_budget_config_holds_exactly_budget_components(arch):
    branches = 4  # two layers, q and v (GPT-2: two slices of each c_attn)
    budget = branches + 3
    config, result = search_lora_config(ARCHS[arch](), token_dataset(), user_config(), budget=budget,
                                        return_result=True, **SEARCH)
    assert sum(config.rank_pattern.values()) == budget and min(config.rank_pattern.values()) >= 1
    assert config.rank_pattern == per_module(result.budget_ranks(budget))
    assert sum(peft_ranks(peft_model_of(arch, config)).values()) == budget


def test_energy_budget_config_holds_the_energy_readout():
    budget = 4 + 3
    config, result = search_lora_config(tiny_bert(), token_dataset(), user_config(), budget=budget,
                                        budget_score="energy", return_result=True, **SEARCH)
    assert config.rank_pattern == per_module(result.budget_ranks(budget, "energy"))
    assert sum(config.rank_pattern.values()) == budget


@pytest.mark.parametrize("budget,rank", [(4, 1), (4 * K, K)])
def test_budget_extremes_give_uniform_ranks(budget, rank):
    config = search_lora_config(tiny_bert(), token_dataset(), user_config(), budget=budget, **SEARCH)
    assert set(config.rank_pattern.values()) == {rank} and len(config.rank_pattern) == 4


@pytest.fixture
def no_search(monkeypatch):
    """Bad arguments must be refused before the search starts."""
    def search(*args, **kwargs):
        raise AssertionError("the search ran")
    monkeypatch.setattr(peft_search, "search", search)


@pytest.mark.parametrize("budget,error,message", [
    (3, ValueError, "between 4 "), (4 * K + 1, ValueError, f"and {4 * K} "), (5.0, TypeError, "int"),
    (True, TypeError, "int")])
def test_budget_out_of_range_is_refused(budget, error, message, no_search):
    with pytest.raises(error, match=message):
        search_lora_config(tiny_bert(), token_dataset(), user_config(), budget=budget, **SEARCH)


@pytest.mark.parametrize("arguments,error,message", [
    ({"train_dataset": token_dataset().select([])}, ValueError, "train_dataset is empty"),
    ({"steps": -1}, ValueError, "steps must be an integer >= 0"),
    ({"steps": 2.5}, ValueError, "steps must be an integer >= 0"),
    ({"lora_config": {"r": 4}}, TypeError, "peft.LoraConfig"),
    ({"lora_config": user_config(use_dora=True)}, ValueError, "use_dora"),
    ({"budget": 5, "budget_score": "alpha"}, ValueError, "score must be one of"),
])
def test_bad_arguments_are_refused(arguments, error, message, no_search):
    given = {"train_dataset": token_dataset(), "lora_config": user_config(), "steps": 2, **arguments}
    with pytest.raises(error, match=message):
        search_lora_config(tiny_bert(), given.pop("train_dataset"), given.pop("lora_config"), **given)


def test_tokenized_text_dataset_end_to_end(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    texts = ["the movie was great fun", "a dull film", "i love it", "i hate it and it was bad", "very good",
             "not good", "the film is awful", "great film", "it was not fun", "a very new movie"] * 2
    labels = [1, 0, 1, 0, 1, 0, 0, 1, 0, 1] * 2
    dataset = datasets.Dataset.from_dict({"text": texts, "label": labels}).map(
        lambda rows: {**tokenizer(rows["text"]), "labels": rows["label"]}, batched=True,
        remove_columns=["text", "label"])
    base = tiny_bert(num_labels=2)
    config = search_lora_config(base, dataset, LoraConfig(r=K, target_modules=["query", "value"], task_type="SEQ_CLS"),
                                tokenizer=tokenizer, **SEARCH)
    model = get_peft_model(base, config)
    assert peft_ranks(model) == config.rank_pattern
    lora_B = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert all(torch.count_nonzero(b) == 0 for b in lora_B.values())  # PEFT starts B at zero
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(**DataCollatorWithPadding(tokenizer)([dataset[i] for i in range(8)])).loss
    loss.backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.count_nonzero(after[n]) > 0 for n in lora_B)
    assert all(torch.equal(after[n], value) for n, value in frozen.items())
