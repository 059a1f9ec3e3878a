"""search() and train() draw from their own seeded RNG stream: the caller's global RNG states are left untouched,
and a run interrupted and resumed still equals an uninterrupted one."""
import random

import numpy as np
import pytest
import torch

from autolora.training import run_resumable
from autolora.rank_search import search
from autolora.retrain import train
from test_retrain import retrain_model
from test_search import autolora_bert, synthetic_dataset


def global_rng_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def assert_same_rng_states(before, after):
    python, numpy_state, torch_state = before
    assert after[0] == python
    assert all(np.array_equal(a, b) for a, b in zip(after[1], numpy_state))
    assert torch.equal(after[2], torch_state)


@pytest.mark.parametrize("run, build", [(search, autolora_bert), (train, retrain_model)], ids=["search", "train"])
def test_runs_leave_the_callers_global_rng_untouched(run, build):
    model = build()
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    before = global_rng_states()
    run(model, synthetic_dataset(n=8), steps=2, batch_size=4, seed=3)
    assert_same_rng_states(before, global_rng_states())


def drawing_loop(draws):
    """A loop whose step t records one draw of each global RNG (torch, Python, NumPy)."""
    def step(t):
        draws.append((torch.rand(()).item(), random.random(), float(np.random.rand())))
        return {}
    return step


def test_fresh_run_draws_from_the_seed_and_resume_continues_the_same_streams(tmp_path):
    seed, steps, path = 5, 6, tmp_path / "loop.pt"
    uninterrupted = []
    run_resumable(drawing_loop(uninterrupted), steps, get_state=dict, set_state=lambda s: None, seed=seed)
    generator, python, numpy_rng = torch.Generator().manual_seed(seed), random.Random(seed), np.random.RandomState(seed)
    assert uninterrupted == [(torch.rand((), generator=generator).item(), python.random(), float(numpy_rng.rand()))
                             for _ in range(steps)]

    def stop(completed, stats):
        if completed == 2:
            raise KeyboardInterrupt

    interrupted = []
    with pytest.raises(KeyboardInterrupt):
        run_resumable(drawing_loop(interrupted), steps, get_state=dict, set_state=lambda s: None, seed=seed,
                      checkpoint_path=path, callback=stop)
    torch.manual_seed(99)
    random.seed(98)
    np.random.seed(97)
    before = global_rng_states()
    run_resumable(drawing_loop(interrupted), steps, get_state=dict, set_state=lambda s: None, seed=seed,
                  checkpoint_path=path, resume=True)
    assert interrupted == uninterrupted
    assert_same_rng_states(before, global_rng_states())
