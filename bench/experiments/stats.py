"""Statistics of the suite: mean +- standard deviation over seeds, paired-t intervals of per-seed differences, and
rank stability across seeds."""
from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from scipy import stats as scipy_stats


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with n - 1 in the denominator); the deviation is None for one value."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences d_s = a_s - b_s over the n seeds both sides have, and its two-sided paired-t
    interval mean -+ t_{(1+c)/2, n-1} * sd(d) / sqrt(n) (``low``/``high`` None for n = 1)."""

    n: int
    mean: float
    low: float | None
    high: float | None

    @property
    def within_noise(self) -> bool | None:
        """Whether the interval contains 0 (None without an interval)."""
        return None if self.low is None else self.low <= 0.0 <= self.high


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], *,
                      confidence: float = 0.95) -> PairedDifference | None:
    """Paired comparison of two methods' per-seed scores {seed: value}; None when they share no seed."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    differences = [a[s] - b[s] for s in seeds]
    mean, sd = mean_std(differences)
    if sd is None:
        return PairedDifference(1, mean, None, None)
    half = scipy_stats.t.ppf((1.0 + confidence) / 2.0, len(seeds) - 1) * sd / math.sqrt(len(seeds))
    return PairedDifference(len(seeds), mean, mean - half, mean + half)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson correlation of the average ranks); None when either vector is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two vectors of one length >= 2, got {len(x)} and {len(y)}")
    if len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(scipy_stats.spearmanr(x, y).statistic)


def rank_stability(ranks_by_seed: Mapping[int, Mapping[str, int]]) -> tuple[float | None, int]:
    """(mean Spearman over all pairs of seeds of their per-module rank vectors, number of pairs that entered it).

    The vectors are compared over the modules both seeds list, in the first seed's order; a pair in which one
    vector is constant has no Spearman correlation and is left out."""
    values = []
    for (_, first), (_, second) in itertools.combinations(sorted(ranks_by_seed.items()), 2):
        modules = [name for name in first if name in second]
        if len(modules) >= 2:
            rho = spearman([first[m] for m in modules], [second[m] for m in modules])
            if rho is not None:
                values.append(rho)
    return (statistics.fmean(values) if values else None), len(values)
