"""autolora.search (autolora/rank_search.py): what the rank search trains, what it leaves alone, its first step, its record and its resume."""
import datasets
import pytest
import torch

import hypergrad
from autolora.config import AutoLoRAConfig
from autolora.data import make_loader, split_in_two
from autolora.model import adapter_branches, get_autolora_model, selection_parameters
from autolora.training import model_loss, weight_parameters
from autolora.rank_search import search
from autolora.selection import rank_from_alpha
from tiny_models import VOCAB_SIZE, tiny_bert

K = 4


def synthetic_dataset(n=20, seq_len=6, num_labels=3, seed=0):
    """Token-id sequences labelled by their first token modulo ``num_labels`` (learnable), as a datasets.Dataset."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE, (n, seq_len), generator=generator)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                                       "labels": (ids[:, 0] % num_labels).tolist()})


def autolora_bert(lora_seed=0, **config):
    """Tiny BERT (fixed weights) with AutoLoRA; the LoRA A initialisation draws from the global RNG, seeded here."""
    torch.manual_seed(lora_seed)
    return get_autolora_model(tiny_bert(num_labels=3), AutoLoRAConfig(max_rank=K, **config))


def without_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def snapshot(model, trainable):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad == trainable}


def test_search_trains_weights_and_logits_and_leaves_frozen_parameters_bit_identical():
    model = autolora_bert()
    frozen, trainable = snapshot(model, False), snapshot(model, True)
    assert any("embeddings" in n for n in frozen) and any(n.endswith("query.base_layer.weight") for n in frozen)
    search(model, synthetic_dataset(), steps=3, batch_size=4, selection_lr=0.05)
    after = dict(model.named_parameters())
    for name, value in frozen.items():
        assert torch.equal(after[name], value), name
    for name, value in trainable.items():
        assert not torch.equal(after[name], value), f"{name} did not change"


def test_selection_lr_zero_keeps_logits_and_full_rank():
    model = autolora_bert()
    result = search(model, synthetic_dataset(), steps=3, batch_size=4, selection_lr=0.0)
    for beta in selection_parameters(model):
        assert torch.equal(beta, torch.zeros(K))
    assert set(result.ranks.values()) == {K}
    assert all(not torch.equal(b.lora_B, torch.zeros_like(b.lora_B)) for b in adapter_branches(model).values())


def test_first_step_is_adamw_on_the_validation_hypergradient():
    """One search step (method exact) moves beta by AdamW's first step on h = dLval(W - eta g, beta)/dbeta computed
    on the first D_val batch, and W by AdamW's first step on grad_W Ltr of the first D_tr batch."""
    seed, batch_size, weight_lr, selection_lr, eps = 3, 4, 1e-2, 1e-2, 1e-8
    dataset = synthetic_dataset()
    base = tiny_bert(num_labels=3).double()  # float64: AdamW's first step g / (|g| + eps) amplifies rounding of tiny g
    base.set_attn_implementation("eager")  # SDPA's CPU kernel has no double backward, which "exact" needs
    model = without_dropout(get_autolora_model(base, AutoLoRAConfig(max_rank=K)))
    with torch.no_grad():  # non-zero B so that every term of the hypergradient is non-trivial
        for branch in adapter_branches(model).values():
            branch.lora_B.normal_(generator=torch.Generator().manual_seed(5))
    weights, betas = weight_parameters(model), selection_parameters(model)
    w0, beta0 = [w.detach().clone() for w in weights], [b.detach().clone() for b in betas]
    d_tr, d_val = split_in_two(dataset, seed)
    train_batch = next(iter(make_loader(d_tr, batch_size, shuffle=True, seed=seed)))
    val_batch = next(iter(make_loader(d_val, batch_size, shuffle=True, seed=seed + 1)))

    def at(batch):
        return lambda w, b: torch.func.functional_call(
            model, {**dict(zip(names(weights), w)), **dict(zip(names(betas), b))}, args=(), kwargs=batch).loss

    def names(tensors):
        by_id = {id(p): n for n, p in model.named_parameters()}
        return [by_id[id(t)] for t in tensors]

    h = hypergrad.unrolled_hypergrad(at(train_batch), at(val_batch), weights, betas, lr=weight_lr, method="exact")
    g = torch.autograd.grad(model_loss(model, train_batch), weights)
    model.eval()
    search(model, dataset, steps=1, method="exact", batch_size=batch_size, weight_lr=weight_lr,
           selection_lr=selection_lr, weight_decay=0.0, seed=seed)
    for beta, start, grad in zip(betas, beta0, h):
        torch.testing.assert_close(beta.detach(), start - selection_lr * grad / (grad.abs() + eps),
                                   rtol=0, atol=1e-6)
    for w, start, grad in zip(weights, w0, g):
        torch.testing.assert_close(w.detach(), start - weight_lr * grad / (grad.abs() + eps), rtol=0, atol=1e-6)


def test_history_ranks_and_alphas_are_consistent():
    model = autolora_bert()
    result = search(model, synthetic_dataset(), steps=5, batch_size=4, selection_lr=0.05, record_every=2)
    names = list(adapter_branches(model))
    assert list(result.ranks) == names and list(result.alphas) == names
    assert result.history["steps"] == [0, 2, 4, 5]
    assert len(result.train_losses) == 5 and len(result.val_losses) == 5
    for name in names:
        record = result.history["alphas"][name]
        assert record.shape == (4, K)
        torch.testing.assert_close(record.sum(dim=1), torch.ones(4))
        torch.testing.assert_close(record[0], torch.full((K,), 1.0 / K))
        assert torch.equal(record[-1], result.alphas[name])
        assert 1 <= result.ranks[name] <= K
        assert result.ranks[name] == rank_from_alpha(result.alphas[name], "softmax")
    assert len(set(result.ranks.values())) > 1 or min(result.ranks.values()) < K


RESUME_OPTIONS = dict(steps=6, batch_size=4, selection_lr=0.05, checkpoint_every=3, seed=1)


@pytest.fixture(scope="module")
def uninterrupted_search():
    model = autolora_bert()
    return search(model, synthetic_dataset(), **RESUME_OPTIONS), dict(model.named_parameters())


@pytest.mark.parametrize("interrupt_at", [2, 4])
def test_resumed_search_equals_uninterrupted(tmp_path, uninterrupted_search, interrupt_at):
    """Dropout on (RNG restored), D_tr of 10 examples at batch 4 (epochs wrap), checkpoints every 3 steps."""
    reference, expected = uninterrupted_search

    def stop(completed, stats):
        if completed == interrupt_at:
            raise KeyboardInterrupt

    path = tmp_path / "search.pt"
    with pytest.raises(KeyboardInterrupt):
        search(autolora_bert(), synthetic_dataset(), checkpoint_path=path, callback=stop, **RESUME_OPTIONS)
    model = autolora_bert(lora_seed=7)  # different initial LoRA factors: resume must overwrite them
    torch.manual_seed(123)  # a different global RNG state: resume must restore the saved one
    resumed = search(model, synthetic_dataset(), checkpoint_path=path, resume=True, **RESUME_OPTIONS)
    assert resumed.ranks == reference.ranks
    assert resumed.train_losses == reference.train_losses and resumed.val_losses == reference.val_losses
    assert resumed.history["steps"] == reference.history["steps"]
    for name in reference.alphas:
        assert torch.equal(resumed.alphas[name], reference.alphas[name])
        assert torch.equal(resumed.history["alphas"][name], reference.history["alphas"][name])
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, expected[name]), name


def test_search_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        search(autolora_bert(), synthetic_dataset(), steps=1, method="darts")
    with pytest.raises(ValueError, match="selection logits"):
        search(autolora_bert(selection="fixed"), synthetic_dataset(), steps=1)
    with pytest.raises(ValueError, match="at least 2"):
        search(autolora_bert(), synthetic_dataset(n=1), steps=1)
