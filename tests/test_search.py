"""autolora.search (autolora/rank_search.py): what the rank search trains, what it leaves alone, its first step,
its settings, diagnostics, record and resume."""
import dataclasses

import datasets
import numpy as np
import pytest
import torch

import hypergrad
from autolora.config import AutoLoRAConfig
from autolora.data import make_loader, split_in_two
from autolora.model import adapter_branches, get_autolora_model, selection_parameters
from autolora.training import model_loss, weight_parameters
from autolora.rank_search import RankSearcher, search
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
    search(model, synthetic_dataset(), steps=3, batch_size=4, selection_lr=0.05, warmup_steps=0)
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


def first_step_setup(seed=3, batch_size=4):
    """A float64 tiny BERT without dropout, non-zero B (every term of h non-trivial), and the first D_tr / D_val
    batches a search with ``seed`` draws."""
    base = tiny_bert(num_labels=3).double()  # float64: AdamW's first step g / (|g| + eps) amplifies rounding of tiny g
    base.set_attn_implementation("eager")  # SDPA's CPU kernel has no double backward, which "exact" needs
    model = without_dropout(get_autolora_model(base, AutoLoRAConfig(max_rank=K)))
    with torch.no_grad():
        for branch in adapter_branches(model).values():
            branch.lora_B.normal_(generator=torch.Generator().manual_seed(5))
    d_tr, d_val = split_in_two(synthetic_dataset(), seed)
    train_batch = next(iter(make_loader(d_tr, batch_size, shuffle=True, seed=seed)))
    val_batch = next(iter(make_loader(d_val, batch_size, shuffle=True, seed=seed + 1)))
    return model, train_batch, val_batch


def explicit_hypergrad(model, weights, betas, train_batch, val_batch, eta):
    """Oracle written without hypergrad: float64 autograd through the explicit update W' = W - eta grad_W Ltr(W, beta)
    (differentiable in beta), h = d Lval(W', beta) / d beta with the validation pass in eval mode."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    w = [p.detach().clone().requires_grad_() for p in weights]
    b = [p.detach().clone().requires_grad_() for p in betas]

    def loss(ws, batch):
        params = {**{by_id[id(p)]: x for p, x in zip(weights, ws)}, **{by_id[id(p)]: x for p, x in zip(betas, b)}}
        return torch.func.functional_call(model, params, args=(), kwargs=batch).loss

    g = torch.autograd.grad(loss(w, train_batch), w, create_graph=True)
    model.eval()
    h = torch.autograd.grad(loss([x - eta * gx for x, gx in zip(w, g)], val_batch), b)
    model.train()
    return h, torch.autograd.grad(loss(w, train_batch), w)


@pytest.mark.parametrize("eta", [None, 0.0])
def test_first_step_is_adamw_on_the_validation_hypergradient(eta):
    """One search step (method exact, SGD lookahead) moves beta by AdamW's first step on h = dLval(W - eta g, beta)/
    dbeta on the first D_val batch (eta = weight lr, or 0: the paper's ablation, h = dLval(W, beta)/dbeta), and W
    by AdamW's first step on grad_W Ltr of the first D_tr batch."""
    seed, batch_size, weight_lr, selection_lr, eps = 3, 4, 1e-2, 1e-2, 1e-8
    model, train_batch, val_batch = first_step_setup(seed, batch_size)
    weights, betas = weight_parameters(model), selection_parameters(model)
    w0, beta0 = [w.detach().clone() for w in weights], [b.detach().clone() for b in betas]
    h, g = explicit_hypergrad(model, weights, betas, train_batch, val_batch, weight_lr if eta is None else eta)
    search(model, synthetic_dataset(), steps=1, method="exact", batch_size=batch_size, weight_lr=weight_lr,
           selection_lr=selection_lr, weight_decay=0.0, seed=seed, warmup_steps=0, lookahead="sgd",
           selection_optimizer="adamw", eta=eta)
    assert any(grad.abs().max() > 1e-4 for grad in h)
    for beta, start, grad in zip(betas, beta0, h):
        torch.testing.assert_close(beta.detach(), start - selection_lr * grad / (grad.abs() + eps),
                                   rtol=0, atol=1e-6)
    for w, start, grad in zip(weights, w0, g):
        torch.testing.assert_close(w.detach(), start - weight_lr * grad / (grad.abs() + eps), rtol=0, atol=1e-6)


def test_sgd_on_the_logits_keeps_the_hypergradient_magnitude():
    """selection_optimizer="sgd": beta <- beta - selection_lr * h, h by the oracle (no normalisation of noise)."""
    seed, batch_size, weight_lr, selection_lr = 3, 4, 1e-2, 10.0
    model, train_batch, val_batch = first_step_setup(seed, batch_size)
    weights, betas = weight_parameters(model), selection_parameters(model)
    beta0 = [b.detach().clone() for b in betas]
    h, _ = explicit_hypergrad(model, weights, betas, train_batch, val_batch, weight_lr)
    search(model, synthetic_dataset(), steps=1, method="exact", batch_size=batch_size, weight_lr=weight_lr,
           selection_lr=selection_lr, seed=seed, warmup_steps=0, lookahead="sgd", selection_optimizer="sgd")
    for beta, start, grad in zip(betas, beta0, h):
        torch.testing.assert_close(beta.detach(), start - selection_lr * grad, rtol=0, atol=1e-10)


def test_history_ranks_and_alphas_are_consistent():
    model = autolora_bert()
    result = search(model, synthetic_dataset(), steps=5, batch_size=4, selection_lr=0.05, record_every=2,
                    warmup_steps=0)
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


def test_validation_pass_runs_without_dropout_unless_asked():
    """The recorded Lval(W') is the eval-mode loss at the lookahead (dropout off); val_dropout=True draws dropout."""
    seed, batch_size, weight_lr = 3, 4, 1e-2
    losses = {}
    for val_dropout in (False, True):
        model, train_batch, val_batch = first_step_setup(seed, batch_size)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.5
        weights = weight_parameters(model)
        g = torch.autograd.grad(model_loss(model.eval(), train_batch), weights)  # dropout off: eval-mode gradient
        before = [w.detach().clone() for w in weights]
        with torch.no_grad():
            for w, gw in zip(weights, g):
                w.sub_(weight_lr * gw)
            expected = model_loss(model.eval(), val_batch).item()
            for w, b in zip(weights, before):
                w.copy_(b)
        result = search(model, synthetic_dataset(), steps=1, batch_size=batch_size, weight_lr=weight_lr, seed=seed,
                        val_dropout=val_dropout, warmup_steps=0, lookahead="sgd", method="first_order")
        losses[val_dropout] = (result.val_losses[0], expected)
    # W' = W - eta g with g drawn under training dropout, so the eval-mode loss at W' differs from ``expected``
    # (computed with the eval-mode g) only by O(eta |g_train - g_eval|); with dropout in the validation pass the
    # loss is that of randomly thinned networks, far from it.
    got, expected = losses[False]
    assert abs(got - expected) < 0.05 * abs(expected)
    noisy, _ = losses[True]
    assert abs(noisy - expected) > 10 * abs(got - expected)


def test_warmup_trains_the_weights_before_any_meta_step():
    model = autolora_bert()
    result = search(model, synthetic_dataset(), steps=4, batch_size=4, selection_lr=0.05, warmup_steps=3,
                    record_every=1)
    assert result.diagnostics["step"] == [4]
    assert len(result.val_losses) == 1 and len(result.train_losses) == 4
    for name, record in result.history["alphas"].items():
        assert torch.equal(record[3], record[0]), name  # logits untouched during the 3 warm-up steps
        assert not torch.equal(record[4], record[3]), name


def test_diagnostics_are_consistent_with_the_search():
    model = autolora_bert()
    result = search(model, synthetic_dataset(), steps=5, batch_size=4, selection_lr=0.05, meta_every=2,
                    warmup_steps=0, method="exact")
    diag = result.diagnostics
    assert diag["step"] == [2, 4] and diag["val_loss"] == result.val_losses
    for name, norms in diag["hypergrad_norm"].items():
        assert len(norms) == 2 and all(n > 0 for n in norms), name
    assert all(m > 0 for m in diag["mixed_norm"]) and all(d > 0 for d in diag["direct_norm"])
    summary = result.summary()
    assert summary["meta_steps"] == 2 and summary["total_rank"] == sum(result.ranks.values())
    assert 0 < summary["mixed_share_mean"] < 1
    assert set(summary["weakest_margin"]) == set(result.ranks)
    for name, alpha in result.alphas.items():
        assert summary["alpha_separation"][name] == pytest.approx(float((alpha - 1 / K).abs().max()))
    assert summary["margins"] == {n: m.tolist() for n, m in result.margins().items()}
    budget = result.budget_ranks(len(result.ranks) + 3)
    assert sum(budget.values()) == len(result.ranks) + 3 and min(budget.values()) >= 1


def test_energies_are_the_singular_values_of_the_update_the_forward_applies():
    """Oracle: Delta W read off the forward itself (adapted layer minus its base layer on the identity matrix, eval
    mode), its singular values from numpy. The energy budget readout keeps, per module, components at least as
    energetic as every component it drops (beyond each module's first)."""
    model = autolora_bert()
    result = search(model, synthetic_dataset(), steps=5, batch_size=4, selection_lr=0.05, warmup_steps=0)
    model.eval()
    with torch.no_grad():
        for name, branch in adapter_branches(model).items():
            eye = torch.eye(branch.base_layer.in_features)
            delta = (branch(eye) - branch.base_layer(eye)).T.double().numpy()
            expected = np.linalg.svd(delta, compute_uv=False)[:K]
            np.testing.assert_allclose(result.energies[name].numpy(), expected, rtol=1e-4, atol=1e-9)
            assert result.summary()["energies"][name] == result.energies[name].tolist()
    budget = len(result.ranks) + 3
    ranks = result.budget_ranks(budget, "energy")
    assert sum(ranks.values()) == budget and min(ranks.values()) >= 1
    kept = [float(e) for n, r in ranks.items() for e in result.energies[n][1:r]]
    dropped = [float(e) for n, r in ranks.items() for e in result.energies[n][r:]]
    assert min(kept) >= max(dropped)
    with pytest.raises(ValueError, match="score must be one of"):
        result.budget_ranks(budget, "alpha")
    with pytest.raises(ValueError, match="no update energies"):
        dataclasses.replace(result, energies={}).budget_ranks(budget, "energy")


def test_a_search_too_short_for_margins_has_no_verdict():
    result = search(autolora_bert(), synthetic_dataset(), steps=1, batch_size=4, warmup_steps=0)
    summary = result.summary()
    assert summary["verdict"].startswith("no verdict: 2 alpha records") and summary["margins"] == {}
    with pytest.raises(ValueError, match="at least 3 records"):
        result.budget_ranks(len(result.ranks), "margin")
    assert result.budget_ranks(len(result.ranks)) == dict.fromkeys(result.ranks, 1)  # energies need no history


@pytest.mark.parametrize("weight_lr, trained", [(0.0, False), (5e-2, True)])
def test_verdict_says_when_the_searched_model_barely_trained(weight_lr, trained):
    """Frozen weights (lr 0) keep the training loss where it starts; lr 5e-2 learns the synthetic task. The verdict
    flags the first only, by the mean training loss of the last 20 steps over that of the first 20."""
    result = search(autolora_bert(), synthetic_dataset(n=64), steps=60, batch_size=8, weight_lr=weight_lr,
                    warmup_steps=0)
    losses = result.train_losses
    ratio = (sum(losses[-20:]) / 20) / (sum(losses[:20]) / 20)
    assert (ratio < 0.9) == trained, ratio
    verdict = result.summary()["verdict"]
    assert ("barely trained" in verdict) == (not trained) and "lost its fit" not in verdict


@pytest.mark.parametrize("curve, clause", [
    ([0.7] * 20 + [0.05] * 60 + [0.5] * 20, "learned and lost its fit"),  # gave back (0.5 - 0.05) / 0.65 of the gain
    ([0.7] * 20 + [0.05] * 60 + [0.7] * 20, "learned and lost its fit"),  # back at the start: lost, not "barely"
    ([0.7] * 20 + [0.05] * 60 + [0.2] * 20, ""),  # gave back 0.15 / 0.65 = 23% < 25%: kept
    ([0.7] * 20 + [0.0] * 40 + [0.01, 0.001] * 10 + [0.04] * 20, ""),  # noise at a low loss is not a lost fit
    ([0.7, 0.69] * 50, "barely trained"),
    ([0.7] * 20 + [0.05] * 20 + [0.9] * 19, "learned and lost its fit"),  # last 20 = one 0.05 and nineteen 0.9
    ([0.7] * 20 + [0.9] * 19, ""),  # 39 steps: too short to judge
])
def test_verdict_says_when_the_searched_model_lost_its_fit(curve, clause):
    """Hand-built training-loss curves with known answers: first, lowest 20-step block, last 20 steps."""
    from autolora.rank_search import training_verdict
    verdict = training_verdict(curve)
    assert (clause in verdict if clause else verdict == ""), verdict


def test_presets_and_overrides():
    from autolora.rank_search import PRESETS, resolve_settings
    paper = resolve_settings("paper")
    assert (paper.weight_lr, paper.selection_lr, paper.warmup_steps, paper.lookahead) == (1e-4, 1e-3, 0, "sgd")
    assert (paper.method, resolve_settings("default").method) == ("finite_difference", "first_order")
    assert RankSearcher(autolora_bert()).bilevel.method == "first_order"
    assert RankSearcher(autolora_bert(), preset="paper").bilevel.method == "finite_difference"
    assert RankSearcher(autolora_bert(), method="exact").bilevel.method == "exact"
    assert resolve_settings("paper", warmup_steps=7).warmup_steps == 7
    assert set(PRESETS) == {"paper", "default"}
    with pytest.raises(ValueError, match="preset"):
        resolve_settings("fast")
    with pytest.raises(ValueError, match="lookahead"):
        resolve_settings("paper", lookahead="newton")
    with pytest.raises(ValueError, match="selection_optimizer"):
        resolve_settings("paper", selection_optimizer="lbfgs")
    with pytest.raises(ValueError, match="method must be one of"):
        resolve_settings("default", method="newton")


RESUME_OPTIONS = dict(warmup_steps=2, steps=6, batch_size=4, selection_lr=0.05, checkpoint_every=3, seed=1)


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
