"""autolora.readout: margins against hand-computed values, the separation verdict, the budget readout, and update
energies against closed forms and numpy's SVD."""
import math

import numpy as np
import pytest
import torch

from autolora.readout import (MARGIN_CLIP, alpha_separation, budget_ranks, check_score, component_energies,
                              component_margins, separation_verdict, shuffled_ranks, uniform_ranks)


def test_margin_of_a_hand_computed_history():
    # 5 records (n = 4) of a 2-component sigmoid selection, threshold 0.5; tail 0.5 -> the last 2 increments.
    history = torch.tensor([[0.5, 0.5], [0.6, 0.5], [0.7, 0.4], [0.8, 0.5], [1.0, 0.45]], dtype=torch.float64)
    margins = component_margins(history, "sigmoid", tail=0.5)
    # component 0: increments over the tail 0.1, 0.2 -> sd 0.05; distance 0.5; margin 0.5 / (0.05 * 2) = 5
    # component 1: increments 0.1, -0.05 -> sd 0.075; distance -0.05; margin -0.05 / (0.075 * 2) = -1/3
    torch.testing.assert_close(margins, torch.tensor([5.0, -1.0 / 3.0], dtype=torch.float64))


def test_steady_drift_is_separated_and_a_random_walk_is_not():
    g = torch.Generator().manual_seed(0)
    steps = 400
    drift = torch.linspace(0, 1, steps + 1)[:, None] * torch.tensor([0.3, -0.3]) + 0.5
    drift = drift + 3e-4 * torch.randn(steps + 1, 2, generator=g)
    walks = 0.5 + torch.cumsum(0.01 * torch.randn(steps + 1, 200, generator=g), dim=0)
    drift_margin = component_margins(drift, "sigmoid")
    walk_margin = component_margins(walks, "sigmoid")
    assert drift_margin[0] > 10 and drift_margin[1] < -10
    # a pure random walk ends ~N(0, n sd^2) from where it started: |margin| ~ |N(0, 1)|
    assert 0.5 < walk_margin.abs().median() < 1.0
    assert (walk_margin.abs() < 3).float().mean() > 0.95


def test_a_momentum_smoothed_random_walk_is_not_separated_either():
    """Increments e_t = 0.9 e_{t-1} + 0.1 z_t (AdamW's first moment of pure noise): single-increment noise would
    call most of these walks separated; blocks of records keep |margin| of order 1."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(600, 200, generator=g, dtype=torch.float64)
    increments = torch.zeros_like(noise)
    for t in range(1, noise.shape[0]):
        increments[t] = 0.9 * increments[t - 1] + 0.1 * noise[t]
    walks = 0.5 + 0.01 * torch.cumsum(increments, dim=0)
    margin = component_margins(walks, "sigmoid")
    assert margin.abs().median() < 1.2
    assert (margin.abs() < 3).float().mean() > 0.9


def test_a_component_that_never_moved_sits_on_its_threshold_or_is_clipped():
    uniform = torch.full((10, 4), 0.25)
    assert torch.equal(component_margins(uniform, "softmax"), torch.zeros(4, dtype=torch.float64))
    frozen = torch.tensor([[0.4, 0.6]] * 10)
    assert torch.equal(component_margins(frozen, "sigmoid"),
                       torch.tensor([-MARGIN_CLIP, MARGIN_CLIP], dtype=torch.float64))


def test_margin_threshold_follows_the_selection_mode():
    history = torch.tensor([[1.0, 1.0, 1.0], [1.5, 1.0, 0.5], [2.0, 1.0, 0.2], [2.4, 1.1, 0.1]], dtype=torch.float64)
    margins = component_margins(history, "none", tail=1.0)
    threshold = history[-1].sum() / 3  # "none": sum(alpha) / k
    sd = history.diff(dim=0).std(dim=0, correction=0)
    torch.testing.assert_close(margins, ((history[-1] - threshold) / (sd * math.sqrt(3))))


def test_margins_reject_short_histories():
    with pytest.raises(ValueError, match="at least 3 records"):
        component_margins(torch.full((2, 4), 0.25), "softmax")


def test_alpha_separation():
    assert alpha_separation(torch.tensor([0.1, 0.2, 0.3, 0.4]), "softmax") == pytest.approx(0.15)


def test_verdict_counts_modules_whose_every_component_is_decided():
    margins = {"a": torch.tensor([5.0, -4.0]), "b": torch.tensor([6.0, 0.5]), "c": torch.tensor([-3.0, 3.0])}
    summary = separation_verdict(margins)
    assert summary["weakest_margin"] == {"a": 4.0, "b": 0.5, "c": 3.0}
    assert summary["separated_share"] == pytest.approx(2 / 3)
    assert summary["verdict"].startswith("ranks partly read off noise")
    assert separation_verdict({"a": torch.tensor([0.1, -0.2])})["verdict"].startswith("ranks read off noise")
    assert separation_verdict({"a": torch.tensor([9.0, -9.0])})["verdict"].startswith("ranks read off separated")


def test_budget_readout_is_exact_keeps_one_per_module_and_takes_the_largest_margins():
    margins = {"a": torch.tensor([9.0, 8.0, 7.0, 6.0]), "b": torch.tensor([-5.0, -6.0, -7.0, -8.0]),
               "c": torch.tensor([1.0, 6.5, 0.0, 2.0])}
    # best of each module first (a0, b0, c1), then by margin: a1 8, a2 7, a3 6, c3 2, c0 1, c2 0, b1 -6 ...
    assert budget_ranks(margins, 3) == {"a": 1, "b": 1, "c": 1}
    assert budget_ranks(margins, 5) == {"a": 3, "b": 1, "c": 1}
    assert budget_ranks(margins, 7) == {"a": 4, "b": 1, "c": 2}
    assert budget_ranks(margins, 12) == {"a": 4, "b": 4, "c": 4}
    for budget in range(3, 13):
        assert sum(budget_ranks(margins, budget).values()) == budget


def test_budget_readout_breaks_ties_by_module_order_then_component():
    margins = {"a": torch.zeros(3), "b": torch.zeros(3)}
    assert budget_ranks(margins, 3) == {"a": 2, "b": 1}
    assert budget_ranks(margins, 4) == {"a": 3, "b": 1}


def test_budget_readout_rejects_impossible_budgets():
    margins = {"a": torch.zeros(2), "b": torch.zeros(2)}
    with pytest.raises(ValueError, match="between 2"):
        budget_ranks(margins, 1)
    with pytest.raises(ValueError, match="and 4"):
        budget_ranks(margins, 5)
    with pytest.raises(TypeError):
        budget_ranks(margins, 2.0)


def test_uniform_ranks_spread_the_budget_evenly():
    assert uniform_ranks(["a", "b", "c"], 7) == {"a": 3, "b": 2, "c": 2}
    assert uniform_ranks(["a", "b"], 8) == {"a": 4, "b": 4}
    with pytest.raises(ValueError):
        uniform_ranks(["a", "b"], 1)
    with pytest.raises(ValueError):
        uniform_ranks(["a", "b"], 9, max_rank=4)


def test_shuffled_ranks_permute_the_histogram_reproducibly():
    ranks = {f"m{i}": r for i, r in enumerate([1, 1, 2, 3, 5, 8, 8, 4])}
    first, again, other = shuffled_ranks(ranks, 0), shuffled_ranks(ranks, 0), shuffled_ranks(ranks, 1)
    assert list(first) == list(ranks)
    assert sorted(first.values()) == sorted(ranks.values())
    assert first == again and first != other
    assert first != ranks


def test_update_energies_are_the_closed_form_singular_values_of_orthogonal_components():
    """With orthogonal rows of A and orthogonal columns of B, Delta W = sum_j w_j B_j A_j^T is already an SVD:
    its singular values are |w_j| ||B_j|| ||A_j||, sorted; a component with w_j = 0 or B_j = 0 contributes 0."""
    a = torch.zeros(4, 6)
    a[0, 0], a[1, 2], a[2, 3], a[3, 5] = 2.0, 1.0, 3.0, 0.5
    b = torch.zeros(5, 4)
    b[1, 0], b[0, 1], b[4, 2], b[3, 3] = 1.5, 2.0, 0.0, 4.0
    w = torch.tensor([0.5, -1.0, 2.0, 0.0])
    # |w| ||B|| ||A||: 0.5*1.5*2 = 1.5, 1*2*1 = 2, 2*0*3 = 0, 0*4*0.5 = 0
    torch.testing.assert_close(component_energies(a, b, w), torch.tensor([2.0, 1.5, 0.0, 0.0], dtype=torch.float64))


def test_update_energies_match_numpy_svd_of_the_explicit_update_and_pad_to_k():
    generator = torch.Generator().manual_seed(0)
    a, b, w = torch.randn(3, 7, generator=generator), torch.randn(9, 3, generator=generator), torch.rand(3)
    expected = np.linalg.svd((b.double().numpy() * w.double().numpy()) @ a.double().numpy(), compute_uv=False)[:3]
    np.testing.assert_allclose(component_energies(a, b, w).numpy(), expected, rtol=1e-10)
    # k = 5 components in a 2 x 3 layer: Delta W has at most 2 singular values, padded with zeros to k
    a, b, w = torch.randn(5, 3, generator=generator), torch.randn(2, 5, generator=generator), torch.rand(5)
    energies = component_energies(a, b, w)
    assert energies.shape == (5,) and bool((energies[2:] == 0).all()) and bool((energies[:2] > 0).all())
    with pytest.raises(ValueError, match="components of weights"):
        component_energies(torch.randn(4, 3), torch.randn(2, 5), torch.rand(5))


def test_budget_score_names_are_checked():
    check_score("margin")
    check_score("energy")
    with pytest.raises(ValueError, match="score must be one of"):
        check_score("alpha")
