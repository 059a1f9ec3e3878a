"""pytest-benchmark: one plain training step vs one BilevelOptimizer.step per method (inner + meta step).

    python -m pytest bench/bench_hypergrad.py --benchmark-enable

Same model and batch as table (b) of bench/hypergrad_table.py (GatedMLP 256-512x2-10, float32, batch 128, seed 0).
"""
import pytest

from hypergrad_table import KINDS, step_function


@pytest.mark.parametrize("kind", KINDS)
def test_step_cost(benchmark, kind):
    _, step = step_function(kind, seed=0, d_in=256, hidden=512, layers=2, batch=128)
    step()  # warm-up outside the timed rounds
    benchmark.pedantic(step, rounds=20, warmup_rounds=2)
