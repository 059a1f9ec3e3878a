"""pytest-benchmark timings of the fused LoRA linear and the alternatives of bench/ops_table.py.

    python -m pytest bench/bench_ops.py --benchmark-enable --benchmark-group-by=param:shape

Each candidate is timed on its own (pytest-benchmark rounds); for ratios measured side by side in one run use
``python bench/ops_table.py``.
"""
import pytest

from ops_table import CANDIDATES, SHAPES, forward_backward, forward_only, make_problem

STEPS = {"fwd+bwd": forward_backward, "fwd": forward_only}


@pytest.mark.parametrize("shape", SHAPES, ids=[f"N{n}-d{d}-r{r}" for n, d, r in SHAPES])
@pytest.mark.parametrize("mode", list(STEPS))
@pytest.mark.parametrize("name", list(CANDIDATES))
def test_lora_linear_time(benchmark, name, mode, shape):
    problem = make_problem(*shape, seed=0)
    benchmark.group = f"{mode} N={shape[0]} d={shape[1]} r={shape[2]}"
    benchmark(STEPS[mode], name, problem)
