"""Checkpoints hold tensors and plain Python values only: they load with ``torch.load(weights_only=True)``."""
import random

import numpy as np
import pytest
import torch

from autolora.checkpoint import atomic_save, capture_rng, load_checkpoint, restore_rng
from autolora.rank_search import search
from autolora.retrain import train
from test_retrain import retrain_model
from test_search import autolora_bert, synthetic_dataset


@pytest.mark.parametrize("run, build", [(search, autolora_bert), (train, retrain_model)], ids=["search", "train"])
def test_loop_checkpoints_load_with_weights_only(run, build, tmp_path):
    path = tmp_path / "loop.pt"
    run(build(), synthetic_dataset(n=8), steps=2, batch_size=4, checkpoint_path=path)
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 2 and saved["total_steps"] == 2


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # NumPy then caches a second Gaussian, which is part of its state
    atomic_save(capture_rng(), tmp_path / "rng.pt")
    expected = random.random(), np.random.standard_normal(3).tolist(), torch.rand(3)
    random.seed(7)
    np.random.seed(8)
    torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = random.random(), np.random.standard_normal(3).tolist(), torch.rand(3)
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


class NotATensor:
    """A pickled object of an arbitrary class: code that a weights-only load must refuse to run."""


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path):
    atomic_save({"step": 1, "object": NotATensor()}, tmp_path / "unsafe.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_checkpoint(tmp_path / "unsafe.pt")
