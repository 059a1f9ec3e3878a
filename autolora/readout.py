"""Reading ranks off a search: per-component margins, a separation verdict, and the budget readout.

Margins. For component j of a module, with alpha_j(t) recorded at the n + 1 records t = 0..n of a search and
lambda the module's readout threshold (:func:`autolora.selection.selection_threshold`),

    margin_j = (alpha_j(n) - lambda(n)) / (sd_tail(delta_L alpha_j) * sqrt(n / L)),

where delta_L alpha_j are the increments of alpha_j over consecutive blocks of L records within the last ``tail``
fraction of the search (L = ``BLOCK`` records, fewer for short histories) and sd_tail their standard deviation.
The denominator is how far alpha_j would have travelled in n records had it been a random walk with the
fluctuations it shows at the end, so |margin| is a z-score of the distance from the threshold against the search's
own noise: a component that drifts steadily has a large margin, one that wanders (AdamW on the logits turns noisy
hypergradients into full-size random moves) has |margin| of order 1 whatever its distance from the threshold.
Blocks of L records, rather than single increments, make the noise estimate hold for momentum optimisers, whose
increments are correlated over about 1 / (1 - beta_1) = 10 steps (single increments would underestimate the
random walk's travel by a factor sqrt((1 + beta_1) / (1 - beta_1)) ~ 4.4). Margins are clipped to
+-``MARGIN_CLIP`` (a component that stopped moving entirely has zero increments).

Budget readout. It keeps the N best-scored components over all modules, at least one per module: first the best
component of every module, then the remaining N - M by score (ties broken by module order, then component index).
Per-layer softmax alphas sum to 1 in every layer, so alpha_j = 0.2 means different things in a layer of 4 and a layer
of 8 components, and a layer without any signal still splits its mass around 1/k: alpha itself is no score. Two
scores are comparable across layers: the margin (a z-score against each component's own fluctuation) and the update
energy below, the default (:data:`DEFAULT_BUDGET_SCORE`): on the same searches it reads ranks that agree across seeds
where the margins' do not, and after long searches it recovers planted ranks that the margins miss
(docs/search.md).

Update energies. The alphas share their scale with the factors (alpha_j B[:, j] A[j, :] is unchanged when alpha_j
halves and B[:, j] doubles), so alpha alone does not say how much of a module's update a component carries. The
energy readout scores a module's components by the singular values of its searched update,

    sigma_1 >= ... >= sigma_k   of   Delta W = B diag(w) A,   w = s * alpha,

the size of the weight change itself, in the base weight's units and comparable across modules whatever their
number of components; the budget readout then keeps the N largest over all modules, at least one per module
(rank r of a module = its r largest singular values). It reads the learned factors and the selection together: a
component the selection switched off contributes nothing, one the factors never used contributes nothing either.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .selection import selection_threshold

MARGIN_CLIP = 1e6
BLOCK = 20  # records per increment block: covers the correlation time of AdamW's momentum (beta_1 = 0.9)
DECIDED_MARGIN = 3.0  # |margin| at which a keep/drop decision is taken as separated from noise
BUDGET_SCORES = ("margin", "energy")  # what the budget readout ranks components by
DEFAULT_BUDGET_SCORE = "energy"


def component_margins(history: torch.Tensor, selection: str, *, tail: float = 0.5) -> torch.Tensor:
    """margin_j of every component (see the module docstring) from the recorded alphas ``history`` (records x k)."""
    if history.dim() != 2 or history.shape[0] < 3:
        raise ValueError(f"margins need an alpha history of at least 3 records (records x k), got shape "
                         f"{tuple(history.shape)}; record alphas more often (record_every) or search longer")
    if not 0.0 < tail <= 1.0:
        raise ValueError(f"tail must be in (0, 1], got {tail}")
    history = history.double()
    n = history.shape[0] - 1
    window = history.diff(dim=0)[-max(2, math.ceil(tail * n)):]
    block = max(1, min(BLOCK, len(window) // 4))
    blocks = window[len(window) % block:].reshape(-1, block, history.shape[1]).sum(dim=1)
    noise = blocks.std(dim=0, correction=0) * math.sqrt(n / block)
    distance = history[-1] - selection_threshold(history[-1], selection)
    margin = torch.where(noise > 0, distance / noise.clamp_min(torch.finfo(history.dtype).tiny),
                         torch.sign(distance) * MARGIN_CLIP)
    return margin.clamp(-MARGIN_CLIP, MARGIN_CLIP)


def component_energies(lora_A: torch.Tensor, lora_B: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sigma_1 >= ... >= sigma_k, the singular values of Delta W = B diag(w) A (``lora_A`` k x d_in, ``lora_B``
    d_out x k, ``weights`` w = s * alpha of length k), in float64, zero-padded to k when min(d_out, d_in) < k."""
    k = weights.numel()
    if lora_A.shape[0] != k or lora_B.shape[1] != k:
        raise ValueError(f"lora_A {tuple(lora_A.shape)} and lora_B {tuple(lora_B.shape)} do not have the {k} "
                         "components of weights")
    update = (lora_B.detach().double() * weights.detach().double()) @ lora_A.detach().double()
    values = torch.linalg.svdvals(update)[:k]  # Delta W has rank <= k
    return torch.cat([values, values.new_zeros(k - values.numel())])


def alpha_separation(alpha: torch.Tensor, selection: str) -> float:
    """max_j |alpha_j - lambda|: how far the module's most decided component sits from its threshold."""
    return float((alpha - selection_threshold(alpha, selection)).abs().max())


def separation_verdict(margins: Mapping[str, torch.Tensor], *, decided: float = DECIDED_MARGIN) -> dict:
    """Summary of how the ranks were read: per module the smallest |margin| (its least decided component), the
    share of modules whose every component is at least ``decided`` from its threshold, and a one-line verdict."""
    weakest = {name: float(m.abs().min()) for name, m in margins.items()}
    separated = [name for name, w in weakest.items() if w >= decided]
    share = len(separated) / max(len(weakest), 1)
    if share >= 0.8:
        verdict = (f"ranks read off separated alphas ({len(separated)}/{len(weakest)} modules with every "
                   f"|margin| >= {decided:g})")
    elif share > 0:
        verdict = (f"ranks partly read off noise: only {len(separated)}/{len(weakest)} modules have every "
                   f"|margin| >= {decided:g}")
    else:
        verdict = (f"ranks read off noise: no module has every |margin| >= {decided:g}; the allocation is not "
                   "distinguishable from the search's own noise (compare it with uniform ranks: --compare-uniform; "
                   "see docs/search.md)")
    return {"weakest_margin": weakest, "separated_share": share, "verdict": verdict}


def check_budget(budget: int, sizes: Sequence[int]) -> None:
    """TypeError unless ``budget`` is an int; ValueError unless it lies between one component per module and all
    of them (``sizes``: components per module)."""
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int, got {type(budget).__name__}")
    if not len(sizes) <= budget <= sum(sizes):
        raise ValueError(f"budget must be between {len(sizes)} (one component per module) and {sum(sizes)} (all "
                         f"components), got {budget}")


def check_score(score: str) -> None:
    """ValueError unless ``score`` is one of :data:`BUDGET_SCORES`."""
    if score not in BUDGET_SCORES:
        raise ValueError(f"the budget readout's score must be one of {BUDGET_SCORES}, got {score!r}")


def budget_ranks(margins: Mapping[str, torch.Tensor], budget: int) -> dict[str, int]:
    """Ranks from the ``budget`` components with the largest margins over all modules, at least one per module."""
    names = list(margins)
    check_budget(budget, [margins[name].numel() for name in names])
    ranks = dict.fromkeys(names, 1)
    best = {name: int(torch.argmax(margins[name])) for name in names}
    rest = [(-float(margins[name][j]), i, j) for i, name in enumerate(names) for j in range(margins[name].numel())
            if j != best[name]]
    for _, i, _ in sorted(rest)[:budget - len(names)]:
        ranks[names[i]] += 1
    return ranks


def uniform_ranks(names: Sequence[str], budget: int, max_rank: int | None = None) -> dict[str, int]:
    """The most uniform allocation of ``budget`` components: budget // M per module, one more for the first
    budget % M modules (in the given order), so the total is exactly ``budget``."""
    names = list(names)
    if not names:
        raise ValueError("uniform_ranks needs at least one module name")
    if budget < len(names) or (max_rank is not None and budget > max_rank * len(names)):
        raise ValueError(f"budget {budget} cannot give every one of {len(names)} modules a rank in "
                         f"[1, {max_rank or 'inf'}]")
    base, extra = divmod(budget, len(names))
    return {name: base + (i < extra) for i, name in enumerate(names)}


def shuffled_ranks(ranks: Mapping[str, int], seed: int) -> dict[str, int]:
    """The control that isolates the allocation: the same multiset of ranks assigned to the modules in a random
    order (a permutation drawn from ``seed``)."""
    names = list(ranks)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    values = [ranks[names[i]] for i in order]
    return dict(zip(names, values))
